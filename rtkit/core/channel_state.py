"""One channel of a client, sans I/O: attach state, subscriptions, continuity and repair.

The application says what it *wants* (subscriptions, ``attach()``, ``detach()``); the
channel reconciles that with what the broker has, one attach or detach in flight at a time,
so any interleaving of subscribes, unsubscribes, reconnects and renewals composes:

* A fresh attach starts after the serial the broker announces, or ``rewind`` messages
  before it; a resume attach (after a reconnect) continues after the last serial delivered.
* A subscription made with ``rewind`` on a channel that already delivers gets its own
  replay: the channel attaches again with ``rewind`` and routes the replayed messages to
  that subscription only; the others see nothing twice.
* A gap on a live link is repaired by attaching again from the last serial delivered
  (the broker replays what is missing); if the link drops meanwhile, the resume repairs it.
* An attach the broker refuses (capability, limits) or a detach it imposes leaves the
  channel ``failed`` with the error: it stops retrying, the connection carries on.

Which subscriptions get which of the messages delivered is decided by the channel's
:class:`~rtkit.core.channel_routing.Routing`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.channel_routing import Replay, Routing, Sub
from rtkit.core.client_events import ChannelChanged, Lost, OpDone, OpFailed, Output
from rtkit.core.continuity import ContinuityLoss, Tracker, Verdict
from rtkit.core.frames import Message
from rtkit.core.states import (
    CHANNEL_TRANSITIONS,
    ChannelState,
    ChannelTrigger,
    channel_transition,
)
from rtkit.errors import RtkitError

CS = ChannelState
CT = ChannelTrigger
#: Codes after which an attach is worth retrying soon instead of failing the channel.
TRANSIENT_CODES = frozenset({42900, 50000, 50001})
#: Repairs from one position before a gap is declared lost (an undecodable message would
#: otherwise be asked for again and again).
REPAIR_TRIES = 3
#: Attach kinds: a first attach, one that resumes a position, one for a rewinding
#: subscription, one that repairs a gap on a live link.
FRESH, RESUME, REWIND, REPAIR = "fresh", "resume", "rewind", "repair"

__all__ = [
    "FRESH", "REPAIR", "REPAIR_TRIES", "RESUME", "REWIND", "TRANSIENT_CODES", "ChannelCore",
    "Emit", "Inflight", "Replay", "SendRequest", "Sub",
]

SendRequest = Callable[[str, dict[str, Any]], fr.Ref]
Emit = Callable[[Output], None]


@dataclass(frozen=True, slots=True)
class Inflight:
    """The one attach or detach request in flight, and what it asked for."""

    ref: fr.Ref
    kind: str
    rewind: int = 0
    subs: tuple[int, ...] = ()


class ChannelCore:
    """The protocol state of one channel. ``send(kind, fields)`` sends an attach or detach
    request for this channel and returns its ref; ``emit`` hands outputs to the client."""

    def __init__(self, name: str, send: SendRequest, emit: Emit,
                 out: list[Output] | None = None) -> None:
        self.name = name
        self.state = CS.DETACHED
        self.error: RtkitError | None = None
        self.tracker = Tracker(name)
        self.subs: dict[int, Sub] = {}
        self.explicit = False  # attach() was called
        #: Restored from a recovery key: wanted until the application decides (its first
        #: subscription, attach or detach).
        self.restored = False
        self.held = False  # detach() was called: stay detached until asked again
        self.retry_failed = False  # the application asked again after a failure
        self.attach_rewind = 0  # rewind asked with attach()
        self.inflight: Inflight | None = None
        #: Operations waiting for the channel to be attached: (op, the subscription it
        #: is for, which must be live, or None).
        self.attach_waiters: list[tuple[int, int | None]] = []
        self.detach_waiters: list[int] = []
        self.replay: Replay | None = None
        self.repairing = False
        self.repair_from = -1  # the serial the last repairs resumed from
        self.repair_tries = 0  # how many repairs from there did not fill the gap
        self.replay_until = 0  # on a resume, serials up to this were replayed
        self.replayed = 0
        self.retry_at: float | None = None
        #: Whether (and with what data) this client entered presence: re-entered after
        #: every reconnect.
        self.entered: tuple[bool, Any] = (False, None)
        self._send = send
        self._emit = emit
        #: ``out``, when given: the outputs ``emit`` appends to (see :class:`Routing`).
        self.routing = Routing(name, self.tracker, emit, out if out is not None else [])
        self._flush = self.routing.flush

    # ---------------------------------------------------------------- intent

    @property
    def wanted(self) -> bool:
        return not self.held and (self.explicit or self.restored or bool(self.subs))

    def subscribe(self, sub_id: int, rewind: int, op: int | None) -> None:
        """Add a subscription; ``op`` completes once the channel (and any replay the
        subscription asked for) is attached."""
        self.held = False
        self.restored = False
        self.retry_failed = True
        # Before the channel's first attach, a rewind rides on that attach; afterwards the
        # subscription waits for its own replay.
        fresh = (self.tracker.epoch is None and self.inflight is None
                 and self.state in (CS.DETACHED, CS.FAILED))
        sub = Sub(sub_id, rewind, live=not rewind or fresh)
        self.subs[sub_id] = sub
        self.routing.relive(self.subs)
        if op is not None:
            if self.state is CS.ATTACHED and sub.live:
                self._emit(OpDone(op))
            else:
                self.attach_waiters.append((op, sub_id))

    def unsubscribe(self, sub_id: int) -> None:
        self.routing.drop(sub_id)
        if self.subs.pop(sub_id, None) is not None:
            self.routing.relive(self.subs)
            if self.replay is not None:
                self.replay.start.pop(sub_id, None)

    def attach(self, op: int, rewind: int) -> None:
        self.held = False
        self.restored = False
        self.explicit = True
        self.retry_failed = True
        if self.state is CS.ATTACHED:
            # Already attached: its subscriptions see everything from here; a rewind only
            # applies to the subscriptions present when the channel first attaches.
            self._emit(OpDone(op))
            return
        if rewind and self.tracker.epoch is None:
            self.attach_rewind = max(self.attach_rewind, rewind)
        self.attach_waiters.append((op, None))

    def detach(self, op: int) -> None:
        self.explicit = self.restored = False
        self.held = True
        if self.state in (CS.DETACHED, CS.FAILED) and self.inflight is None:
            self._forget_position()
            self._emit(OpDone(op))
        else:
            self.detach_waiters.append(op)

    # ---------------------------------------------------------------- reconciling

    def reconcile(self, connected: bool, now: float) -> None:
        """Send the one request that moves the broker's state towards the wanted one."""
        if not connected or self.inflight is not None:
            return
        if self.retry_at is not None and now < self.retry_at:
            return
        if not self.wanted:
            if self.state is CS.ATTACHED:
                self._request(CT.DETACH, "detach", {})
            elif self.detach_waiters and self.state in (CS.DETACHED, CS.FAILED):
                self._settle_detach()
            return
        if self.state is CS.FAILED and not self.retry_failed:
            return
        if self.state in (CS.DETACHED, CS.FAILED):
            point = self.tracker.resume_point
            if point is not None:
                self._request(CT.ATTACH, RESUME, {"from_serial": point,
                                                  "epoch": self.tracker.epoch})
            else:
                rewind = max([self.attach_rewind,
                              *(s.rewind for s in self.subs.values() if s.live)])
                self._request(CT.ATTACH, FRESH, {"rewind": rewind or None}, rewind,
                              tuple(s.id for s in self.subs.values() if s.live))
        elif self.state is CS.ATTACHED:
            if self.repairing:
                if self.repair_from == self.tracker.serial:
                    self.repair_tries += 1
                else:
                    self.repair_from, self.repair_tries = self.tracker.serial, 1
                self._request(None, REPAIR, {"from_serial": self.tracker.serial,
                                             "epoch": self.tracker.epoch})
            else:
                waiting = [s for s in self.subs.values() if not s.live]
                if waiting:
                    rewind = max(s.rewind for s in waiting)
                    self._request(None, REWIND, {"rewind": rewind}, rewind,
                                  tuple(s.id for s in waiting))

    def _request(self, trigger: ChannelTrigger | None, kind: str, fields: dict[str, Any],
                 rewind: int = 0, subs: tuple[int, ...] = ()) -> None:
        action = "detach" if kind == "detach" else "attach"
        ref = self._send(action, fields)
        self.inflight = Inflight(ref, kind, rewind, subs)
        if trigger is not None:
            self._move(trigger)

    def _move(self, trigger: ChannelTrigger, error: RtkitError | None = None) -> None:
        previous = self.state
        self.state = channel_transition(previous, trigger)
        if self.state is not previous:
            self.error = error if self.state is CS.FAILED else None
            self._emit(ChannelChanged(self.name, previous, self.state, error))

    # ---------------------------------------------------------------- replies

    def on_attached(self, frame: fr.Attached, ref: fr.Ref, now: float) -> None:
        """The broker answered our attach ``ref``."""
        inflight = self.inflight
        if inflight is None or inflight.ref != ref:
            return  # not the request in flight (cannot happen with one link's ordering)
        self.inflight = None
        self.replay = None
        self.retry_at = None
        self.retry_failed = False
        kind = inflight.kind
        resuming = kind in (RESUME, REPAIR)
        if kind == REWIND:
            # The channel already delivers: its position stays. Live messages up to the
            # announced serial were sent before this reply; if some did not arrive, repair.
            loss = None
            if frame.epoch != self.tracker.epoch or frame.serial > self.tracker.serial:
                self.repairing = True
        else:
            loss = self.tracker.attached(frame, resuming, now)
            if loss is not None:
                self.routing.ahead.clear()  # the position moved: everyone continues from it
        if kind == REPAIR:
            self.repairing = False
        if loss is not None and loss.epoch != frame.epoch and frame.serial > 0:
            # The channel was recreated while we were away, and has messages already: fetch
            # them from its beginning (a repair from serial 0 of the new epoch).
            self.repairing = True
        if resuming:
            self.replay_until = frame.serial
        else:
            self._route_rewind(frame.serial, inflight)
        if kind == FRESH:
            self.attach_rewind = 0
        self._move(CT.ATTACHED)
        if loss is not None:
            self.report(loss)
        waiting = []
        for op, sub_id in self.attach_waiters:
            sub = self.subs.get(sub_id) if sub_id is not None else None
            if sub is not None and not sub.live:
                waiting.append((op, sub_id))  # its own replay is still to come
            else:
                self._emit(OpDone(op))
        self.attach_waiters = waiting

    def _route_rewind(self, serial: int, inflight: Inflight) -> None:
        """After a fresh or rewind attach: which subscriptions get which replayed messages."""
        replay = self.routing.rewind(
            self.subs, inflight.subs, serial, inflight.rewind,
            self.attach_rewind if inflight.kind == FRESH else None)
        if replay is not None:
            self.replay = replay

    def on_detached(self, error: RtkitError | None, solicited: bool) -> None:
        """The broker detached the channel: as asked, or on its own (with an error)."""
        if solicited:
            self.inflight = None
            self.replay = None
            self.repairing = False
            self._forget_position()
            self._move(CT.DETACHED)
            self._settle_detach()
            return
        self.inflight = None
        self.replay = None
        self.repairing = False
        self._fail(error or RtkitError("the broker detached the channel", code=40000))

    def on_refused(self, ref: fr.Ref, error: RtkitError, now: float) -> None:
        """The broker refused our attach or detach request ``ref``."""
        if self.inflight is None or self.inflight.ref != ref:
            return  # a request we no longer wait for (the link it was on is gone)
        kind = self.inflight.kind
        self.inflight = None
        if kind == "detach":  # cannot detach: it is gone anyway
            self._forget_position()
            self._move(CT.DETACHED)
            self._settle_detach()
            return
        if error.code in TRANSIENT_CODES:
            self.retry_at = now + 1.0
            if self.state is CS.ATTACHING:
                self._move(CT.DETACHED)
            return
        self.repairing = False
        self._fail(error)

    def _fail(self, error: RtkitError) -> None:
        self.retry_failed = False
        if CT.REFUSED not in CHANNEL_TRANSITIONS[self.state]:
            return  # detached (or failed) already: nothing more to end
        self._move(CT.REFUSED, error)
        waiters, self.attach_waiters = self.attach_waiters, []
        for op, _ in waiters:
            self._emit(OpFailed(op, error))
        self._settle_detach()

    def _settle_detach(self) -> None:
        waiters, self.detach_waiters = self.detach_waiters, []
        for op in waiters:
            self._emit(OpDone(op))

    def link_lost(self) -> None:
        """The link went down: nothing is attached any more; wanted channels will resume."""
        self.inflight = None
        self.replay = None
        self.repairing = False
        self.retry_at = None
        self._move(CT.LINK_LOST)
        if not self.wanted:
            self._forget_position()
            self._settle_detach()

    # ---------------------------------------------------------------- deliveries

    def deliver(self, messages: Sequence[Message], now: float) -> None:
        """Messages arrived on the link for this channel, in serial order."""
        if self.state is not CS.ATTACHED:
            return  # not ours any more
        tracker = self.tracker
        if self.replay is None and not self.repairing:
            # The common case: the next serials, in order, none seen before: one batch.
            run = tracker.accept_run(messages)
            if run:
                first = messages[0].serial
                if first <= self.replay_until:
                    self.replayed += min(run, self.replay_until - first + 1)
                if run == len(messages):
                    self._flush(messages)
                    return
                self._flush(messages[:run])
                messages = messages[run:]
        replay = self.replay
        out: list[Message] = []
        for msg in messages:
            if replay is not None:
                if msg.serial <= replay.until:
                    self.routing.route(replay, msg)  # a rewind replay, for its subscriptions
                    continue
                self.replay = replay = None
            if self.repairing:
                continue  # the repair's replay brings these again, in order
            verdict = tracker.check(msg)
            if verdict is Verdict.GAP:
                if self.repair_from != tracker.serial or self.repair_tries < REPAIR_TRIES:
                    self._flush(out)
                    out = []
                    self.repairing = True  # attach again from the last serial delivered
                    continue
                # The last repair from here did not fill it (an undecodable message, say):
                # it never will. Report it, and go on with this message.
                self._flush(out)
                out = []
                self.skip(msg.serial - 1, "a gap on the live link could not be repaired",
                          now)
                verdict = tracker.check(msg)
            if verdict is Verdict.DELIVER:
                tracker.accept(msg)
                out.append(msg)
                if msg.serial <= self.replay_until:
                    self.replayed += 1
            else:  # DUPLICATE, or SEEN: a copy (new serial) of a message delivered
                tracker.duplicates += 1
                if verdict is Verdict.SEEN:
                    tracker.skip_to(msg.serial)
        self._flush(out)

    def skip(self, to_serial: int, reason: str, now: float) -> None:
        """Messages up to ``to_serial`` will never come: report them lost, move past them."""
        t = self.tracker
        if to_serial <= t.serial:
            return
        if self.routing.covers(to_serial):
            t.skip_to(to_serial)  # every subscription has them already (its own replay)
            return
        self.report(ContinuityLoss(self.name, t.serial + 1, t.serial, reason, now, to_serial,
                                   t.epoch))
        t.skip_to(to_serial)

    def report(self, loss: ContinuityLoss) -> None:
        self._emit(Lost(loss))

    def _forget_position(self) -> None:
        self.tracker.reset()
        self.routing.ahead.clear()

    def forget(self, op: int) -> None:
        """``op`` timed out: stop waiting for it."""
        self.attach_waiters = [(o, s) for o, s in self.attach_waiters if o != op]
        if op in self.detach_waiters:
            self.detach_waiters.remove(op)

    # ---------------------------------------------------------------- closing

    def clear(self) -> list[int]:
        """The client closed: forget subscriptions and intent; returns waiting ops."""
        ops = [op for op, _ in self.attach_waiters] + self.detach_waiters
        self.attach_waiters, self.detach_waiters = [], []
        self.subs.clear()
        self.routing.relive(self.subs)
        self.explicit = self.held = self.repairing = self.restored = False
        self.inflight = self.replay = None
        self.entered = (False, None)
        self._move(CT.LINK_LOST)
        return ops
