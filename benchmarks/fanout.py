"""Fan-out, latency, publish intake and many channels: rtkit against a raw websockets relay.

Each run uses two fresh processes: the server (rtkit's broker, or a raw ``websockets`` relay
with no protocol) pinned to one CPU, and the load generator (``fanout_load.py``: publishers and
light subscribers from ``lightws.py``) pinned to another. This process only starts them and
waits. Every case runs rtkit and its baseline ``--repeats`` times each (alternating which goes
first), measures a steady window after a warm-up, and prints the median, the spread
((max - min) / median) and their ratio, with the share of a core each process used and the
messages per CPU-second of the server (with its ratio: steadier than the rate when other
processes take CPU time; the notes say when a process waited for its CPU, when the server sat
idle, and when the load generator was the limit). The same flow control for both servers: a
publisher keeps at most ``--window`` messages in flight, a message being in flight until
*every* subscriber of its channel has received it.

Cases:
  fanout    1 publisher, N = 1, 10, 100, 1,000 subscribers on one channel: delivered msg/s
            (publishes without ids: rtkit names them); a row per rtkit transport of the
            subscribers (``--transport``, default ws and sse), each with its ratio to the raw relay
  latency   1 publisher at 1,000 msg/s, 100 subscribers: p50/p99 from publish to delivery
            (the publish time travels in the message; 10 subscribers decode every frame)
  intake    1 publishing connection pipelining publishes (rtkit: each with a ref and an id,
            so dedup and acks are at work) to 1 and to 10 subscribers: published msg/s
  channels  1,000 channels, each with 1 publisher and 2 subscribers, all active at once:
            aggregate delivered msg/s (at most ``--channel-window`` in flight per channel)

    python benchmarks/fanout.py                       # every case, about 3 minutes
    python benchmarks/fanout.py --quick               # a smoke run, under 30 s
    python benchmarks/fanout.py --case intake --repeats 3
    python benchmarks/fanout.py --subscribers 100,1000 --seconds 5   # fan-out only
    FANOUT_PROFILE=prof python benchmarks/fanout.py --case intake --repeats 1
        # -> prof.intake-1.rtkit, prof.intake-1.raw, ...: cProfile of each server over its
        #    measured window (python -m pstats prof.intake-1.rtkit)

The raw relay answers ``sub:<channel>`` with ``ok`` and relays every frame of a ``pub:<channel>``
connection with ``websockets.broadcast`` (one write per message per subscriber). rtkit runs its
full protocol (auth, serials, history, dedup window, acks, deliveries batched per subscriber per
loop iteration) with its defaults, except the limits a benchmark must lift: the per-connection
publish rate and the connection admission limits (see ``RTKIT_CONFIG``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEY = "bench:" + "b" * 40
#: rtkit's broker as benchmarked: defaults (max_outbound_buffer 8 MiB included), except the
#: per-connection publish rate (5,000/s by default: one publisher here sends far more) and the
#: admission limits (1,000 connections per address, 100 new ones a second: the load generator
#: opens up to 3,001 from one address at once).
RTKIT_CONFIG: dict[str, Any] = {
    "publish_rate": 1e9, "publish_burst": 10**9,
    "max_connections_per_address": 100_000,
    "connection_attempt_rate": 1e6, "connection_attempt_burst": 100_000,
}
#: rtkit's transports for the subscribers of the fan-out case (``--transport``, one row each):
#: the kind of run of each, served by rtkit's broker, its subscribers speaking the load
#: generator's dialect of that name (``fanout_load.DIALECTS``); publishers use a WebSocket.
TRANSPORTS = {"ws": "rtkit", "sse": "rtkit-sse"}
#: Which server each kind of run talks to.
SERVER_OF = {"raw": "raw", **dict.fromkeys(TRANSPORTS.values(), "rtkit")}
KINDS = ("raw", "rtkit")  # the cases other than fan-out; the first is the baseline
CASES = ("fanout", "latency", "intake", "channels")
LATENCY_RATE, LATENCY_SUBSCRIBERS, LATENCY_SAMPLES = 1000.0, 100, 10
INTAKE_SUBSCRIBERS = (1, 10)
#: Targets of issue 12 (rtkit / raw ratios, and the latency bound).
TARGETS = {("intake", 1): 1.0, ("intake", 10): 3.0, ("channels", 2): 1.0,
           ("fanout", 100): 8.0, ("fanout", 1000): 8.0}
P99_TARGET_MS = 5.0


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------ servers (child process)


async def _serve(kind: str, profile_to: str | None) -> None:
    import asyncio
    import signal

    if kind == "rtkit":
        from rtkit.aio.broker import Broker
        from rtkit.core.config import BrokerConfig
        from rtkit.core.tokens import ApiKey

        broker = Broker(BrokerConfig(**RTKIT_CONFIG), ApiKey.parse(KEY))
        await broker.start("127.0.0.1", 0)
        port = broker.port
    else:
        from websockets.asyncio.server import ServerConnection, broadcast, serve
        from websockets.exceptions import ConnectionClosed

        channels: dict[str, set[ServerConnection]] = {}

        async def handler(ws: ServerConnection) -> None:
            role, _, channel = str(await ws.recv()).partition(":")
            if role == "sub":
                subscribers = channels.setdefault(channel, set())
                subscribers.add(ws)
                await ws.send("ok")
                try:
                    await ws.wait_closed()
                finally:
                    subscribers.discard(ws)
            else:
                subscribers = channels.setdefault(channel, set())
                with contextlib.suppress(ConnectionClosed):  # the generator just leaves
                    async for message in ws:
                        broadcast(subscribers, message)

        server = await serve(handler, "127.0.0.1", 0, compression=None, max_queue=None)
        port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    if profile_to:  # the load generator signals the measured window
        import cProfile

        profiler = cProfile.Profile()

        def dump() -> None:
            profiler.disable()
            profiler.dump_stats(profile_to)

        loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
        loop.add_signal_handler(signal.SIGUSR2, dump)
    print(port, flush=True)
    # Run until the parent closes our stdin, then leave at once (no graceful goodbyes).
    await loop.run_in_executor(None, sys.stdin.read)
    os._exit(0)


# ------------------------------------------------------------------ runs (this process)


@dataclass(frozen=True)
class Setting:
    """One row group of a case: what the load generator is asked to do."""

    case: str
    subscribers: int  # per channel
    channels: int = 1
    window: int = 200
    rate: float | None = None
    ids: bool = False
    samples: int = 0  # subscribers per channel that decode frames (latency)

    @property
    def tag(self) -> str:
        return f"{self.case}-{self.channels if self.case == 'channels' else self.subscribers}"


def _pinning(args: argparse.Namespace) -> tuple[int | None, int | None, str]:
    """CPUs for the server and the load generator, and a line saying what was done."""
    if args.no_pin:
        return None, None, "pinning off (--no-pin): the scheduler places both processes"
    if not hasattr(os, "sched_setaffinity"):
        return None, None, "pinning skipped: os.sched_setaffinity is not available here"
    cpus = sorted(os.sched_getaffinity(0))
    if args.cpus:
        server, load = (int(x) for x in args.cpus.split(","))
    elif len(cpus) >= 2:
        server, load = cpus[0], cpus[1]
    else:
        return None, None, (f"pinning skipped: {len(cpus)} CPU available, the server and the "
                            "load generator need one each (they share it: figures mean less)")
    return server, load, f"server pinned to CPU {server}, load generator to CPU {load}"


def run_once(setting: Setting, kind: str, args: argparse.Namespace,
             cpus: tuple[int | None, int | None]) -> dict[str, Any]:
    """Start a server and a load generator, return what the load generator measured."""
    profile = os.environ.get("FANOUT_PROFILE")
    cmd = [sys.executable, __file__, "--serve", SERVER_OF[kind]]
    if cpus[0] is not None:
        cmd += ["--cpu", str(cpus[0])]
    if profile:
        cmd += ["--profile-to", f"{profile}.{setting.tag}.{kind}"]
    server = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        port = int(server.stdout.readline())
        spec = {
            "case": setting.case, "kind": kind, "url": f"ws://127.0.0.1:{port}",
            "server_pid": server.pid, "cpu": cpus[1], "subscribers": setting.subscribers,
            "channels": setting.channels, "window": setting.window, "rate": setting.rate,
            "ids": setting.ids, "samples": setting.samples,
            "messages": args.messages if setting.case == "fanout" else 0,
            "warmup": args.warmup, "duration": args.seconds, "profile": bool(profile),
        }
        load = subprocess.run([sys.executable, str(HERE / "fanout_load.py"), json.dumps(spec)],
                              capture_output=True, text=True, timeout=300)
        if load.returncode != 0:
            last = (load.stderr.strip().splitlines() or ["no output"])[-1]
            return {"problems": [f"load generator failed: {last}"]}
        return dict(json.loads(load.stdout.strip().splitlines()[-1]))
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@dataclass
class Summary:
    """The median of a setting's repeats for one kind."""

    runs: list[dict[str, Any]]

    def median(self, key: str) -> float:
        values = [r[key] for r in self.runs if key in r]
        return statistics.median(values) if values else float("nan")

    def per_cpu(self, key: str) -> float:
        """Median of ``key`` (msg/s) per share of a core the server used: messages per
        CPU-second of the server."""
        values = [r[key] / r["server_cpu"] for r in self.runs
                  if key in r and r.get("server_cpu", 0) > 0]
        return statistics.median(values) if values else float("nan")

    def spread(self, key: str) -> str:
        values = [r[key] for r in self.runs if key in r]
        if len(values) < 2 or not statistics.median(values):
            return "-"
        return f"{(max(values) - min(values)) / statistics.median(values):.0%}"

    def note(self, throughput: bool = True) -> str:
        """Anything that makes the figure mean less, for the last column. A process that
        waited for its CPU had it taken by other processes (a shared machine)."""
        notes = [p for r in self.runs for p in r.get("problems", [])]
        out = [f"INCOMPLETE: {'; '.join(dict.fromkeys(notes))}"] if notes else []
        server_wait, load_wait = self.median("server_wait"), self.median("load_wait")
        load_cpu, server_cpu = self.median("load_cpu"), self.median("server_cpu")
        idle = 1 - server_cpu - server_wait
        if load_cpu + load_wait >= 0.85:
            out.append(f"generator-bound (busy {load_cpu:.0%}, waited {load_wait:.0%}): "
                       + ("a lower bound" if throughput else "its delays are in the figures"))
        elif throughput and idle >= 0.2 and load_wait >= 0.1:
            out.append(f"server idle {idle:.0%}, the generator waited {load_wait:.0%} for its "
                       "CPU: a lower bound")
        elif throughput and idle >= 0.2:
            out.append(f"server idle {idle:.0%}: held back by the in-flight bound (see --window)")
        elif load_wait >= 0.1:
            out.append(f"generator waited {load_wait:.0%} for its CPU")
        if server_wait >= 0.1:
            out.append(f"server waited {server_wait:.0%} for its CPU")
        return "; ".join(out)


def measure(setting: Setting, kinds: Sequence[str], args: argparse.Namespace,
            cpus: tuple[int | None, int | None]) -> dict[str, Summary]:
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        order = kinds if repeat % 2 == 0 else list(reversed(kinds))
        for kind in order:
            runs[kind].append(run_once(setting, kind, args, cpus))
    return {k: Summary(v) for k, v in runs.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b else float("nan")


def _num(x: float, width: int, spec: str, unit: str = "") -> str:
    """``x`` formatted and right-aligned, or "-" when unknown (NaN: a window too short to
    count CPU time, or nothing measured)."""
    return (format(x, spec) + unit if x == x else "-").rjust(width)


def _rows(label: str, results: dict[str, Summary], key: str, extra: str = "") -> None:
    """One line per server of a throughput case: ``key`` (msg/s) is the figure compared."""
    for kind, s in results.items():
        other = {"rate": "pub_rate", "pub_rate": "rate"}[key]
        print(f"{label:>11} {kind:>9} {s.median(key):>12,.0f} {s.median(other):>12,.0f} "
              f"{s.spread(key):>6} {_num(s.median('server_cpu'), 7, '.0%')} "
              f"{_num(s.median('load_cpu'), 7, '.0%')} {_num(s.per_cpu(key), 9, ',.0f')}{extra}"
              f"  {s.note()}", flush=True)


def _ratio_rows(label: str, results: dict[str, Summary], key: str) -> dict[str, float]:
    """The ratio of each server to the first (the baseline): of the figure, and of the
    messages per CPU-second of the server (steadier when other processes take CPU time)."""
    kinds = list(results)
    base = results[kinds[0]]
    out = {}
    for kind in kinds[1:]:
        s = results[kind]
        out[kind] = r = _ratio(s.median(key), base.median(key))
        per_cpu = _ratio(s.per_cpu(key), base.per_cpu(key))
        print(f"{label:>11} {'ratio':>9} {r:>11.2f}x {'':>12} {'':>6} {'':>7} {'':>7} "
              f"{_num(per_cpu, 9, '.2f', 'x')}  {kind} / {kinds[0]}", flush=True)
    return out


HEAD = (f"{'server':>9} {{:>12}} {{:>12}} {'spread':>6} {'srv cpu':>7} {'gen cpu':>7} "
        f"{'per cpu-s':>9}")


# ------------------------------------------------------------------ cases


def _fanout_case(kind: str) -> str:
    """The key of a fan-out ratio: "fanout" for rtkit over WebSocket (the one with targets),
    "fanout <kind>" for another transport."""
    return "fanout" if kind == "rtkit" else f"fanout {kind}"


def case_fanout(args: argparse.Namespace, cpus: Any, ratios: dict[tuple[str, int], float]) -> None:
    counts = [int(x) for x in args.subscribers.split(",")]
    how = (f"{args.messages} messages, from the first publish to the last delivery"
           if args.messages else f"{args.seconds:g} s after {args.warmup:g} s of warm-up")
    print(f"\nfan-out: 1 publisher, N subscribers on one channel, at most {args.window} messages "
          f"in flight; delivered msg/s over {how}")
    print(f"{'subscribers':>11} " + HEAD.format("delivered/s", "published/s") + "  note")
    for n in counts:
        kinds = ("raw", *(TRANSPORTS[t] for t in args.transport))
        results = measure(Setting("fanout", n, window=args.window), kinds, args, cpus)
        _rows(str(n), results, "rate")
        for kind, r in _ratio_rows(str(n), results, "rate").items():
            ratios[(_fanout_case(kind), n)] = r


def case_latency(args: argparse.Namespace, cpus: Any, ratios: dict[tuple[str, int], float]) -> None:
    print(f"\nlatency: 1 publisher at {LATENCY_RATE:,.0f} msg/s, {LATENCY_SUBSCRIBERS} subscribers "
          f"({LATENCY_SAMPLES} decode every frame); publish to delivery over {args.seconds:g} s")
    print(f"{'server':>9} {'p50 ms':>8} {'p99 ms':>8} {'spread':>6} {'samples':>8} {'srv cpu':>7} "
          f"{'gen cpu':>7}  note")
    setting = Setting("latency", LATENCY_SUBSCRIBERS, window=args.window, rate=LATENCY_RATE,
                      samples=LATENCY_SAMPLES)
    results = measure(setting, KINDS, args, cpus)
    for kind, s in results.items():
        note = s.note(throughput=False)
        if s.median("pub_rate") < 0.95 * LATENCY_RATE:  # the in-flight bound held it back
            note = "; ".join(x for x in (f"fell behind: {s.median('pub_rate'):,.0f} msg/s "
                                         "published", note) if x)
        print(f"{kind:>9} {s.median('p50_ms'):>8.2f} {s.median('p99_ms'):>8.2f} "
              f"{s.spread('p99_ms'):>6} {s.median('samples'):>8.0f} "
              f"{_num(s.median('server_cpu'), 7, '.0%')} "
              f"{_num(s.median('load_cpu'), 7, '.0%')}  {note}",
              flush=True)
    rt, raw = results["rtkit"], results["raw"]
    ratios[("latency", 0)] = rt.median("p99_ms")
    print(f"{'ratio':>9} {_ratio(rt.median('p50_ms'), raw.median('p50_ms')):>7.2f}x "
          f"{_ratio(rt.median('p99_ms'), raw.median('p99_ms')):>7.2f}x  rtkit / raw", flush=True)


def case_intake(args: argparse.Namespace, cpus: Any, ratios: dict[tuple[str, int], float]) -> None:
    print(f"\npublish intake: 1 connection pipelining publishes (rtkit: each with a ref and an "
          f"id, acked), at most {args.window} in flight; published msg/s")
    print(f"{'subscribers':>11} " + HEAD.format("published/s", "delivered/s") + "  note")
    for n in INTAKE_SUBSCRIBERS:
        results = measure(Setting("intake", n, window=args.window, ids=True), KINDS, args, cpus)
        _rows(str(n), results, "pub_rate")
        ratios[("intake", n)] = _ratio_rows(str(n), results, "pub_rate")["rtkit"]


def case_channels(args: argparse.Namespace, cpus: Any,
                  ratios: dict[tuple[str, int], float]) -> None:
    print(f"\nmany channels: {args.channels:,} channels, each with 1 publisher (ids) and 2 "
          f"subscribers, all active; at most {args.channel_window} in flight per channel; "
          f"aggregate delivered msg/s")
    print(f"{'channels':>11} " + HEAD.format("delivered/s", "published/s") + f" {'set-up s':>8}"
          "  note")
    setting = Setting("channels", 2, channels=args.channels, window=args.channel_window,
                      ids=True)
    results = measure(setting, KINDS, args, cpus)
    label = str(args.channels)
    for kind, s in results.items():
        _rows(label, {kind: s}, "rate", f" {s.median('setup'):>8.1f}")
    ratios[("channels", 2)] = _ratio_rows(label, results, "rate")["rtkit"]


def report(ratios: dict[tuple[str, int], float]) -> bool:
    """Print the ratios and the targets of issue 12; True when every target measured is met."""
    print()
    for fanout in dict.fromkeys(case for case, _ in ratios if case.startswith("fanout")):
        kind = fanout.partition(" ")[2] or "rtkit"
        print("ratios: " + ", ".join(f"N={n}: {r:.2f}" for (case, n), r in ratios.items()
                                     if case == fanout)
              + f"  (fan-out, {kind} / raw delivered msg/s)")
    met = True
    lines = []
    for (case, n), target in TARGETS.items():
        if (case, n) in ratios:
            r = ratios[(case, n)]
            ok = r >= target
            met &= ok
            what = {"fanout": f"fan-out N={n}", "intake": f"intake, {n} subscriber(s)",
                    "channels": "many channels"}[case]
            lines.append(f"  {what:<26} {r:>6.2f}x  target >= {target:g}x  "
                         f"{'met' if ok else 'MISSED'}")
    if ("latency", 0) in ratios:
        p99 = ratios[("latency", 0)]
        ok = p99 < P99_TARGET_MS
        met &= ok
        lines.append(f"  {'latency p99 (rtkit)':<26} {p99:>5.2f} ms  target < "
                     f"{P99_TARGET_MS:g} ms  {'met' if ok else 'MISSED'}")
    if lines:
        print("targets (issue 12):")
        print("\n".join(lines))
    print("srv cpu / gen cpu: share of one core used by the server / the load generator over the "
          "measured window (median of the repeats); spread: (max - min) / median of the repeats;"
          " 'waited': runnable but another process had the CPU.")
    return met


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--case", choices=CASES, action="append",
                   help="run this case (repeatable; default: all, or fanout when "
                        "--subscribers, --messages or --transport is given)")
    p.add_argument("--subscribers", help="fan-out subscriber counts (default 1,10,100,1000)")
    p.add_argument("--transport", choices=TRANSPORTS, action="append",
                   help="rtkit's transport for the fan-out subscribers (repeatable: a row each; "
                        "default ws and sse)")
    p.add_argument("--messages", type=int, default=0,
                   help="fan-out: publish this many messages and time them all, instead of a "
                        "steady window (a quick check; includes the warm-up)")
    p.add_argument("--repeats", type=int, help="runs per case and server (default 2; 1 quick)")
    p.add_argument("--seconds", type=float, help="measured window (default 2; 0.5 quick)")
    p.add_argument("--warmup", type=float, help="seconds before measuring (default 1; 0.3 quick)")
    p.add_argument("--window", type=int, default=200,
                   help="most messages in flight per publisher (default 200)")
    p.add_argument("--channels", type=int, help="channels of the channels case (default 1000)")
    p.add_argument("--channel-window", type=int, default=20,
                   help="most messages in flight per channel, channels case (default 20)")
    p.add_argument("--cpus", help="SERVER,LOAD: the CPUs to pin to (default: the first two)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the processes to CPUs")
    p.add_argument("--quick", action="store_true", help="a smoke run (under 30 s)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--serve", choices=("rtkit", "raw"), help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    p.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        import asyncio

        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        _raise_fd_limit()
        asyncio.run(_serve(args.serve, args.profile_to))
        return 0

    fanout_only = args.subscribers or args.messages or args.transport
    cases = args.case or (["fanout"] if fanout_only else list(CASES))
    args.transport = args.transport or ["ws", "sse"]
    quick = args.quick
    args.subscribers = args.subscribers or ("1,100" if quick else "1,10,100,1000")
    args.repeats = args.repeats or (1 if quick else 2)
    args.seconds = args.seconds or (0.5 if quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if quick else 1.0)
    args.channels = args.channels or (100 if quick else 1000)
    server_cpu, load_cpu, pinned = _pinning(args)
    cpus = (server_cpu, load_cpu)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"rtkit benchmarks: {', '.join(cases)}; {args.repeats} run(s) per case and server, "
          f"median shown")
    print(f"{pinned}; {os.cpu_count()} CPUs, load average {load:.2f} at the start"
          + (" (other processes are busy: figures are noisy)" if load > 0.5 else ""))
    if os.environ.get("FANOUT_PROFILE"):
        print(f"profiling each server over its measured window to "
              f"{os.environ['FANOUT_PROFILE']}.<case>-<setting>.<server> (figures slowed)")
    ratios: dict[tuple[str, int], float] = {}
    for case in cases:
        {"fanout": case_fanout, "latency": case_latency, "intake": case_intake,
         "channels": case_channels}[case](args, cpus, ratios)
    met = report(ratios)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
