"""Replays and long answers, sent in frames of at most ``max_frame_size`` bytes as the
connection drains.

A client can ask for far more than one frame holds: a resume or ``rewind`` replays a channel's
stored messages, ``history`` and presence ``get`` list many items. Each becomes a *stream* on
the session: :meth:`Streamer.pump` writes the next frames, up to a byte budget, and the driver
calls it again once the connection's outbound buffer has drained. Memory held for a client is
therefore bounded by its buffer, whatever it asks for. (A driver that does not set
``Session.flow_control`` gets every stream written out at once, still in bounded frames.)

A replay ends by making the session a live subscriber of its channel: messages published
while it was replaying are read from the channel's history, so the client receives every
serial once and in order, then live ones.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from rtkit.core.channels import Channel
from rtkit.core.config import BrokerConfig
from rtkit.core.frames import PresenceMember, dumps, nbytes
from rtkit.core.session import Outbox, Session
from rtkit.core.store import FRAGMENT, SIZE


class Replay:
    """Stored messages of ``channel`` from serial ``next`` on, then live delivery."""

    __slots__ = ("channel", "next")

    def __init__(self, channel: Channel, next_serial: int) -> None:
        self.channel = channel
        self.next = next_serial


class HistoryAnswer:
    """``history_result`` frames: up to ``remaining`` messages with serials in [next, last]."""

    __slots__ = ("channel", "last", "next", "prefix", "remaining")

    def __init__(self, ref_json: str, channel: Channel | None, name_json: str,
                 first: int, last: int, limit: int) -> None:
        self.prefix = (f'{{"action":"history_result","ref":{ref_json},"channel":{name_json},'
                       f'"messages":[')
        self.channel = channel
        self.next, self.last, self.remaining = first, last, limit


class PresenceAnswer:
    """``presence_result`` frames listing a snapshot of a channel's members."""

    __slots__ = ("members", "prefix")

    def __init__(self, ref_json: str, name_json: str, members: list[PresenceMember]) -> None:
        self.prefix = (f'{{"action":"presence_result","ref":{ref_json},"channel":{name_json},'
                       f'"members":[')
        self.members = deque(members)


class Deferred:
    """A request that waits for something from outside the broker (a backplane: a channel
    to be followed, stored messages to be loaded). It holds its session's place like a
    replay: the frames after it are read once it has run. ``run`` is called when it is
    first in line and ``ready``; it returns False to wait again (it then sets ``ready``
    back to False and arranges to be woken)."""

    __slots__ = ("channel", "ready", "run")

    def __init__(self, channel: Channel | None, run: Callable[[Deferred], bool],
                 ready: bool = False) -> None:
        self.channel = channel
        self.ready = ready
        self.run = run


Stream = Replay | HistoryAnswer | PresenceAnswer | Deferred


def stream_channel(stream: Stream) -> Channel | None:
    """The channel a stream keeps in use (counted in ``Channel.attaching``)."""
    if isinstance(stream, PresenceAnswer):
        return None
    return stream.channel
_MORE = '],"more":true}'
_LAST = "]}"


class Streamer:
    """Starts, pumps and cancels the streams of sessions."""

    def __init__(self, config: BrokerConfig, outbox: Outbox, stats: dict[str, int],
                 seal: Callable[[Channel], None]) -> None:
        self.limit = config.max_frame_size
        self.outbox = outbox
        self.stats = stats
        self.seal = seal

    def start(self, s: Session, stream: Stream) -> None:
        if s.streams is None:
            s.streams = deque()
        s.streams.append(stream)
        owner = stream_channel(stream)
        if owner is not None:
            owner.attaching += 1
        if not s.flow_control:
            self.pump(s, math.inf)

    def pump(self, s: Session, budget: float) -> bool:
        """Write ``s``'s pending streams, about ``budget`` bytes (at least one frame);
        returns whether some remain."""
        streams = s.streams
        while streams and budget > 0 and not s.closed:
            stream = streams[0]
            if isinstance(stream, Deferred):
                if not stream.ready:
                    break  # woken later (see Deferred)
                streams.popleft()
                if not stream.run(stream):  # waits again, first in line
                    streams.appendleft(stream)
                    break
                if stream.channel is not None:
                    stream.channel.attaching -= 1
                continue
            if isinstance(stream, Replay):
                spent, done = self._replay(s, stream, budget)
            else:
                spent, done = self._answer(s, stream, budget)
            budget -= spent
            if done:
                streams.popleft()
                owner = stream_channel(stream)
                if owner is not None:
                    owner.attaching -= 1
        if not streams:
            s.streams = None
        return s.streams is not None

    def cancel(self, s: Session, channel: Channel | None = None) -> list[Channel]:
        """Drop ``s``'s replays of ``channel`` (all its streams if None); returns the channels
        whose replay was dropped (they may now be idle)."""
        if not s.streams:
            return []
        keep: deque[Stream] = deque()
        dropped = []
        for stream in s.streams:
            if channel is None or (isinstance(stream, Replay) and stream.channel is channel):
                if isinstance(stream, Deferred):
                    stream.ready = False  # never runs
                owner = stream_channel(stream)
                if owner is not None:
                    owner.attaching -= 1
                    dropped.append(owner)
            else:
                keep.append(stream)
        s.streams = keep or None
        return dropped

    def replaying(self, s: Session, channel: Channel) -> bool:
        return bool(s.streams) and any(
            isinstance(st, Replay) and st.channel is channel for st in s.streams or ())

    # -- one stream

    def _replay(self, s: Session, r: Replay, budget: float) -> tuple[int, bool]:
        ch = r.channel
        if ch.dead:
            return 0, True
        store, spent = ch.store, 0
        room = self.limit - ch.envelope
        while spent < budget:
            if r.next > ch.serial:  # caught up: from now on the session gets live batches
                self.seal(ch)
                ch.add_subscriber(s)
                return spent, True
            first = store.first_serial()
            if first is None or r.next < first:
                # Evicted meanwhile (a budget): carry on after the gap, which the client sees.
                r.next = ch.serial + 1 if first is None else first
                continue
            batch: list[str] = []
            size = 0
            while r.next <= ch.serial:
                rec = store.get(r.next)
                if rec is None or (batch and size + rec[SIZE] + 1 > room):
                    break
                batch.append(rec[FRAGMENT])
                size += rec[SIZE] + 1
                r.next += 1
            if not batch:
                r.next = ch.serial + 1
                continue
            self.outbox.text((s,), f"{ch.prefix}{','.join(batch)}]}}")
            self.stats["replayed"] += len(batch)
            self.stats["delivered_frames"] += 1
            spent += size + ch.envelope
        return spent, False

    def _answer(self, s: Session, a: HistoryAnswer | PresenceAnswer,
                budget: float) -> tuple[int, bool]:
        spent = 0
        while True:
            items, size, done = self._fill(a, self.limit - nbytes(a.prefix) - len(_MORE))
            text = f"{a.prefix}{','.join(items)}{_LAST if done else _MORE}"
            self.outbox.text((s,), text)
            spent += size + len(a.prefix)
            if done:
                return spent, True
            if spent >= budget:
                return spent, False

    def _fill(self, a: HistoryAnswer | PresenceAnswer, room: int) -> tuple[list[str], int, bool]:
        """The items of the next frame, their bytes, and whether they are the last ones."""
        items: list[str] = []
        size = 0
        if isinstance(a, PresenceAnswer):
            while a.members:
                text = dumps(a.members[0].to_wire())
                n = nbytes(text)
                if items and size + n + 1 > room:
                    return items, size, False
                a.members.popleft()
                items.append(text)
                size += n + 1
            return items, size, True
        store = a.channel.store if a.channel is not None and not a.channel.dead else None
        while store is not None and a.remaining > 0 and a.next <= a.last:
            first = store.first_serial()
            if first is None:
                break
            a.next = max(a.next, first)
            rec = store.get(a.next)
            if rec is None:
                break
            if items and size + rec[SIZE] + 1 > room:
                return items, size, False
            items.append(rec[FRAGMENT])
            size += rec[SIZE] + 1
            a.next += 1
            a.remaining -= 1
        return items, size, True
