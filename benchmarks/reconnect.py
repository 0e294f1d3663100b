"""Reconnect benchmark: how fast a client resumes after the link comes back, and how fast the
broker's replay of missed messages arrives.

The broker runs in its own process (``rtkit serve``), so the client under test does not share
an interpreter with it. For each of R outages the subscriber's link is cut (aborted, no
goodbye) while a long backoff keeps it from retrying; the publisher publishes B messages on
each of K channels meanwhile; then the subscriber reconnects at once (``reconnect()``, so no
backoff wait is counted). Measured from that moment, "the link is back":

* resume: until the client is ``connected`` again with every channel re-attached;
* caught up: until the last missed message of every channel has been delivered.

    python benchmarks/reconnect.py                 # 40 outages, 5 channels, 0 and 200 missed
    python benchmarks/reconnect.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rtkit
from rtkit import ConnectionState as S

TARGET_MS = 50.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


KEY = "bench:" + "r" * 40


async def run(outages: int, channels: int, backlog: int) -> dict[str, float]:
    broker = subprocess.Popen(
        [sys.executable, "-m", "rtkit.cli", "serve", "--port", "0", "--key", KEY,
         "--heartbeat-interval", "5", "--connection-state-ttl", "60",
         "--publish-rate", "1000000", "--history-size", str(max(1000, backlog * 2))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = broker.stdout.readline().split()[-1]  # type: ignore[union-attr]
        return await _measure(url, outages, channels, backlog)
    finally:
        broker.terminate()
        broker.wait(10)


async def _measure(url: str, outages: int, channels: int, backlog: int) -> dict[str, float]:
    pub = rtkit.Client(url, key=KEY)
    sub = rtkit.Client(url, key=KEY, backoff=rtkit.Backoff(base=30, cap=30))
    await pub.connect()
    await sub.connect()
    names = [f"bench:{i}" for i in range(channels)]
    last: dict[str, int] = {}
    caught_up = asyncio.Event()
    expected: dict[str, int] = {}

    def on_message(msg: rtkit.Message) -> None:
        last[msg.channel] = msg.serial
        if expected and all(last.get(n, 0) >= s for n, s in expected.items()):
            caught_up.set()

    for name in names:
        await sub.channel(name).subscribe(on_message)
    resume_ms: list[float] = []
    catchup_ms: list[float] = []
    replayed = 0
    replay_seconds = 0.0
    for _ in range(outages):
        assert sub._link is not None
        sub._link.abort(rtkit.Disconnected("benchmark outage"))
        await sub.wait_for_state(S.DISCONNECTED, timeout=10)
        results = await asyncio.gather(*(
            pub.channel(name).publish("tick", {"i": i})
            for name in names for i in range(backlog)))
        expected.clear()
        for name in names:
            expected[name] = max([r.serial for r in results] + [last.get(name, 0)]) \
                if backlog == 0 else last.get(name, 0) + backlog
        caught_up.clear()
        t0 = time.perf_counter()  # the link is back
        await sub.reconnect()
        info = sub.last_resume
        assert info is not None and info.resumed
        resume_ms.append((info.resumed_at - t0) * 1000)
        if backlog:
            await asyncio.wait_for(caught_up.wait(), 30)
            done = time.perf_counter()
            catchup_ms.append((done - t0) * 1000)
            replayed += backlog * channels
            replay_seconds += done - t0
        losses = sum(len(sub.channel(n).continuity_losses) for n in names)
        assert losses == 0, "continuity lost during the benchmark"
    await sub.close()
    await pub.close()
    out = {"resume_p50": statistics.median(resume_ms), "resume_p99": pct(resume_ms, 0.99)}
    if catchup_ms:
        out |= {"catchup_p50": statistics.median(catchup_ms),
                "catchup_p99": pct(catchup_ms, 0.99),
                "replay_rate": replayed / replay_seconds}
    return out


async def main_async(args: argparse.Namespace) -> int:
    print(f"{args.outages} outages, {args.channels} channels; times from the link coming back")
    print(f"{'missed/channel':>14} {'resume p50':>11} {'resume p99':>11} {'caught-up p50':>14} "
          f"{'caught-up p99':>14} {'replayed msg/s':>15}")
    worst = 0.0
    for backlog in (0, args.backlog):
        r = await run(args.outages, args.channels, backlog)
        worst = max(worst, r["resume_p99"])
        cp50 = f"{r['catchup_p50']:.1f} ms" if "catchup_p50" in r else "-"
        cp99 = f"{r['catchup_p99']:.1f} ms" if "catchup_p99" in r else "-"
        rate = f"{r['replay_rate']:,.0f}" if "replay_rate" in r else "-"
        print(f"{backlog:>14} {r['resume_p50']:>8.1f} ms {r['resume_p99']:>8.1f} ms "
              f"{cp50:>14} {cp99:>14} {rate:>15}", flush=True)
    verdict = "met" if worst < TARGET_MS else "MISSED"
    print(f"target: resume p99 < {TARGET_MS:.0f} ms on loopback: {verdict} "
          f"(worst p99 {worst:.1f} ms)")
    return 1 if args.check and worst >= TARGET_MS else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--outages", type=int, default=40)
    p.add_argument("--channels", type=int, default=5)
    p.add_argument("--backlog", type=int, default=200, help="messages missed per channel")
    p.add_argument("--quick", action="store_true", help="5 outages: a smoke run")
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = p.parse_args()
    if args.quick:
        args.outages, args.backlog = 5, 50
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
