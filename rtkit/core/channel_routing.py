"""Which subscriptions of a client's channel get which messages, sans I/O.

Part of :class:`~rtkit.core.channel_state.ChannelCore`: the channel decides what is
delivered (in order, once); :class:`Routing` hands it to the subscriptions that should see
it. Usually that is every live subscription, in one
:class:`~rtkit.core.client_events.Deliver`. A subscription made with ``rewind`` on a
channel that already delivers gets its own replay (:class:`Replay`): the replayed messages
go to it only, and the live messages it already got through that replay (it is *ahead*,
or was *routed* them) are not delivered to it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rtkit.core.client_events import Deliver, Output
from rtkit.core.continuity import Tracker
from rtkit.core.frames import Message

Emit = Callable[[Output], None]


@dataclass(slots=True)
class Sub:
    id: int
    rewind: int = 0
    #: Receives live deliveries (False while waiting for its own rewind replay).
    live: bool = True


@dataclass(slots=True)
class Replay:
    """Messages up to ``until`` are a rewind replay for the subscriptions in ``start``
    (each gets those after its start serial), not live traffic."""

    until: int
    start: dict[int, int] = field(default_factory=dict)


class Routing:
    """The subscriptions of channel ``name`` that receive its messages, and how."""

    def __init__(self, name: str, tracker: Tracker, emit: Emit, out: list[Output]) -> None:
        self.name = name
        self.tracker = tracker
        self._emit = emit
        #: The outputs ``emit`` appends to: consecutive deliveries to the same subscriptions
        #: are merged into the last one while it is still there.
        self._out = out
        #: The live subscriptions' ids.
        self.live: tuple[int, ...] = ()
        #: Subscriptions whose own rewind replay went further than the channel's position
        #: (a gap being repaired): sub id -> the serial they have up to.
        self.ahead: dict[int, int] = {}
        #: Ids each rewinding subscription got through its own replay (at most its rewind).
        self.routed: dict[int, set[str]] = {}

    def relive(self, subs: dict[int, Sub]) -> None:
        """The subscriptions (or which of them are live) changed."""
        self.live = tuple(s.id for s in subs.values() if s.live)

    def drop(self, sub_id: int) -> None:
        """A subscription ends: forget what it was routed."""
        self.ahead.pop(sub_id, None)
        self.routed.pop(sub_id, None)

    def rewind(self, subs: dict[int, Sub], sub_ids: tuple[int, ...], serial: int,
               limit: int, attach_rewind: int | None) -> Replay | None:
        """After a fresh or rewind attach announcing ``serial`` (``limit``: the rewind it
        asked for; ``attach_rewind``: for a fresh attach, the rewind asked with
        ``attach()``): which of ``sub_ids`` get which replayed messages. They are live from
        now on."""
        start: dict[int, int] = {}
        for sub_id in sub_ids:
            sub = subs.get(sub_id)
            if sub is None:
                continue
            wanted = sub.rewind if attach_rewind is None else max(sub.rewind, attach_rewind)
            rewind = min(wanted, limit)
            if rewind:
                start[sub_id] = serial - rewind
            if serial > self.tracker.serial:
                self.ahead[sub_id] = serial  # live messages up to here come as replay
            sub.live = True
        self.relive(subs)
        return Replay(serial, start) if start else None

    def covers(self, to_serial: int) -> bool:
        """Whether every live subscription has the messages up to ``to_serial`` already
        (through its own replay)."""
        ahead = self.ahead
        return bool(self.live) and all(ahead.get(sub, 0) >= to_serial for sub in self.live)

    def flush(self, out: Sequence[Message]) -> None:
        """Hand messages the channel delivers (in order, once) to its live subscriptions."""
        if not out or not self.live:
            return
        ahead, routed = self.ahead, self.routed
        if not ahead and not routed:
            self.deliver(out, self.live)
            return
        behind = tuple(sub for sub in self.live if sub not in ahead and sub not in routed)
        if behind:
            self.deliver(out, behind)
        for sub in self.live:
            if sub not in ahead and sub not in routed:
                continue
            upto, had = ahead.get(sub, 0), routed.get(sub, set())
            newer = [m for m in out if m.serial > upto and m.id not in had]
            if newer:
                self.deliver(newer, (sub,))
            if sub in ahead and self.tracker.serial >= upto:
                del ahead[sub]

    def deliver(self, messages: Sequence[Message], subs: tuple[int, ...]) -> None:
        """Hand ``messages`` to ``subs``: added to the last output when that is a delivery
        to the same subscriptions (frames read together make one event), else a new one."""
        out = self._out
        if out:
            last = out[-1]
            if type(last) is Deliver and last.channel == self.name and last.subs == subs:
                last.messages.extend(messages)
                return
        self._emit(Deliver(self.name, list(messages), subs))

    def route(self, replay: Replay, msg: Message) -> None:
        """A message of a rewind replay: to the subscriptions it is for."""
        targets = tuple(sub for sub, after in replay.start.items() if msg.serial > after)
        for sub in targets:  # (a copy of it in a new epoch is not delivered to it again)
            self.routed.setdefault(sub, set()).add(msg.id)
        if targets:
            self.deliver((msg,), targets)
