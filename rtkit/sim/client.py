"""A simulated client: the real :class:`~rtkit.core.client.ClientCore`, driven by the virtual
clock and the simulated network, with a record of everything the application saw."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rtkit.aio.link import error_from_close
from rtkit.core import client_events as ev
from rtkit.core.client import ClientConfig, ClientCore
from rtkit.core.continuity import ContinuityLoss
from rtkit.core.recovery import RecoveryKey
from rtkit.core.states import ConnectionState, StateChange
from rtkit.core.timing import Backoff
from rtkit.errors import ConnectionFailed, RtkitError
from rtkit.sim.broker import WALL_START
from rtkit.sim.network import Link

if TYPE_CHECKING:
    from rtkit.sim.world import Simulation

S = ConnectionState


@dataclass
class Published:
    """One publish and what became of it."""

    channel: str
    id: str
    at: float
    serial: int | None = None
    epoch: str | None = None
    acked_at: float | None = None
    error: RtkitError | None = None


@dataclass
class SubRecord:
    """One subscription: when it was made, attached, and removed."""

    id: int
    channel: str
    made: float
    rewind: int = 0
    attached_at: float | None = None
    removed_at: float | None = None
    error: RtkitError | None = None
    #: The channel's position (epoch, serial) when the subscription was attached: later
    #: messages are owed to it.
    base: tuple[str | None, int] | None = None


@dataclass
class Entry:
    """One line of a channel's timeline as the application saw it."""

    at: float
    messages: tuple[tuple[str | None, int, str], ...] = ()  # (epoch, serial, id)
    subs: tuple[int, ...] = ()
    loss: ContinuityLoss | None = None
    #: For a loss: what the broker held then (its epoch, its oldest stored serial), and
    #: whether frames to this client had been lost by the network so far.
    broker: tuple[str | None, int | None, bool] | None = None


@dataclass
class Record:
    states: list[StateChange] = field(default_factory=list)
    published: dict[str, Published] = field(default_factory=dict)
    subs: dict[int, SubRecord] = field(default_factory=dict)
    timeline: dict[str, list[Entry]] = field(default_factory=dict)
    problems: list[RtkitError] = field(default_factory=list)
    failed_channels: dict[str, float] = field(default_factory=dict)
    #: Other operations: op -> (kind, started, outcome: the value or error; None: pending).
    ops: dict[int, tuple[str, float, Any]] = field(default_factory=dict)


class SimClient:
    """One client in a :class:`~rtkit.sim.Simulation`. Its methods are what an application
    does; outcomes are recorded in :attr:`record` (and delivered to ``on_message``)."""

    def __init__(self, sim: Simulation, name: str, *, client_id: str | None = None,
                 token_ttl: float | None = None, recover: str | None = None,
                 clock_skew: float = 0.0, auth_delay: float = 0.01,
                 **options: Any) -> None:
        self.sim = sim
        self.name = name
        self.client_id = client_id
        self.token_ttl = token_ttl
        self.auth_delay = auth_delay
        self.auth_failures = 0  # the next N token fetches fail
        self.record = Record()
        self.on_message: Callable[[str, Any], None] | None = None
        options.setdefault("backoff", Backoff(base=0.5, cap=2.0))
        creds: dict[str, Any] = {"renewable": True} if token_ttl is not None else \
            {"key": sim.root.value}
        config = ClientConfig(url="sim://broker", client_id=client_id, **creds, **options)
        self.core = ClientCore(config, sim.clock.now, random.Random(sim.rng.random()),
                               RecoveryKey.decode(recover) if recover is not None else None,
                               WALL_START + clock_skew)
        self.link: Link | None = None
        self._wake_at: float | None = None
        self._ops: dict[int, tuple[str, Any]] = {}
        self._seq = 0
        self._pumping = False

    # ---------------------------------------------------------------- application

    @property
    def state(self) -> ConnectionState:
        return self.core.state

    @property
    def transport(self) -> str:
        """The transport of the latest link (``"websocket"`` or ``"sse"``)."""
        return self.core.link_transport

    def connect(self) -> None:
        self._do(self.core.connect)

    def close(self) -> None:
        """Close: every subscription ends (as the real client's do)."""
        now = self.sim.clock.now
        for sub in self.record.subs.values():
            if sub.removed_at is None:
                sub.removed_at = now
        self._do(self.core.close)

    def reconnect(self) -> None:
        self._do(self.core.reconnect)

    def subscribe(self, channel: str, rewind: int | None = None) -> int | None:
        """Subscribe (returns the subscription id), or None if the client cannot."""
        now = self.sim.clock.now
        wait = self.core.state is not S.INITIALIZED
        try:
            sub_id, op = self.core.subscribe(channel, now, rewind, wait)
        except RtkitError as exc:
            self.record.problems.append(exc)
            self._pump()
            return None
        rec = SubRecord(sub_id, channel, now, rewind or 0)
        if op is not None:
            self._ops[op] = ("subscribe", rec)
        elif self.core.channels[channel].state.value == "attached":
            self._attached(rec)
        self.record.subs[sub_id] = rec
        self._pump()
        return sub_id

    def unsubscribe(self, sub_id: int) -> None:
        rec = self.record.subs.get(sub_id)
        if rec is None or rec.removed_at is not None:
            return
        rec.removed_at = self.sim.clock.now
        self.core.unsubscribe(rec.channel, sub_id, self.sim.clock.now)
        self._pump()

    def publish(self, channel: str, data: Any = None, name: str = "m") -> str | None:
        """Publish; returns the message id (None if the client refused at once)."""
        self._seq += 1
        msg_id = f"{self.name}:{self._seq}"
        now = self.sim.clock.now
        try:
            op = self.core.publish(channel, name, data, msg_id, now)
        except RtkitError as exc:
            self.record.problems.append(exc)
            self._pump()
            return None
        rec = Published(channel, msg_id, now)
        self.record.published[msg_id] = rec
        self._ops[op] = ("publish", rec)
        self._pump()
        return msg_id

    def attach(self, channel: str, rewind: int | None = None) -> int | None:
        """``attach()`` (its outcome is recorded in :attr:`Record.ops`); None if refused."""
        return self._call("attach", lambda now: self.core.attach(channel, now, rewind))

    def detach(self, channel: str) -> int | None:
        """``detach()``: the channel's subscriptions get nothing more until the next
        subscribe or attach (they count as ended here)."""
        for sub in self.record.subs.values():
            if sub.channel == channel and sub.removed_at is None:
                sub.removed_at = self.sim.clock.now
        return self._call("detach", lambda now: self.core.detach(channel, now))

    def history(self, channel: str, limit: int = 100) -> int | None:
        return self._call("history", lambda now: self.core.history(channel, now, limit))

    def _call(self, kind: str, start: Callable[[float], int]) -> int | None:
        try:
            op = start(self.sim.clock.now)
        except RtkitError as exc:
            self.record.problems.append(exc)
            self._pump()
            return None
        self._ops[op] = (kind, None)
        self.record.ops[op] = (kind, self.sim.clock.now, None)
        self._pump()
        return op

    def renew(self) -> None:
        if self.core.credentials.renewable:
            op = self.core.renew_token(self.sim.clock.now)
            self._ops[op] = ("renew", None)
            self._pump()

    def recovery_key(self) -> str | None:
        return self.core.recovery_key()

    def vanish(self) -> None:
        """The process dies: no goodbye, its link is simply cut."""
        if self.link is not None:
            self.link.abort_from_client()
        self.link = None
        self._wake_at = float("inf")
        self.core = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- driving the core

    def _do(self, fn: Callable[[float], None]) -> None:
        fn(self.sim.clock.now)
        self._pump()

    def _pump(self) -> None:
        if self._pumping or self.core is None:
            return
        self._pumping = True
        try:
            while True:
                items = self.core.take()
                if not items:
                    break
                for item in items:
                    self._handle(item)
        finally:
            self._pumping = False
        self._arm()

    def _arm(self) -> None:
        if self.core is None:
            return
        at = self.core.next_deadline()
        if at is None or (self._wake_at is not None and self._wake_at <= at):
            return
        self._wake_at = at
        self.sim.clock.at(at, self._wake)

    def _wake(self) -> None:
        if self.core is None:
            return
        now = self.sim.clock.now
        if self._wake_at is not None and self._wake_at > now:
            return  # superseded by a later wake; an earlier one is scheduled too
        self._wake_at = None
        self.core.timer(now)
        self._pump()

    def _handle(self, item: ev.Output) -> None:
        now = self.sim.clock.now
        rec = self.record
        if isinstance(item, ev.Send):
            if self.link is not None:
                self.link.to_broker(item.text)
        elif isinstance(item, ev.Deliver):
            ch = self.core.channels[item.channel]
            epoch = ch.tracker.epoch
            rec.timeline.setdefault(item.channel, []).append(Entry(
                now, tuple((epoch, m.serial, m.id) for m in item.messages), item.subs))
            if self.on_message is not None:
                for m in item.messages:
                    self.on_message(item.channel, m.data)
        elif isinstance(item, ev.Lost):
            ch_name = item.loss.channel
            held = (self.sim.broker.epoch_of(ch_name), self.sim.broker.first_stored(ch_name),
                    self.sim.network.lost_by_client.get(self.name, 0) > 0)
            rec.timeline.setdefault(ch_name, []).append(Entry(now, loss=item.loss,
                                                              broker=held))
        elif isinstance(item, (ev.OpDone, ev.OpFailed)):
            self._op_outcome(item, now)
        elif isinstance(item, ev.StateChanged):
            rec.states.append(item.change)
        elif isinstance(item, ev.ChannelChanged):
            if item.current.value == "attached":
                # Subscriptions made before connect() count from the first attach.
                for sub in rec.subs.values():
                    if sub.channel == item.channel and sub.attached_at is None and \
                            sub.removed_at is None and sub.id not in self._waiting_subs():
                        self._attached(sub)
            if item.current.value == "failed":
                rec.failed_channels.setdefault(item.channel, now)
            else:
                rec.failed_channels.pop(item.channel, None)
        elif isinstance(item, ev.Problem):
            rec.problems.append(item.error)
        else:
            self._handle_link(item)

    def _op_outcome(self, item: ev.OpDone | ev.OpFailed, now: float) -> None:
        kind, target = self._ops.pop(item.op, (None, None))
        if item.op in self.record.ops:
            started = self.record.ops[item.op][1]
            outcome = item.value if isinstance(item, ev.OpDone) else item.error
            self.record.ops[item.op] = (kind or "?", started, outcome)
        if kind == "publish":
            assert isinstance(target, Published)
            if isinstance(item, ev.OpDone):
                result: ev.PublishResult = item.value
                target.serial, target.acked_at = result.serial, now
                target.epoch = self.sim.broker.epoch_of(target.channel)
            else:
                target.error = item.error
        elif kind == "subscribe":
            assert isinstance(target, SubRecord)
            if isinstance(item, ev.OpDone):
                self._attached(target)
            else:
                target.error = item.error
                self.unsubscribe(target.id)

    def _attached(self, sub: SubRecord) -> None:
        sub.attached_at = self.sim.clock.now
        tracker = self.core.channels[sub.channel].tracker
        sub.base = (tracker.epoch, tracker.serial)

    def _waiting_subs(self) -> set[int]:
        return {t.id for kind, t in self._ops.values() if kind == "subscribe"}

    def _handle_link(self, item: ev.Output) -> None:
        core = self.core
        if isinstance(item, ev.OpenLink):
            link_id = core.link_id

            def opened(link: Link) -> None:
                if self.core is None or self.core.link_id != link_id:
                    link.abort_from_client()
                    return
                self.link = link
                self.core.link_opened(link_id, self.sim.clock.now)
                self._pump()

            def failed(why: str, code: int) -> None:
                if self.core is not None:
                    self.core.link_failed(link_id, ConnectionFailed(why, code=code),
                                          self.sim.clock.now)
                    self._pump()

            def received(text: str) -> None:
                if self.core is not None:
                    self.core.receive(text, self.sim.clock.now)
                    self._pump()

            def lost(why: str) -> None:
                if self.core is not None:
                    if self.link is not None and self.core.link_id == link_id:
                        self.link = None
                    self.core.link_lost(link_id, error_from_close(None, why),
                                        self.sim.clock.now)
                    self._pump()

            self.sim.network.open(self.name, received, lost, opened, failed, item.transport)
        elif isinstance(item, ev.Probe):
            def probed(ok: bool) -> None:
                if self.core is not None:
                    self.core.probe_done(ok, self.sim.clock.now)
                    self._pump()

            self.sim.network.probe(self.name, item.transport, probed)
        elif isinstance(item, ev.AbortLink):
            if self.link is not None:
                self.link.abort_from_client()
                self.link = None
        elif isinstance(item, ev.CloseLink):
            link = self.link
            if link is not None:
                self.sim.clock.after(1.0, link.abort_from_client)
        elif isinstance(item, ev.FetchToken):
            self._fetch(item)

    def _fetch(self, item: ev.FetchToken) -> None:
        def answer() -> None:
            if self.core is None:
                return
            now = self.sim.clock.now
            if self.auth_failures > 0:
                self.auth_failures -= 1
                self.core.token_failed(item.id, RtkitError("token service down"), now)
            else:
                token = self.sim.issue_token(self.client_id, self.token_ttl or 60.0)
                self.core.token_obtained(item.id, token, now)
            self._pump()

        self.sim.clock.after(self.auth_delay, answer)
