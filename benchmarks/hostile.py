"""A well-behaved client's latency while hostile clients attack the same broker.

Three processes: the broker; the victim (this process: one publisher at 1,000 msg/s and 100
light subscribers on channel ``feed``, 8 of them decoding to sample latency); the attacker
(one child per case, at a lower CPU priority as it stands in for other machines, running
one attack of the hostile-client report). For each case the
victim's p50/p99 latency from publish to delivery is measured over the same window and printed
next to the quiet figure, with the ratio.

    python benchmarks/hostile.py                     # every attack, 5 s each
    python benchmarks/hostile.py --quick             # a smoke run: 3 attacks, 1.5 s each
    python benchmarks/hostile.py --cases rewind,presence --seconds 10

Targets: p99 under 5 ms quiet and under 20 ms under every attack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightws import LightWS, now, open_light

KEY = "bench:" + "h" * 40
RATE = 1000  # victim messages a second
SUBSCRIBERS = 100
SAMPLED = 8
QUIET_TARGET_MS, ATTACKED_TARGET_MS = 5.0, 20.0
#: The broker runs with its defaults (publish_rate 1,000 a second: the victim's pace).
BROKER: dict[str, Any] = {}


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------ broker (child process)


async def _serve() -> None:
    from rtkit.aio.broker import Broker
    from rtkit.core.config import BrokerConfig
    from rtkit.core.tokens import ApiKey

    broker = Broker(BrokerConfig(**BROKER), ApiKey.parse(KEY))  # type: ignore[arg-type]
    await broker.start("127.0.0.1", 0)
    print(broker.port, flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(json.dumps({k: v for k, v in broker.stats().items() if k != "resources"}),
              flush=True)
    os._exit(0)


# ------------------------------------------------------------------ attacks (child process)


def _token(client_id: str, caps: dict[str, list[str]], **claims: Any) -> str:
    from rtkit.core.tokens import ApiKey, issue_token

    if not claims:
        return issue_token(ApiKey.parse(KEY), now=time.time(), client_id=client_id,
                           capabilities=caps, ttl=600)
    import jwt

    key_id, _, secret = KEY.partition(":")
    payload = {"sub": client_id, "cap": caps, "iat": time.time(), **claims}
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": key_id})


async def _attack(name: str, url: str, seconds: float) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    end = time.monotonic() + seconds

    async def session(connect_frame: dict[str, Any] | None = None, read: bool = True) -> Any:
        ws = await connect(url, max_size=None, ping_interval=None)
        if connect_frame is not None:
            await ws.send(json.dumps({"action": "connect", "ref": 0, **connect_frame}))
            await ws.recv()
        if read:  # drain replies in the background, as a reading client would
            async def drain() -> None:
                try:
                    async for _ in ws:
                        pass
                except ConnectionClosed:
                    pass
            ws.drainer = asyncio.get_running_loop().create_task(drain())
        return ws

    async def flood(ws: Any, frames: Any) -> None:
        # 20,000 frames a second at most (20 times the default rate): a flood, without the
        # attacker process (here on the broker's machine) taking a whole core for itself.
        try:
            for i, frame in enumerate(frames):
                if time.monotonic() > end:
                    return
                await ws.send(frame)
                if i % 100 == 99:
                    await asyncio.sleep(0.005)
        except ConnectionClosed:
            pass

    def forever(make: Any) -> Any:
        i = 0
        while True:
            yield make(i)
            i += 1

    async def reconnect_loop(frames: list[str], connect_frame: dict[str, Any] | None) -> None:
        while time.monotonic() < end:
            try:
                ws = await session(connect_frame, read=False)
                for frame in frames:
                    await ws.send(frame)
                await ws.wait_closed()
            except (ConnectionClosed, InvalidStatus, OSError):
                await asyncio.sleep(0.01)

    root = {"key": KEY, "client_id": "attacker"}
    if name == "surrogates":  # 1: unauthenticated, un-encodable refs, reconnecting
        await reconnect_loop(['{"action":"heartbeat","ref":"\\ud800"}'] * 10, None)
    elif name == "rewind":  # 2: replays of 60 KB messages to a client that never reads
        ws = await session(root)
        for i in range(100):
            await ws.send(json.dumps({"action": "publish", "ref": i, "channel": "big",
                                      "name": "n", "data": "x" * 60_000}))
            await asyncio.sleep(0.002)
        while time.monotonic() < end:
            greedy = await session(root, read=False)
            greedy.transport.pause_reading()
            for ref in range(8):
                await greedy.send(json.dumps({"action": "attach", "ref": ref, "channel": "big",
                                              "rewind": 100}))
            for ref in range(20):
                await greedy.send(json.dumps({"action": "history", "ref": ref,
                                              "channel": "big", "limit": 300}))
            await asyncio.sleep(0.5)
    elif name == "channels":  # 3: a participant creating channels and presence everywhere
        token = _token("m", {"room:m:*": ["*"]})
        ws = await session({"token": token})
        await flood(ws, forever(lambda i: json.dumps(
            {"action": "publish" if i % 2 else "presence", "op": "enter", "ref": i,
             "channel": f"room:m:{i}", "name": "n"})))
    elif name == "nesting":  # 4: data nested 975 levels deep
        ws = await session(root)
        deep = '{"action":"publish","ref":1,"channel":"nest","name":"n","data":' + \
            "[" * 975 + "]" * 975 + "}"
        await flood(ws, forever(lambda i: deep))
    elif name == "dedup":  # 5: 20 KB publishes with ids, as fast as allowed
        ws = await session(root)
        await flood(ws, forever(lambda i: json.dumps(
            {"action": "publish", "ref": i, "channel": "ids", "name": "n", "id": f"m{i}",
             "data": "y" * 20_000})))
    elif name == "history":  # 6: history of 60 KB messages, read back
        ws = await session(root)
        for i in range(300):
            await ws.send(json.dumps({"action": "publish", "ref": i, "channel": "tall",
                                      "name": "n", "data": "x" * 60_000}))
            await asyncio.sleep(0.002)
        await flood(ws, forever(lambda i: json.dumps(
            {"action": "history", "ref": i, "channel": "tall", "limit": 300})))
    elif name == "presence":  # 7: 4 KB presence updates to 20 subscribers
        audience = [await open_light(url, sample=False, count_marker=None) for _ in range(20)]
        for light in audience:  # light clients: they count frames, no decoding
            light.send_json({"action": "connect", "ref": 0, "key": KEY})
            light.send_json({"action": "attach", "ref": 1, "channel": "lobby"})
        ws = await session(root)
        blob = {"b": "z" * 4000}
        await flood(ws, forever(lambda i: json.dumps(
            {"action": "presence", "ref": i, "channel": "lobby", "op": "update",
             "data": blob})))
    elif name == "heartbeats":  # 8: heartbeats before and after logging in
        ws = await session(root)
        anon = asyncio.get_running_loop().create_task(reconnect_loop(
            ['{"action":"heartbeat","ref":1}'] * 10, None))
        await flood(ws, forever(lambda i: f'{{"action":"heartbeat","ref":{i}}}'))
        await anon
    elif name == "tokens":  # 10: tokens with claims out of range, reconnecting
        bad = _token("a", {"*": ["*"]}, exp=time.time() + 10 * 365 * 86400)
        await reconnect_loop([], {"token": bad})
    elif name == "patterns":  # 13: capability patterns that make a regex backtrack
        token = _token("re", {"*a*a*a*a*a*a*a*a*b": ["*"]})
        await reconnect_loop([json.dumps({"action": "attach", "ref": i, "channel": "a" * 200})
                              for i in range(60)], {"token": token})
    else:
        raise SystemExit(f"unknown attack {name}")
    while time.monotonic() < end:
        await asyncio.sleep(0.05)


CASES = ["surrogates", "rewind", "channels", "nesting", "dedup", "history", "presence",
         "heartbeats", "tokens", "patterns"]


# ------------------------------------------------------------------ victim (this process)


class Victim:
    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.recording = False
        self.delivered = 0

    async def start(self) -> None:
        def on_payload(ws: LightWS, payload: bytes) -> None:
            t = now()
            obj = json.loads(payload)
            if obj.get("action") != "message":
                return
            if self.recording:
                self.latencies.extend(t - m["data"]["t"] for m in obj["messages"])

        def on_count(ws: LightWS) -> None:
            self.delivered += 1

        self.subs = []
        for start in range(0, SUBSCRIBERS, 25):
            batch = await asyncio.gather(*(
                open_light(self.url, sample=i < SAMPLED, count_marker=b'"serial":',
                           on_payload=on_payload, on_count=on_count)
                for i in range(start, min(SUBSCRIBERS, start + 25))))
            for ws in batch:
                ws.send_json({"action": "connect", "ref": 0, "key": KEY})
                ws.send_json({"action": "attach", "ref": 1, "channel": "feed"})
            self.subs.extend(batch)
        while any(ws.frames < 2 for ws in self.subs):
            await asyncio.sleep(0.01)
        self.pub = await open_light(self.url, sample=False, count_marker=None)
        self.pub.send_json({"action": "connect", "ref": 0, "key": KEY, "client_id": "victim"})
        self.task = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        start, sent = now(), 0
        while True:
            due = int((now() - start) * RATE)
            while sent < due:
                t = now()
                self.pub.send_text(f'{{"action":"publish","ref":{sent},"channel":"feed",'
                                   f'"name":"t","data":{{"t":{t!r}}}}}')
                sent += 1
            await asyncio.sleep(0.001)

    async def measure(self, seconds: float) -> tuple[float, float, int]:
        self.latencies = []
        self.recording = True
        await asyncio.sleep(seconds)
        self.recording = False
        lat = sorted(self.latencies)
        if not lat:
            return float("nan"), float("nan"), 0
        p99 = lat[max(0, int(len(lat) * 0.99) - 1)]
        return statistics.median(lat) * 1000, p99 * 1000, len(lat) // SAMPLED


def _proc_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main_async(cases: list[str], seconds: float) -> int:
    _raise_fd_limit()
    broker = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert broker.stdin is not None and broker.stdout is not None
    url = f"ws://127.0.0.1:{int(broker.stdout.readline())}"
    try:
        victim = Victim(url)
        await victim.start()
        await asyncio.sleep(1.0)  # warm up
        print(f"victim: 1 publisher at {RATE} msg/s, {SUBSCRIBERS} subscribers; latency "
              f"from publish to delivery, sampled on {SAMPLED} subscribers")
        print(f"{'case':>11} {'p50 ms':>8} {'p99 ms':>8} {'msgs/sub':>9} {'p99 ratio':>10} "
              f"{'srv cpu':>7}  target")
        cpu = _proc_cpu(broker.pid)
        p50, quiet, count = await victim.measure(seconds)
        cpu = (_proc_cpu(broker.pid) - cpu) / seconds
        print(f"{'quiet':>11} {p50:>8.2f} {quiet:>8.2f} {count:>9} {1.0:>10.2f} {cpu:>7.0%}  "
              f"p99 < {QUIET_TARGET_MS:.0f} ms {'met' if quiet < QUIET_TARGET_MS else 'MISSED'}",
              flush=True)
        worst = 0.0
        for case in cases:
            attacker = subprocess.Popen([sys.executable, __file__, "--attack", case, "--url",
                                         url, "--seconds", str(seconds + 1.0)])
            await asyncio.sleep(0.5)  # let the attack start
            cpu = _proc_cpu(broker.pid)
            p50, p99, count = await victim.measure(seconds)
            cpu = (_proc_cpu(broker.pid) - cpu) / seconds
            try:
                attacker.wait(30)
            except subprocess.TimeoutExpired:
                attacker.kill()
            worst = max(worst, p99)
            print(f"{case:>11} {p50:>8.2f} {p99:>8.2f} {count:>9} {p99 / quiet:>10.2f} "
                  f"{cpu:>7.0%}  "
                  f"p99 < {ATTACKED_TARGET_MS:.0f} ms "
                  f"{'met' if p99 < ATTACKED_TARGET_MS else 'MISSED'}", flush=True)
            await asyncio.sleep(0.5)  # let the broker settle between cases
        broker.stdin.write("stats\n")
        broker.stdin.flush()
        stats = json.loads(broker.stdout.readline())
        print(f"broker: {stats['protocol_errors']:,} protocol errors, {stats['rate_limited']:,} "
              f"rate-limited, {stats['slow_consumers']} slow consumers dropped, "
              f"{stats['refused_connections']:,} connections refused, outbound peak "
              f"{stats['outbound_peak'] / 2**20:.1f} MiB")
        print(f"worst attacked p99: {worst:.2f} ms ({worst / quiet:.1f}x quiet)")
        victim.task.cancel()
        return 0
    finally:
        broker.stdin.close()
        broker.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="3 attacks, 1.5 s each: a smoke run")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--attack", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        _raise_fd_limit()
        asyncio.run(_serve())
        return 0
    if args.attack:
        # The attacker stands in for machines elsewhere in the room: its own CPU use here
        # should not be what slows the broker and the victim down.
        os.nice(10)

        async def bounded() -> None:
            # An attack blocked by the broker's backpressure simply ends with its time.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_attack(args.attack, args.url, args.seconds),
                                       args.seconds)
        asyncio.run(bounded())
        os._exit(0)  # no goodbyes: an attacker just vanishes
    if args.quick:
        return asyncio.run(main_async(["surrogates", "rewind", "presence"], 1.5))
    return asyncio.run(main_async(args.cases.split(","), args.seconds))


if __name__ == "__main__":
    sys.exit(main())
