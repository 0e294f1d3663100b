"""Reconnect benchmark: how soon a client is back after an outage ends, how fast it resumes
once the link is back, and how fast the broker's replay of missed messages arrives.

Part 1, outages (default client and broker settings): refusals and blackholes of 1, 2, 5
and 10 s through the fault proxy, 20 of each (5 clients each), run side by side; measured
from the end of each outage: until the client is ``connected`` again (refusal) or until a
message published at that moment arrives (blackhole: with the default 15 s heartbeat the
link survives, the data was only held). Target: p50 <= 1 s and p99 <= outage + 2 s, with
the reconnect herd no more crowded than before (busiest 100 ms of 200 clients' first four
attempts, the measure of notebook 5).

Part 2, resume:
The broker runs in its own process (``rtkit serve``), so the client under test does not share
an interpreter with it. For each of R outages the subscriber's link is cut (aborted, no
goodbye) while a long backoff keeps it from retrying; the publisher publishes B messages on
each of K channels meanwhile; then the subscriber reconnects at once (``reconnect()``, so no
backoff wait is counted). Measured from that moment, "the link is back":

* resume: until the client is ``connected`` again with every channel re-attached;
* caught up: until the last missed message of every channel has been delivered.

    python benchmarks/reconnect.py                 # both parts (about 8 minutes)
    python benchmarks/reconnect.py --part resume   # only part 2
    python benchmarks/reconnect.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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
        link = sub._links.link
        assert link is not None
        link.abort(rtkit.Disconnected("benchmark outage"))
        await sub.wait_for_state(S.DISCONNECTED, timeout=10)
        results = await asyncio.gather(*(
            pub.channel(name).publish("tick", {"i": i})
            for name in names for i in range(backlog)))
        expected.clear()
        for name in names:
            expected[name] = max([r.serial for r in results] + [last.get(name, 0)]) \
                if backlog == 0 else last.get(name, 0) + backlog
        caught_up.clear()
        before = sub.last_resume
        t0 = time.monotonic()  # the link is back
        await sub.reconnect()
        while sub.last_resume is before:  # every channel attached again
            await asyncio.sleep(0.0005)
        info = sub.last_resume
        assert info is not None and info.resumed
        resume_ms.append((info.resumed_at - t0) * 1000)
        if backlog:
            await asyncio.wait_for(caught_up.wait(), 30)
            done = time.monotonic()
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


# ---------------------------------------------------------------------- part 1: outages


def herd_peak(backoff: rtkit.Backoff, clients: int = 200, retries: int = 4) -> int:
    """The busiest 100 ms of ``clients`` making their first ``retries`` attempts."""
    rng = random.Random(7)
    counts: dict[int, int] = {}
    for _ in range(clients):
        t = 0.0
        for attempt in range(retries):
            t += backoff.delay(attempt, rng)
            counts[int(t / 0.1)] = counts.get(int(t / 0.1), 0) + 1
    return max(counts.values())


async def _outages(url: str, kind: str, seconds: float, repeats: int,
                   clients: int) -> list[float]:
    """Seconds from the end of each outage to connected (refuse) or to data flowing
    again (blackhole), for every client."""
    px = rtkit.chaos.proxy(url)
    subs = [rtkit.Client(px.url, key=KEY) for _ in range(clients)]  # default settings
    pub = rtkit.Client(url, key=KEY)
    channel = f"outage:{kind}:{seconds:g}"
    arrived: dict[int, float] = {}
    probe = {"n": 0}

    def watcher(i: int) -> Callable[[rtkit.Message], None]:
        def on_message(msg: rtkit.Message) -> None:
            if msg.data == probe["n"]:
                arrived[i] = time.monotonic()
        return on_message

    try:
        await pub.connect()
        for i, sub in enumerate(subs):
            await sub.connect()
            await sub.channel(channel).subscribe(watcher(i))
        samples: list[float] = []
        for n in range(1, repeats + 1):
            if kind == "refuse":
                px.refuse(seconds)
                px.drop_all()
            else:
                px.blackhole(seconds)
            await asyncio.sleep(seconds)
            end, end_wall = time.monotonic(), time.time()  # state_history is on the wall clock
            arrived.clear()
            probe["n"] = n
            await pub.channel(channel).publish("probe", n)
            async with asyncio.timeout(seconds + 30):
                while len(arrived) < clients:
                    await asyncio.sleep(0.005)
            if kind == "refuse":
                samples += [[c.at for c in sub.state_history
                             if c.current is S.CONNECTED][-1] - end_wall for sub in subs]
            else:
                samples += [t - end for t in arrived.values()]
            await asyncio.sleep(0.5)
        return samples
    finally:
        for sub in subs:
            await sub.close()
        await pub.close()
        px.stop()


async def outages(args: argparse.Namespace) -> bool:
    lengths = (1.0,) if args.quick else (1.0, 2.0, 5.0, 10.0)
    repeats = 2 if args.quick else args.repeats
    print(f"Part 1: outages ({repeats} per row, {args.clients} clients each, default "
          f"settings); seconds from the end of the outage")
    print(f"{'outage':>14} {'p50':>7} {'p99':>7} {'max':>7} {'target p50<=1, p99<=L+2':>24}")
    broker = _broker(["--publish-rate", "100000"], default_heartbeat=True)
    ok = True
    try:
        url = broker.stdout.readline().split()[-1]  # type: ignore[union-attr]
        for kind in ("refuse", "blackhole"):
            results = await asyncio.gather(*(_outages(url, kind, length, repeats,
                                                      args.clients) for length in lengths))
            for length, samples in zip(lengths, results, strict=True):
                p50, p99 = statistics.median(samples), pct(samples, 0.99)
                met = p50 <= 1.0 and p99 <= length + 2.0
                ok &= met
                print(f"{kind + f' {length:g} s':>14} {p50:>7.2f} {p99:>7.2f} "
                      f"{max(samples):>7.2f} {'met' if met else 'MISSED':>24}", flush=True)
    finally:
        broker.terminate()
        broker.wait(10)
    old = herd_peak(rtkit.Backoff(base=0.5, cap=15.0))
    default = rtkit.Client("ws://x", key=KEY).backoff
    new = herd_peak(default)
    print(f"herd: busiest 100 ms of 200 clients' first 4 attempts: {new} with the default "
          f"backoff (base {default.base:g} s, cap {default.cap:g} s) against {old} with "
          f"base 0.5 s, cap 15 s: {'no worse' if new <= old else 'WORSE'}")
    return ok and new <= old


def _broker(extra: list[str], default_heartbeat: bool = False) -> subprocess.Popen[str]:
    timers = [] if default_heartbeat else ["--heartbeat-interval", "5",
                                           "--connection-state-ttl", "60"]
    return subprocess.Popen(
        [sys.executable, "-m", "rtkit.cli", "serve", "--port", "0", "--key", KEY,
         *timers, *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


# ---------------------------------------------------------------------- part 2: resume


async def main_async(args: argparse.Namespace) -> int:
    ok = True
    if args.part in ("all", "outages"):
        ok = await outages(args)
        print()
    if args.part == "outages":
        return 1 if args.check and not ok else 0
    print("Part 2: resume once the link is back (reconnect() called at once)")
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
    return 1 if args.check and (worst >= TARGET_MS or not ok) else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--outages", type=int, default=40)
    p.add_argument("--channels", type=int, default=5)
    p.add_argument("--backlog", type=int, default=200, help="messages missed per channel")
    p.add_argument("--repeats", type=int, default=20, help="outages of each kind and length")
    p.add_argument("--clients", type=int, default=5, help="clients per outage row")
    p.add_argument("--part", choices=("all", "outages", "resume"), default="all")
    p.add_argument("--quick", action="store_true", help="a smoke run")
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = p.parse_args()
    if args.quick:
        args.outages, args.backlog = 5, 50
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
