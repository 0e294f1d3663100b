"""Cluster benchmark: fan-out through 1, 2 and 3 broker nodes sharing a Redis backplane,
against the single in-memory broker measured in the same run.

Each broker node runs in its own process (and so does Redis, started here on a free port:
Debian's ``redis-server``); one publisher and N light subscribers (``lightws``: frame
counters, a few decoding JSON to sample latency) run in this one. Subscribers are spread
round-robin over the nodes, the publisher is on the first. Flow control as in
``fanout.py``: at most W messages in flight (published, not yet received by the first
subscriber). Throughput is N*M / (time from the first publish to the last delivery).

    python benchmarks/cluster.py                       # N = 100, 1000; 0 (in memory), 1, 2, 3 nodes
    python benchmarks/cluster.py --quick               # a fast smoke run
    python benchmarks/cluster.py --subscribers 100 --nodes 0,3

Where the cost goes, and what bounds it (printed at the end with this run's figures):

* every publish is one Lua script in Redis (serial by ``HINCRBY``, ``XADD`` and its trimming,
  the dedup key, ``PUBLISH``): Redis runs scripts one at a time on one core, so the
  cluster's publish rate on a channel is bounded by Redis's script rate (measured here
  alone: ``redis alone``), whatever the number of nodes. This is the price of assigning
  serials in one place: it is what gives every node the same order;
* a node sends the publishes of one event-loop iteration as one pipeline (one round trip for
  many): ``publishes per round trip`` shows the batching reached;
* every node reads every message of the channels it follows from PUB/SUB once, checks its
  serial and fans it out to its own subscribers: the fan-out work is split between nodes,
  the PUB/SUB reading is repeated on each;
* the publisher's node waits for Redis before acking: latency adds a Redis round trip
  (tens of microseconds on loopback) and the time a message waits for its pipeline.
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
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightws import LightWS, now, open_light

KEY = "bench:" + "b" * 40


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _proc_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ a node (child process)


async def _serve(backplane: str | None) -> None:
    from rtkit.aio.broker import Broker
    from rtkit.core.broker import BrokerConfig
    from rtkit.core.tokens import ApiKey

    config = BrokerConfig(publish_rate=1e9, publish_burst=10**9, heartbeat_interval=30.0,
                          max_connections_per_address=100_000, connection_attempt_rate=1e6,
                          connection_attempt_burst=100_000,
                          max_outbound_buffer=64 * 1024 * 1024, history_size=1000,
                          node_timeout=1.5)  # (the node's counters reach Redis every 0.5 s)
    broker = Broker(config, ApiKey.parse(KEY), backplane)
    await broker.start("127.0.0.1", 0)
    print(broker.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await broker.stop()


# ------------------------------------------------------------------ one case


@dataclass
class Result:
    nodes: int  # 0: the in-memory broker
    subscribers: int
    messages: int
    rate: float
    p50_ms: float
    p99_ms: float
    complete: bool
    node_cpu: list[float]
    redis_cpu: float
    load_cpu: float
    per_round_trip: float


class Nodes:
    """``k`` node processes (``k == 0``: one in-memory broker)."""

    def __init__(self, k: int, redis_url: str | None) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.urls: list[str] = []
        for _ in range(max(1, k)):
            args = [sys.executable, __file__, "--serve"]
            if k:
                args += ["--backplane", redis_url or ""]
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
            self.procs.append(proc)
            port = int(proc.stdout.readline())  # type: ignore[union-attr]
            self.urls.append(f"ws://127.0.0.1:{port}")

    def cpu(self) -> list[float]:
        return [_proc_cpu(p.pid) for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stdin.close()  # type: ignore[union-attr]
        for proc in self.procs:
            proc.wait(20)


async def run_case(k: int, n: int, m: int, window: int, samples: int, redis: object | None
                   ) -> Result:
    import redis as redis_py

    url = getattr(redis, "url", None)
    client = None
    if redis is not None:
        client = redis_py.Redis(host="127.0.0.1", port=redis.port)  # type: ignore[attr-defined]
        client.flushall()
    nodes = Nodes(k, url)
    try:
        return await _load(k, nodes, n, m, window, samples, redis, client)
    finally:
        nodes.stop()
        if client is not None:
            client.close()


async def _load(k: int, nodes: Nodes, n: int, m: int, window: int, samples: int,
                redis: object | None, client: object | None) -> Result:
    latencies: list[float] = []
    progress = asyncio.Event()
    done = asyncio.Event()
    state = {"remaining": n, "finished_at": 0.0}
    first: LightWS | None = None

    def on_payload(ws: LightWS, payload: bytes) -> None:
        t = now()
        obj = json.loads(payload)
        if obj.get("action") != "message":
            return
        items = [msg["data"] for msg in obj["messages"]]
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

    subs: list[LightWS] = []
    for start in range(0, n, 50):
        batch = await asyncio.gather(*(
            open_light(nodes.urls[i % len(nodes.urls)], sample=i < samples,
                       count_marker=b'"serial":', on_payload=on_payload, on_count=on_count)
            for i in range(start, min(n, start + 50))
        ))
        for ws in batch:
            ws.send_json({"action": "connect", "ref": 0, "key": KEY})
            ws.send_json({"action": "attach", "ref": 1, "channel": "bench"})
        subs.extend(batch)
    while any(ws.frames < 2 for ws in subs):  # connected + attached
        await asyncio.sleep(0.01)
    for ws in subs:
        ws.count = 0
    first = subs[0]

    pub = await open_light(nodes.urls[0], sample=False, count_marker=b'"action":"ack"')
    pub.send_json({"action": "connect", "ref": 0, "key": KEY})
    while pub.frames < 1:
        await asyncio.sleep(0.01)

    redis_pid = getattr(redis, "pid", None)
    t0 = now()
    cpu0 = (nodes.cpu(), _proc_cpu(redis_pid) if redis_pid else 0.0, _self_cpu())
    for i in range(m):
        while i - subs[0].count >= window:
            progress.clear()
            await progress.wait()
        t = now()
        pub.send_text(f'{{"action":"publish","ref":{i},"channel":"bench","name":"t",'
                      f'"data":{{"i":{i},"t":{t!r}}}}}')
        if i % 64 == 63:
            await asyncio.sleep(0)
    try:
        await asyncio.wait_for(done.wait(), timeout=120)
        complete = True
    except TimeoutError:
        complete = False
        state["finished_at"] = now()
    if complete:
        deadline = now() + 5
        while pub.count < m and now() < deadline:
            await asyncio.sleep(0.01)
        complete = pub.count == m
    elapsed = state["finished_at"] - t0
    node_cpu = [(b - a) / elapsed for a, b in zip(cpu0[0], nodes.cpu(), strict=True)]
    redis_cpu = ((_proc_cpu(redis_pid) - cpu0[1]) / elapsed) if redis_pid else 0.0
    load_cpu = (_self_cpu() - cpu0[2]) / elapsed
    delivered = sum(min(ws.count, m) for ws in subs)
    per_round_trip = float("nan")
    if client is not None:
        await asyncio.sleep(0.7)  # the nodes' next refresh of their counters
        info = client.hgetall("rtkit:nodeinfo")  # type: ignore[attr-defined]
        for raw in info.values():
            row = json.loads(raw)
            if row.get("url") == nodes.urls[0] and row.get("backplane_batches"):
                per_round_trip = row["published"] / row["backplane_batches"]
    for ws in [*subs, pub]:
        if ws.transport is not None:
            ws.transport.close()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan")
    return Result(k, n, m, delivered / elapsed, p50, p99, complete, node_cpu, redis_cpu,
                  load_cpu, per_round_trip)


def redis_alone(port: int, pid: int, count: int = 20_000) -> tuple[float, float]:
    """Publish scripts run by Redis alone (pipelined from one client, no node, no
    subscriber): scripts a second, and Redis's CPU time per script (microseconds), which
    bounds one channel's publish rate whatever the number of nodes."""
    import redis as redis_py

    from rtkit.aio import redis_scripts as rs

    client = redis_py.Redis(host="127.0.0.1", port=port)
    cpu0 = _proc_cpu(pid)
    try:
        sha = client.script_load(rs.PUBLISH)
        head = '{"id":"x","name":"t","data":{"i":1},"serial":'
        t0 = time.perf_counter()
        for start in range(0, count, 500):
            pipe = client.pipeline(transaction=False)
            for i in range(start, start + 500):
                pipe.evalsha(sha, 3, rs.meta_key("alone"), rs.stream_key("alone"),
                             rs.dedup_key("alone", f"k{i}"), head, ',"client_id":null}',
                             rs.publish_settings("e", True, 3_600_000, 120_000, 96 << 20,
                                                 86_400_000), "rtkit:0:p:alone")
            pipe.execute()
        rate = count / (time.perf_counter() - t0)
        return rate, (_proc_cpu(pid) - cpu0) / count * 1e6
    finally:
        client.flushall()
        client.close()


def plan(n: int, quick: bool) -> tuple[int, int]:
    """Messages and window for N subscribers (enough messages for the publish path, not
    only the fan-out, to show)."""
    total = 1_000_000 if quick else 5_000_000
    m = max(500, min(20_000 if quick else 50_000, total // n))
    window = max(50, 50_000 // n)
    return m, window


async def main_async(args: argparse.Namespace) -> int:
    import rtkit

    counts = [int(x) for x in args.subscribers.split(",")]
    node_counts = [int(x) for x in args.nodes.split(",")]
    if not rtkit.cluster.redis_available():
        print("redis-server is not installed (Debian: apt-get install redis-server)")
        return 1
    with rtkit.cluster.RedisServer() as redis:
        redis.pid = redis._proc.pid  # type: ignore[attr-defined, union-attr]
        alone, script_us = redis_alone(redis.port, redis.pid)  # type: ignore[attr-defined]
        print(f"redis alone: {alone:,.0f} publish scripts/s from one Python client "
              f"(pipelined); Redis CPU {script_us:.1f} us per script, so at most "
              f"~{1e6 / script_us:,.0f} publishes/s per Redis core")
        print(f"{'subscribers':>11} {'nodes':>9} {'messages':>8} {'delivered/s':>12} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} {'node cpu':>16} {'redis':>6} "
              f"{'gen':>5} {'pub/rt':>6}")
        for n in counts:
            m, window = plan(n, args.quick)
            if args.messages:
                m = args.messages
            base: float | None = None
            for k in node_counts:
                r = await run_case(k, n, m, window, min(n, args.samples),
                                   redis if k else None)
                if k == 0:
                    base = r.rate
                ratio = f"{r.rate / base:.2f}" if base else "-"
                label = "in memory" if k == 0 else f"{k} redis"
                cpus = "/".join(f"{c:.0%}" for c in r.node_cpu)
                note = "" if r.complete else "  INCOMPLETE"
                print(f"{n:>11} {label:>9} {m:>8} {r.rate:>12,.0f} {r.p50_ms:>8.2f} "
                      f"{r.p99_ms:>8.2f} {ratio:>6} {cpus:>16} {r.redis_cpu:>6.0%} "
                      f"{r.load_cpu:>5.0%} {r.per_round_trip:>6.1f}{note}", flush=True)
    print()
    print("ratio: delivered/s against the in-memory broker at the same N. node cpu: share of "
          "one core per node process (the first one takes the publishes); redis: Redis's "
          "share of its one core; gen: this load generator's; pub/rt: publishes per Redis "
          "round trip on the publishing node (its pipelines).")
    print(f"Bound: every publish is one script on Redis's single core (~{script_us:.0f} us "
          f"of its CPU each here, so ~{1e6 / script_us:,.0f}/s at most), plus one round trip "
          "per pipeline on the publishing node; then every node reads each message from "
          "PUB/SUB once and fans it out to its own subscribers: more nodes split the fan-out "
          "work, not the publishing, and each adds its own PUB/SUB reading.")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subscribers", default="100,1000")
    p.add_argument("--nodes", default="0,1,2,3", help="0 is the in-memory broker")
    p.add_argument("--messages", type=int, default=0, help="messages per case")
    p.add_argument("--samples", type=int, default=8, help="subscribers that measure latency")
    p.add_argument("--quick", action="store_true", help="fewer messages: a smoke run")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backplane", help=argparse.SUPPRESS)
    args = p.parse_args()
    _raise_fd_limit()
    if args.serve:
        asyncio.run(_serve(args.backplane))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
