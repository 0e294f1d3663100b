"""Fan-out benchmark: 1 publisher, N subscribers, rtkit against a raw websockets broadcast server.

Both servers run in their own process; the publisher and N light subscribers (frame counters,
a few of them decoding JSON to sample latency) run in this one, so the server saturates, not
the load generator. For each N the publisher sends M messages with at most W in flight
(published but not yet received by the first sampled subscriber) - the same flow control for
both servers. Throughput is N*M / (time from the first publish to the last delivery).

    python benchmarks/fanout.py                      # N = 1, 10, 100, 1000
    python benchmarks/fanout.py --subscribers 100 --messages 5000
    python benchmarks/fanout.py --quick              # a fast smoke run

The raw baseline relays every message with ``websockets.broadcast`` (one write per message per
subscriber, no protocol). rtkit runs its full protocol: auth, serials, history, dedup window,
acks, batching of pending deliveries into one frame per subscriber per loop iteration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightws import LightWS, now, open_light

KEY = "bench:" + "b" * 40


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------ servers (child process)


async def _serve(kind: str) -> None:
    from websockets.asyncio.server import broadcast, serve

    if kind == "rtkit":
        from rtkit.aio.broker import Broker
        from rtkit.core.broker import BrokerConfig
        from rtkit.core.tokens import ApiKey

        config = BrokerConfig(publish_rate=1e9, publish_burst=10**9, heartbeat_interval=30.0,
                              max_connections_per_address=100_000, connection_attempt_rate=1e6,
                              connection_attempt_burst=100_000,
                              max_outbound_buffer=64 * 1024 * 1024, history_size=1000)
        broker = Broker(config, ApiKey.parse(KEY))
        await broker.start("127.0.0.1", 0)
        port = broker.port
    else:
        subscribers: set = set()

        async def handler(ws) -> None:  # type: ignore[no-untyped-def]
            role = await ws.recv()
            if role == "sub":
                subscribers.add(ws)
                await ws.send("ok")
                try:
                    await ws.wait_closed()
                finally:
                    subscribers.discard(ws)
            else:
                async for message in ws:
                    broadcast(subscribers, message)

        server = await serve(handler, "127.0.0.1", 0, compression=None, max_queue=None)
        port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    profile_to = os.environ.get("FANOUT_PROFILE")  # a file name: profile the server
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    # Run until the parent closes our stdin, then leave at once (no graceful goodbyes).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    if profile_to:
        profiler.disable()
        profiler.dump_stats(f"{profile_to}.{kind}")
    os._exit(0)


# ------------------------------------------------------------------ load (this process)


@dataclass
class Result:
    kind: str
    subscribers: int
    messages: int
    rate: float
    p50_ms: float
    p99_ms: float
    complete: bool
    server_cpu: float = 0.0  # share of one core used by the server process during the run
    load_cpu: float = 0.0  # same for this (load generator) process


def _proc_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_case(kind: str, n: int, m: int, window: int, samples: int) -> Result:
    _raise_fd_limit()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        return await _load(kind, f"ws://127.0.0.1:{port}", n, m, window, samples, proc.pid)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(10)


async def _load(kind: str, url: str, n: int, m: int, window: int, samples: int,
                server_pid: int) -> Result:
    latencies: list[float] = []
    progress = asyncio.Event()
    done = asyncio.Event()
    state = {"remaining": n, "finished_at": 0.0}
    rtkit = kind == "rtkit"
    first: LightWS | None = None

    def on_payload(ws: LightWS, payload: bytes) -> None:
        t = now()
        if payload == b"ok":
            return
        obj = json.loads(payload)
        if rtkit:
            if obj.get("action") != "message":
                return
            items = [msg["data"] for msg in obj["messages"]]
        else:
            if not isinstance(obj, dict):
                return
            items = [obj]
        latencies.extend(t - d["t"] for d in items)
        ws.count += len(items)

    def on_count(ws: LightWS) -> None:
        if ws is first:
            progress.set()
        if ws.count >= m and not getattr(ws, "finished", False):
            ws.finished = True  # type: ignore[attr-defined]
            state["remaining"] -= 1
            if state["remaining"] == 0:
                state["finished_at"] = now()
                done.set()

    marker = b'"serial":' if rtkit else None
    subs: list[LightWS] = []
    for start in range(0, n, 50):
        batch = await asyncio.gather(*(
            open_light(url, sample=i < samples, count_marker=marker, on_payload=on_payload,
                       on_count=on_count)
            for i in range(start, min(n, start + 50))
        ))
        for ws in batch:
            if rtkit:
                ws.send_json({"action": "connect", "ref": 0, "key": KEY})
                ws.send_json({"action": "attach", "ref": 1, "channel": "bench"})
            else:
                ws.send_text("sub")
        subs.extend(batch)
    expected_frames = 2 if rtkit else 1  # connected + attached, or "ok"
    while any(ws.frames < expected_frames for ws in subs):
        await asyncio.sleep(0.01)
    for ws in subs:
        ws.count = 0  # 'attached' carries a "serial" too: start counting from here
    first = subs[0]
    assert first.sample

    pub = await open_light(url, sample=False, count_marker=b'"action":"ack"' if rtkit else None)
    if rtkit:
        pub.send_json({"action": "connect", "ref": 0, "key": KEY})
        while pub.frames < 1:
            await asyncio.sleep(0.01)
    else:
        pub.send_text("pub")

    t0 = now()
    cpu0 = (_proc_cpu(server_pid), _self_cpu())
    for i in range(m):
        while i - subs[0].count >= window:
            progress.clear()
            await progress.wait()
        t = now()
        if rtkit:
            pub.send_text(f'{{"action":"publish","ref":{i},"channel":"bench","name":"t",'
                          f'"data":{{"i":{i},"t":{t!r}}}}}')
        else:
            pub.send_text(f'{{"i":{i},"t":{t!r}}}')
        if i % 64 == 63:
            await asyncio.sleep(0)
    try:
        await asyncio.wait_for(done.wait(), timeout=60)
        complete = True
    except TimeoutError:
        complete = False
        state["finished_at"] = now()
    if rtkit and complete:
        deadline = now() + 5
        while pub.count < m and now() < deadline:
            await asyncio.sleep(0.01)
        complete = pub.count == m  # every publish acked, none refused
    elapsed = state["finished_at"] - t0
    server_cpu = (_proc_cpu(server_pid) - cpu0[0]) / elapsed
    load_cpu = (_self_cpu() - cpu0[1]) / elapsed
    delivered = sum(min(ws.count, m) for ws in subs)
    for ws in [*subs, pub]:
        if ws.transport is not None:
            ws.transport.close()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan")
    return Result(kind, n, m, delivered / elapsed, p50, p99, complete, server_cpu, load_cpu)


def plan(n: int, quick: bool) -> tuple[int, int]:
    """Messages and window for N subscribers: about the same total deliveries per case."""
    total = 60_000 if quick else 400_000
    m = max(100, min(20_000, total // n))
    window = max(50, 50_000 // n)
    return m, window


async def main_async(args: argparse.Namespace) -> int:
    counts = [int(x) for x in args.subscribers.split(",")]
    print(f"{'subscribers':>11} {'server':>6} {'messages':>8} {'delivered/s':>12} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'srv cpu':>7} {'gen cpu':>7}  note")
    ratios: dict[int, float] = {}
    for n in counts:
        m, window = plan(n, args.quick)
        if args.messages:
            m = args.messages
        results = {}
        for kind in ("raw", "rtkit"):
            r = await run_case(kind, n, m, window, samples=min(n, args.samples))
            results[kind] = r
            note = "" if r.complete else "INCOMPLETE"
            print(f"{n:>11} {kind:>6} {m:>8} {r.rate:>12,.0f} {r.p50_ms:>8.2f} "
                  f"{r.p99_ms:>8.2f} {r.server_cpu:>7.0%} {r.load_cpu:>7.0%}  {note}", flush=True)
        ratios[n] = results["rtkit"].rate / results["raw"].rate
        print(f"{n:>11} {'ratio':>6} {'':>8} {ratios[n]:>11.2f}x  (rtkit / raw websockets)",
              flush=True)
    print()
    print("ratios: " + ", ".join(f"N={n}: {r:.2f}" for n, r in ratios.items()))
    print("srv cpu / gen cpu: share of one core used by the server / the load generator while "
          "measuring; a server near 100% with the generator below it means the server saturates.")
    failed = [n for n in (100, 1000) if n in ratios and ratios[n] < 1.0]
    if args.check and failed:
        print(f"target missed (ratio >= 1.0) at N={failed}")
        return 1
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subscribers", default="1,10,100,1000")
    p.add_argument("--messages", type=int, default=0, help="messages per case (default: planned)")
    p.add_argument("--samples", type=int, default=8, help="subscribers that measure latency")
    p.add_argument("--quick", action="store_true", help="fewer messages: a smoke run")
    p.add_argument("--check", action="store_true", help="exit 1 if a target ratio is missed")
    p.add_argument("--serve", choices=("rtkit", "raw"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        _raise_fd_limit()
        asyncio.run(_serve(args.serve))
        return 0
    os.environ.setdefault("PYTHONHASHSEED", "0")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
