"""The client side of the protocol, sans I/O.

:class:`ClientCore` builds the frames to send (each request gets a fresh ``ref``) and turns
received text into events. The driver owns the socket, the clock and the futures: it passes
``now`` in and matches replies to requests by ``ref``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.states import ConnectionState, StateChange, StateMachine, Trigger
from rtkit.core.timing import Liveness
from rtkit.errors import ProtocolError, RtkitError


@dataclass(frozen=True, slots=True)
class Reply:
    """The broker answered request ``ref`` with ``frame`` (attached, ack, history_result...)."""

    ref: fr.Ref
    frame: fr.Frame


@dataclass(frozen=True, slots=True)
class Refused:
    """The broker refused request ``ref`` (a nack or an error with that ref)."""

    ref: fr.Ref
    error: RtkitError


@dataclass(frozen=True, slots=True)
class Delivery:
    """Messages arrived on a channel, in serial order."""

    channel: str
    messages: tuple[fr.Message, ...]


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    channel: str
    changes: tuple[fr.PresenceChange, ...]


@dataclass(frozen=True, slots=True)
class ChannelDetached:
    """The broker detached a channel on its own (e.g. a renewed token no longer covers it)."""

    channel: str
    error: RtkitError | None


@dataclass(frozen=True, slots=True)
class BrokerError:
    """An error not tied to a request. ``fatal`` errors are followed by the broker closing."""

    error: RtkitError
    fatal: bool


@dataclass(frozen=True, slots=True)
class BrokerClosed:
    error: RtkitError | None


@dataclass(frozen=True, slots=True)
class Malformed:
    """The broker sent something this client cannot understand (logged, then ignored)."""

    error: ProtocolError
    text: str


Event = Reply | Refused | Delivery | PresenceUpdate | ChannelDetached | BrokerError | \
    BrokerClosed | Malformed


@dataclass(slots=True)
class Session:
    """What the broker told us in ``connected``."""

    connection_id: str
    connection_key: str
    client_id: str | None
    heartbeat_interval: float
    connection_state_ttl: float
    token_expires: float | None
    limits: dict[str, int] = field(default_factory=dict)
    server_time_offset: float = 0.0


class ClientCore:
    """Protocol logic of one client connection."""

    def __init__(self, now: float = 0.0, heartbeat_grace: float = 0.5) -> None:
        self.machine = StateMachine(now)
        self.session: Session | None = None
        self.liveness = Liveness(interval=15.0, grace=heartbeat_grace, last_heard=now)
        self._refs = itertools.count(1)
        self.pending: dict[fr.Ref, str] = {}  # ref -> action of the request

    # ---------------------------------------------------------------- state

    @property
    def state(self) -> ConnectionState:
        return self.machine.state

    def transition(
        self, trigger: Trigger, reason: str, now: float, error: RtkitError | None = None
    ) -> StateChange:
        return self.machine.apply(trigger, reason, now, error)

    # ---------------------------------------------------------------- requests

    def request(self, frame_type: type[fr.Frame], **fields: Any) -> tuple[fr.Ref, str]:
        """Build a request frame with a new ``ref``; returns the ref and the text to send."""
        ref = next(self._refs)
        frame = frame_type(ref=ref, **fields)  # type: ignore[call-arg]
        self.pending[ref] = frame_type.ACTION
        return ref, fr.encode(frame)

    def forget(self, ref: fr.Ref) -> None:
        """Stop waiting for ``ref`` (timed out or cancelled)."""
        self.pending.pop(ref, None)

    def abandon_all(self) -> list[fr.Ref]:
        """The transport is gone: every pending request is lost; returns their refs."""
        refs = list(self.pending)
        self.pending.clear()
        return refs

    # ---------------------------------------------------------------- input

    def receive(self, text: str | bytes, now: float) -> list[Event]:
        """Handle one frame from the broker; returns what happened."""
        self.liveness.heard(now)
        try:
            frame = fr.decode_server_frame(text)
        except ProtocolError as exc:
            shown = text if isinstance(text, str) else repr(text)
            return [Malformed(exc, shown[:200])]
        return self._handle(frame, now)

    def _handle(self, f: fr.Frame, now: float) -> list[Event]:
        if isinstance(f, fr.Messages):
            return [Delivery(f.channel, f.messages)]
        if isinstance(f, fr.Heartbeat):
            return self._reply(f.ref, f) if f.ref is not None else []
        if isinstance(f, fr.Connected):
            self.session = Session(
                connection_id=f.connection_id,
                connection_key=f.connection_key,
                client_id=f.client_id,
                heartbeat_interval=f.heartbeat_interval / 1000,
                connection_state_ttl=f.connection_state_ttl / 1000,
                token_expires=None if f.token_expires is None else f.token_expires / 1000,
                limits=dict(f.limits),
            )
            self.liveness.interval = self.session.heartbeat_interval
            return self._reply(f.ref, f) if f.ref is not None else []
        if isinstance(f, fr.PresenceEvent):
            return [PresenceUpdate(f.channel, f.changes)]
        if isinstance(f, fr.Nack):
            return self._refuse(f.ref, f.error)
        if isinstance(f, fr.Error):
            assert f.error is not None
            if f.ref is not None and f.ref in self.pending:
                refused = self._refuse(f.ref, f.error)
                return [*refused, BrokerError(f.error, True)] if f.fatal else refused
            return [BrokerError(f.error, f.fatal)]
        if isinstance(f, fr.Detached) and (f.ref is None or f.ref not in self.pending):
            return [ChannelDetached(f.channel, f.error)]
        if isinstance(f, fr.Authorized) and self.session is not None:
            expires = f.token_expires
            self.session.token_expires = None if expires is None else expires / 1000
        if isinstance(f, fr.Closed):
            events: list[Event] = self._reply(f.ref, f) if f.ref is not None else []
            return [*events, BrokerClosed(f.error)]
        ref = getattr(f, "ref", None)
        return self._reply(ref, f) if ref is not None else []

    def _reply(self, ref: fr.Ref | None, frame: fr.Frame) -> list[Event]:
        if ref is None or self.pending.pop(ref, None) is None:
            return []  # a late reply to a request we gave up on
        return [Reply(ref, frame)]

    def _refuse(self, ref: fr.Ref | None, error: RtkitError | None) -> list[Event]:
        if ref is None or self.pending.pop(ref, None) is None or error is None:
            return []
        return [Refused(ref, error)]
