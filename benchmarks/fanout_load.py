"""The load generator of ``fanout.py``: one process, pinned to its own CPU, that opens every
publisher and subscriber of one run with the light client (``lightws.py``), drives them and
prints what it measured as one JSON line.

    python benchmarks/fanout_load.py '{"case": "fanout", "kind": "rtkit", "url": ..., ...}'

**Flow control, counted over all subscribers.** A message is in flight from its publish until
*every* subscriber of its channel has received it; each publisher keeps at most ``window``
messages in flight, and tops its window up (one write holding many publish frames) each time
at least ``window // 8`` more messages have reached every subscriber. It never waits on one
subscriber only, so none can fall behind without limit. Cost: a subscriber's read updates two
integers; the O(N) scan for the slowest subscriber runs once per top-up.

**Staying out of the way.** Its cost is per read (a system call and a loop turn), so it reads
in rounds (:class:`Rounds`) when measuring throughput, and at a fixed rate reads only the
subscribers that time messages at once (:class:`LazyReaders`). rtkit frames are counted from
their first and last serial, raw ones one per frame. A run ends by stopping the publishers,
waiting until every subscriber has every message, and checking that each got exactly what
was published, every publish was acked and no connection was closed or refused.

**Kinds.** How the generator speaks to a server is a :class:`Dialect`: how a subscriber and a
publisher are opened and made ready, how deliveries are counted, what a publish looks like.
``raw``, ``rtkit`` and ``rtkit-sse`` exist. Each rtkit transport for the subscribers is a
dialect registered in :data:`DIALECTS` under the kind that ``fanout.py``'s ``TRANSPORTS``
names. For SSE (``"sse": "rtkit-sse"``) it is a subclass of :class:`RtkitDialect` (its
publishers, publishes and acks unchanged) whose ``open_subscriber`` opens the event stream
with a light SSE client and POSTs ``connect`` and ``attach``; ``subscriber_ready`` waits for
their two replies. That client has the :class:`Subscriber` attributes: its events' ``data``
are the same frames, so :func:`count_serials` counts them, and ``transport.pause_reading``
lets :class:`LazyReaders` read it lazily.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightsse import open_light_sse
from lightws import LightWS, now, open_light, text_frame

KEY = "bench:" + "b" * 40
OPEN_BATCH = 100  # connections opened at once
READY_TIMEOUT = 60.0
DRAIN_TIMEOUT = 15.0


class Subscriber(Protocol):
    """What the set-up, the flow control and the checks need from a subscriber of any kind
    (:class:`LightWS` is one; an SSE reader would be another)."""

    sample: bool  # decodes every frame to time messages (``on_payload``)
    count: int  # messages received since the run began
    frames: int
    errors: int  # frames holding ``error_marker`` (None: not looked for)
    error_marker: bytes | None
    first_error: bytes
    on_progress: Callable[[Any, int], None] | None  # (subscriber, previous count)
    closed: asyncio.Future[Any]
    transport: asyncio.Transport | None  # paused and resumed by LazyReaders

    def close(self) -> None: ...


C = TypeVar("C", bound=Subscriber)  # a connection of the load generator


@dataclass
class Stats:
    delivered: int = 0  # messages received, over every subscriber
    recording: bool = False
    latencies: list[float] = field(default_factory=list)
    drained: int = 0  # groups whose every message reached every subscriber after the stop
    drained_at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    groups: int = 0


# ------------------------------------------------------------------ dialects


class Dialect:
    """The raw relay: ``sub:<channel>`` (answered ``ok``) or ``pub:<channel>`` as the first
    frame, then every frame a publisher sends is one message to the channel's subscribers."""

    name = "raw"

    async def open_subscriber(self, url: str, channel: str, sample: bool,
                              on_payload: Callable[[Any, bytes], None]) -> Subscriber:
        ws = await open_light(url, sample=sample, count_marker=None, on_payload=on_payload)
        ws.send_text(f"sub:{channel}")
        return ws

    def subscriber_ready(self, ws: Subscriber) -> bool:
        return ws.frames >= 1

    async def open_publisher(self, url: str, channel: str) -> LightWS:
        ws = await open_light(url, sample=False, count_marker=None)
        ws.send_text(f"pub:{channel}")
        return ws

    def publisher_ready(self, ws: LightWS) -> bool:
        return True

    def acks(self, ws: LightWS) -> int | None:
        """Publishes acknowledged so far (None: the dialect has no acks)."""
        return None

    def publishes(self, channel: str, first: int, n: int, t: float, ids: bool) -> bytes:
        return b"".join(text_frame(f'{{"i":{i},"t":{t!r}}}'.encode())
                        for i in range(first, first + n))

    def items(self, payload: bytes) -> list[Any]:
        """The published ``data`` objects a frame holds (decoded: sampled subscribers only)."""
        return [] if payload == b"ok" else [json.loads(payload)]


SERIAL = re.compile(rb'"serial":(\d+)')


def count_serials(buf: bytearray, start: int, end: int) -> int:
    """Messages in an rtkit frame, without reading it all: the serials of a channel go up by
    one per message and a frame holds consecutive ones, so the first and the last tell. (Were
    that not so, the exact count checked at the end of every run would say.)"""
    first = buf.find(b'"serial":', start, end)
    if first < 0:
        return 0
    last = buf.rfind(b'"serial":', first, end)
    if last == first:
        return 1
    a, b = SERIAL.match(buf, first), SERIAL.match(buf, last)
    assert a is not None and b is not None
    return int(b.group(1)) - int(a.group(1)) + 1


class RtkitDialect(Dialect):
    """rtkit's protocol: ``connect`` with the API key, ``attach``, ``publish`` (with ``ref``,
    and an ``id`` when ``ids``); deliveries (and acks) counted by their ``"serial":`` without
    decoding."""

    name = "rtkit"
    error = b'"code":'  # an error object: in a nack or an error frame

    async def open_subscriber(self, url: str, channel: str, sample: bool,
                              on_payload: Callable[[Any, bytes], None]) -> Subscriber:
        ws = await open_light(url, sample=sample, count_marker=None, counter=count_serials,
                              on_payload=on_payload, error_marker=self.error)
        ws.send_json({"action": "connect", "ref": 0, "key": KEY})
        ws.send_json({"action": "attach", "ref": 1, "channel": channel})
        return ws

    def subscriber_ready(self, ws: Subscriber) -> bool:
        return ws.frames >= 2  # connected, attached

    async def open_publisher(self, url: str, channel: str) -> LightWS:
        ws = await open_light(url, sample=False, count_marker=None, counter=count_serials,
                              error_marker=self.error)
        ws.send_json({"action": "connect", "ref": 0, "key": KEY})
        return ws

    def publisher_ready(self, ws: LightWS) -> bool:
        return ws.frames >= 1

    def acks(self, ws: LightWS) -> int | None:
        return ws.count

    def publishes(self, channel: str, first: int, n: int, t: float, ids: bool) -> bytes:
        if ids:
            return b"".join(text_frame(
                f'{{"action":"publish","ref":{i},"channel":"{channel}","name":"t",'
                f'"id":"m{i}","data":{{"i":{i},"t":{t!r}}}}}'.encode())
                for i in range(first, first + n))
        return b"".join(text_frame(
            f'{{"action":"publish","ref":{i},"channel":"{channel}","name":"t",'
            f'"data":{{"i":{i},"t":{t!r}}}}}'.encode())
            for i in range(first, first + n))

    def items(self, payload: bytes) -> list[Any]:
        obj = json.loads(payload)
        if obj.get("action") == "message":
            return [m["data"] for m in obj["messages"]]
        return []


class RtkitSseDialect(RtkitDialect):
    """rtkit's protocol with the subscribers on the SSE transport: the event stream read by
    :class:`lightsse.LightSSE`, ``connect`` and ``attach`` POSTed; publishers on WebSockets.
    The subscribers send nothing more, which is fine for a case shorter than the broker's
    silence limit for an SSE session (three heartbeat intervals, 45 s by default)."""

    name = "rtkit-sse"

    async def open_subscriber(self, url: str, channel: str, sample: bool,
                              on_payload: Callable[[Any, bytes], None]) -> Subscriber:
        sub = await open_light_sse(url, sample=sample, count_marker=None, counter=count_serials,
                                   on_payload=on_payload, error_marker=self.error)
        await sub.send_frames({"action": "connect", "ref": 0, "key": KEY},
                              {"action": "attach", "ref": 1, "channel": channel})
        return sub


#: The dialect of each kind of run (``fanout.py`` passes the kind).
DIALECTS: dict[str, Dialect] = {"raw": Dialect(), "rtkit": RtkitDialect(),
                                "rtkit-sse": RtkitSseDialect()}


# ------------------------------------------------------------------ flow control


class Group:
    """One publisher and the subscribers of its channel, under the in-flight bound."""

    def __init__(self, dialect: Dialect, channel: str, pub: LightWS, subs: list[Subscriber],
                 stats: Stats, *, window: int, ids: bool, rate: float | None,
                 limit: int | None) -> None:
        self.dialect, self.channel, self.pub, self.subs = dialect, channel, pub, subs
        self.stats, self.window, self.ids, self.rate, self.limit = stats, window, ids, rate, limit
        self.chunk = max(1, window // 8)
        self.published = 0
        self.threshold = 0  # top up once every subscriber has at least this many
        self.below = 0  # subscribers still under the threshold
        self.stopped = False
        self.drained = False
        self.started = 0.0
        for ws in subs:
            ws.on_progress = self.on_progress

    def on_progress(self, ws: Subscriber, before: int) -> None:
        after = ws.count
        self.stats.delivered += after - before
        if before < self.threshold <= after:
            self.below -= 1
            if self.below == 0:
                self.top_up()

    def start(self) -> None:
        self.started = now()
        self.top_up()
        if self.rate:
            self._tick()

    def _tick(self) -> None:
        if self.stopped:
            return
        self.top_up()
        assert self.rate
        due = self.started + self.published / self.rate
        asyncio.get_running_loop().call_at(max(due, time.monotonic() + 0.0005), self._tick)

    def stop(self) -> None:
        self.stopped = True
        self.top_up()

    def top_up(self) -> None:
        floor = min(ws.count for ws in self.subs)
        if not self.stopped:
            n = floor + self.window - self.published
            if self.limit is not None:
                n = min(n, self.limit - self.published)
            if self.rate:
                n = min(n, int((now() - self.started) * self.rate) + 1 - self.published)
            if n > 0:
                self.pub.write(self.dialect.publishes(self.channel, self.published, n, now(),
                                                      self.ids))
                self.published += n
            if self.limit is not None and self.published >= self.limit:
                self.stopped = True
        if self.stopped:
            target = self.published
        else:
            target = min(self.published,
                         max(floor + 1, self.published - self.window + self.chunk))
        self.threshold = target
        self.below = sum(1 for ws in self.subs if ws.count < target)
        if self.stopped and self.below == 0 and not self.drained:
            self.drained = True
            self.stats.drained += 1
            if self.stats.drained == self.stats.groups:
                self.stats.drained_at = now()
                self.stats.done.set()


class Rounds:
    """Reads in rounds: each event-loop iteration lasts at least ``period``, sleeping off the
    rest, so every subscriber finds several frames per read.

    Saturated, the generator's cost is per read (a system call, and the ACK it sends), hardly
    per byte: a raw relay writes one frame per message per subscriber, and reading each on its
    own would make the generator, not the server, the bottleneck. The period is a twentieth of
    the time a channel takes to publish its window (re-estimated every 0.1 s; at most 0.1 s;
    none under 0.2 ms): waiting so little for the reads, the publishers are held back by the
    in-flight bound as they would be by a generator that reads each frame at once. Off at a
    fixed publish rate, where every message is timed as soon as it arrives.
    """

    SHARE, MIN_PERIOD, MAX_PERIOD, EVERY = 0.05, 0.0002, 0.1, 0.1

    def __init__(self, groups: list[Group], window: int) -> None:
        self.groups, self.window = groups, window
        self.period = 0.0
        self.last = 0.0
        self.published = 0
        self.stopped = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(self._round)
        loop.call_later(self.EVERY, self._estimate)

    def _round(self) -> None:
        if self.stopped:
            return
        loop = asyncio.get_running_loop()
        if self.period < self.MIN_PERIOD:  # no rounds for now: look again after an estimate
            loop.call_later(self.EVERY, self._round)
            return
        wait = self.last + self.period - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last = time.monotonic()
        loop.call_soon(self._round)

    def _estimate(self) -> None:
        if self.stopped:
            return
        published = sum(g.published for g in self.groups)
        rate = (published - self.published) / self.EVERY / len(self.groups)
        self.published = published
        self.period = min(self.MAX_PERIOD, self.SHARE * self.window / rate) if rate else 0.0
        asyncio.get_running_loop().call_later(self.EVERY, self._estimate)


class LazyReaders:
    """At a fixed publish rate, the subscribers that only count are read every ``period``,
    their reading paused in between, while the sampled ones read each frame as it arrives:
    the generator then spends its time on the frames it times rather than on a hundred reads
    per message, and the latencies measure the server more than the generator. A tenth of
    them is read every tenth of the period, so that no burst of reads delays the others."""

    SLICES = 10

    def __init__(self, subs: list[Subscriber], period: float = 0.01) -> None:
        lazy = [ws for ws in subs if not ws.sample and ws.transport is not None]
        self.slices = [lazy[k::self.SLICES] for k in range(self.SLICES)]
        self.period = period
        self.turn = 0
        self.stopped = False

    def start(self) -> None:
        for ws in (ws for part in self.slices for ws in part):
            ws.transport.pause_reading()  # type: ignore[union-attr]
        self._tick()

    def _tick(self) -> None:
        # The previous slice was read by now: its reads, found ready in the iteration after
        # it was resumed, run before the timers of that iteration.
        for ws in self.slices[self.turn]:
            ws.transport.pause_reading()  # type: ignore[union-attr]
        if self.stopped:
            for ws in (ws for part in self.slices for ws in part):
                ws.transport.resume_reading()  # type: ignore[union-attr]
            return
        self.turn = (self.turn + 1) % self.SLICES
        for ws in self.slices[self.turn]:
            ws.transport.resume_reading()  # type: ignore[union-attr]
        asyncio.get_running_loop().call_later(self.period / self.SLICES, self._tick)


# ------------------------------------------------------------------ measuring


def proc_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_delay(pid: int | str) -> float:
    """Seconds process ``pid`` (its main thread) spent runnable but waiting for a CPU (Linux
    schedstat; NaN elsewhere): other processes on its CPU."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


@dataclass
class Snapshot:
    t: float
    delivered: int
    published: int
    server_cpu: float
    load_cpu: float
    server_wait: float
    load_wait: float


def snapshot(stats: Stats, groups: list[Group], server_pid: int) -> Snapshot:
    return Snapshot(now(), stats.delivered, sum(g.published for g in groups),
                    proc_cpu(server_pid), time.process_time(), run_delay(server_pid),
                    run_delay("self"))


async def _open_all(opens: list[Callable[[], Awaitable[C]]], ready: Callable[[C], bool],
                    what: str) -> list[C]:
    out: list[C] = []
    for start in range(0, len(opens), OPEN_BATCH):
        out.extend(await asyncio.gather(*(f() for f in opens[start:start + OPEN_BATCH])))
    deadline = now() + READY_TIMEOUT
    while not all(ready(ws) for ws in out):
        failed = [ws for ws in out if ws.errors or ws.closed.done()]
        if failed:
            raise RuntimeError(f"a {what} was refused: {failed[0].first_error[:200]!r}")
        if now() > deadline:
            raise RuntimeError(f"{what}s not ready after {READY_TIMEOUT:.0f} s")
        await asyncio.sleep(0.01)
    return out


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    dialect = DIALECTS[spec["kind"]]
    url, n, channels = spec["url"], spec["subscribers"], spec["channels"]
    names = ["bench"] if channels == 1 else [f"bench-{c}" for c in range(channels)]
    stats = Stats(groups=channels)

    def on_payload(ws: Subscriber, payload: bytes) -> None:
        t = now()
        items = dialect.items(payload)
        ws.count += len(items)
        if stats.recording:
            stats.latencies.extend(t - d["t"] for d in items)

    setup_started = now()
    subs = await _open_all(
        [partial(dialect.open_subscriber, url, ch, i < spec["samples"], on_payload)
         for ch in names for i in range(n)],
        dialect.subscriber_ready, "subscriber")
    pubs = await _open_all([partial(dialect.open_publisher, url, ch) for ch in names],
                           dialect.publisher_ready, "publisher")
    for ws in [*subs, *pubs]:
        ws.count = 0  # replies to the set-up ('attached' holds a serial, 'ok' is a frame)
    for ws in subs:  # from now on a miscount or a close shows a subscriber's trouble
        ws.error_marker = None
    groups = [Group(dialect, ch, pubs[c], list(subs[c * n:(c + 1) * n]), stats,
                    window=spec["window"], ids=spec["ids"], rate=spec["rate"],
                    limit=spec["messages"] or None)
              for c, ch in enumerate(names)]
    setup = now() - setup_started

    pid = spec["server_pid"]
    first = snapshot(stats, groups, pid)
    rounds = Rounds(groups, spec["window"])
    lazy = LazyReaders(subs)
    if spec["rate"]:
        lazy.start()
    else:
        rounds.start()
    for g in groups:
        g.start()
    problems: list[str] = []
    if spec["messages"]:  # a fixed count: from the first publish to the last delivery
        a, stats.recording = first, True
        try:
            await asyncio.wait_for(stats.done.wait(), 60 + spec["messages"] / 1000)
        except TimeoutError:
            problems.append("timed out before every message was delivered")
        b = snapshot(stats, groups, pid)
        if stats.done.is_set():
            b.t = stats.drained_at
    else:  # a warm-up, then a steady window
        await asyncio.sleep(spec["warmup"])
        a = snapshot(stats, groups, pid)
        if spec["profile"]:
            os.kill(pid, signal.SIGUSR1)
        stats.recording = True
        await asyncio.sleep(spec["duration"])
        stats.recording = False
        b = snapshot(stats, groups, pid)
        if spec["profile"]:
            os.kill(pid, signal.SIGUSR2)
        lazy.stopped = True
        for g in groups:
            g.stop()
        try:
            await asyncio.wait_for(stats.done.wait(), DRAIN_TIMEOUT)
        except TimeoutError:
            problems.append(f"{stats.groups - stats.drained} channel(s) never drained")
    stats.recording = False
    rounds.stopped = True

    wrong = sum(1 for g in groups for ws in g.subs if ws.count != g.published)
    if wrong:
        problems.append(f"{wrong} subscriber(s) did not receive exactly what was published")
    errors = [ws for ws in [*subs, *pubs] if ws.errors]
    if errors:
        problems.append(f"{len(errors)} connection(s) got errors, e.g. "
                        f"{errors[0].first_error[:160].decode(errors='replace')}")
    closed = sum(1 for ws in [*subs, *pubs] if ws.closed.done())
    if closed:
        problems.append(f"{closed} connection(s) closed by the server")
    deadline = now() + 2.0  # acks and deliveries travel apart: give the acks a moment
    while any(dialect.acks(g.pub) not in (None, g.published) for g in groups) \
            and now() < deadline and not problems:
        await asyncio.sleep(0.01)
    unacked = sum(g.published - (acks if (acks := dialect.acks(g.pub)) is not None
                                 else g.published) for g in groups)
    if unacked:
        problems.append(f"{unacked} publish(es) never acked")
    for ws in [*subs, *pubs]:
        ws.close()

    elapsed = b.t - a.t
    if elapsed < 0.5:  # CPU time is counted in ticks of 10 ms: too coarse for a short run
        for snap in (a, b):
            snap.server_cpu = snap.load_cpu = snap.server_wait = snap.load_wait = float("nan")
    lat = sorted(stats.latencies)
    return {
        "elapsed": elapsed,
        "setup": setup,
        "published": b.published - a.published,
        "delivered": b.delivered - a.delivered,
        "rate": (b.delivered - a.delivered) / elapsed,
        "pub_rate": (b.published - a.published) / elapsed,
        "server_cpu": (b.server_cpu - a.server_cpu) / elapsed,
        "load_cpu": (b.load_cpu - a.load_cpu) / elapsed,
        "server_wait": (b.server_wait - a.server_wait) / elapsed,
        "load_wait": (b.load_wait - a.load_wait) / elapsed,
        "p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
        "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000 if lat else float("nan"),
        "samples": len(lat),
        "problems": problems,
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {spec["cpu"]})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
