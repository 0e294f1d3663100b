"""The client side of the protocol, sans I/O: one :class:`ClientCore` per client.

It takes inputs — the application's requests, links opening and failing, frames received,
tokens obtained, and ``now`` (the client's *monotonic* clock, in seconds) — and returns, through
:meth:`ClientCore.take`, effects for its driver (send this frame, open a link, fetch a
token: see :mod:`rtkit.core.client_events`) and events for the application. The driver moves
bytes, calls ``auth_callback`` and wakes the core at :meth:`ClientCore.next_deadline`; every
decision — resume, re-attach, gap repair, publish order and pacing, token presentation,
backoff, liveness, suspension — is made here or in the parts it is composed of:

* :class:`~rtkit.core.channel_state.ChannelCore` per channel (attach, continuity, repair);
* :class:`~rtkit.core.requests.Requests` (refs, operations, deadlines);
* :class:`~rtkit.core.publishing.Publishing` (the outbox, pacing, acks);
* :class:`~rtkit.core.renewal.Renewal` and :class:`~rtkit.core.credentials.Credentials`;
* :class:`~rtkit.core.schedule.Schedule` (backoff, TTL, liveness, probes);
* :class:`~rtkit.core.transports.TransportPicker` (the transport of each attempt);
* :class:`~rtkit.core.client_connection.Connection` (attempts, links, failures, TTL and
  suspension, closing, the ``connected`` reply and the resume that follows).

Operations return an ``op`` number; their outcome arrives later as ``OpDone``/``OpFailed``.
The frames the broker sends are handled in :mod:`rtkit.core.client_input`, the timers in
:mod:`rtkit.core.client_timers`. This module holds the core's state and its public methods:
channel operations, publishes, requests and tokens here; the connection's lifecycle calls
into its :class:`~rtkit.core.client_connection.Connection`.
"""

from __future__ import annotations

import functools
from typing import Any

from rtkit.core import client_timers
from rtkit.core import frames as fr
from rtkit.core.channel_state import ChannelCore
from rtkit.core.client_config import ClientConfig, Session
from rtkit.core.client_connection import Connection
from rtkit.core.client_events import Output, Resumed, StateChanged
from rtkit.core.client_input import Input
from rtkit.core.credentials import Credentials
from rtkit.core.outbox import Outbox
from rtkit.core.publishing import Publishing
from rtkit.core.recovery import RecoveryKey
from rtkit.core.renewal import Renewal
from rtkit.core.requests import Pending, Requests, Waiting
from rtkit.core.schedule import Schedule
from rtkit.core.states import ConnectionState, StateChange, StateMachine, Trigger
from rtkit.core.timing import Liveness, RandomSource
from rtkit.core.transports import TransportPicker
from rtkit.errors import (
    ConnectionClosed,
    ConnectionFailed,
    ConnectionSuspended,
    Disconnected,
    ProtocolError,
    RtkitError,
)

S = ConnectionState
__all__ = ["ClientConfig", "ClientCore", "Session"]
#: States in which operations may wait for the connection to come (back).
HOPEFUL = frozenset({S.CONNECTED, S.CONNECTING, S.DISCONNECTED})


class ClientCore:
    """The protocol logic of one client: connection, channels, publishes and tokens."""

    def __init__(self, config: ClientConfig, now: float, rng: RandomSource,
                 recover: RecoveryKey | None = None, wall_offset: float = 0.0) -> None:
        self.config = config
        self.machine = StateMachine(now)
        self.session: Session | None = None
        self.out: list[Output] = []
        self.outbox = Outbox(config.max_queued_bytes, config.max_queued_publishes)
        self.requests = Requests(self.out, self.outbox.charge)
        self.credentials = Credentials(config.key, config.token, config.renewable,
                                       config.auth_timeout, config.backoff, rng)
        self.credentials.wall_offset = wall_offset
        self.renewal = Renewal(self.credentials, self.requests, self.out)
        self.publishing = Publishing(self.outbox, self.requests, self.out)
        self.schedule = Schedule(config.backoff, rng, config.suspended_retry_interval, now)
        self.channels: dict[str, ChannelCore] = {}
        self.transports = TransportPicker(config.transports, config.transport_retry_interval,
                                          config.fallback_after)
        self.resume_key: str | None = None
        self.last_rtt: float | None = None
        self.last_resume: Resumed | None = None
        self.stats = {"connects": 0, "resumed": 0, "malformed": 0}
        self._input = Input(self)
        self.connection = Connection(self, rng)
        if recover is not None:
            self.resume_key = recover.connection_key
            for name, (serial, epoch) in recover.channels.items():
                ch = self.channel(name)
                ch.tracker.restore(serial, epoch)
                ch.restored = True

    # ================================================================ basics

    def take(self) -> list[Output]:
        """Everything to do and to tell since the last call, in order."""
        out = self.out[:]
        self.out.clear()
        return out

    @property
    def state(self) -> ConnectionState:
        return self.machine.state

    @property
    def liveness(self) -> Liveness:
        return self.schedule.liveness

    def transition(self, trigger: Trigger, reason: str, now: float,
                   error: RtkitError | None = None) -> StateChange:
        # connecting: the transport about to be tried; otherwise the latest link's.
        transport = self.transports.current if trigger in (Trigger.CONNECT, Trigger.RETRY) \
            else self.connection.transport
        change = self.machine.apply(trigger, reason, now, error, transport)
        self.out.append(StateChanged(change))
        return change

    def unusable(self, action: str) -> RtkitError:
        """The error for an operation the current state cannot carry out."""
        state = self.state
        why = f"cannot {action}: the client is {state.value}"
        if state is S.SUSPENDED:
            return ConnectionSuspended(why)
        if state is S.FAILED:
            return ConnectionFailed(why)
        if state in (S.CLOSED, S.CLOSING):
            return ConnectionClosed(why)
        return Disconnected(why)

    def set_wall_offset(self, offset: float) -> None:
        """The driver's wall clock minus its monotonic clock (token expiry uses wall time)."""
        self.credentials.wall_offset = offset

    # ================================================================ channels

    def channel(self, name: str) -> ChannelCore:
        ch = self.channels.get(name)
        if ch is None:
            fr.validate_channel_name(name)
            ch = self.channels[name] = ChannelCore(
                name, functools.partial(self._channel_request, name), self.out.append,
                self.out)
        return ch

    def _channel_request(self, name: str, action: str, fields: dict[str, Any]) -> fr.Ref:
        frame = fr.Attach if action == "attach" else fr.Detach
        return self.requests.send(frame, Pending(action, None, name), channel=name, **fields)

    def reconcile(self, now: float, ch: ChannelCore | None = None) -> None:
        live = self.state is S.CONNECTED
        for c in (ch,) if ch is not None else tuple(self.channels.values()):
            c.reconcile(live, now)

    def subscribe(self, channel: str, now: float, rewind: int | None = None,
                  wait: bool = True) -> tuple[int, int | None]:
        """Add a subscription (its id is returned) and attach the channel if needed; the op
        (when ``wait``) completes once attached. Before ``connect()`` nothing waits."""
        ch = self.channel(channel)
        if wait and self.state not in HOPEFUL:
            raise self.unusable("attach")
        sub_id = self.requests.new_op()
        op = self.requests.new_op() if wait else None
        ch.subscribe(sub_id, rewind or 0, op)
        if op is not None:
            self.requests.deadline(op, now + self.config.request_timeout)
        self.reconcile(now, ch)
        return sub_id, op

    def unsubscribe(self, channel: str, sub_id: int, now: float) -> None:
        ch = self.channels.get(channel)
        if ch is not None:
            ch.unsubscribe(sub_id)
            self.reconcile(now, ch)

    def attach(self, channel: str, now: float, rewind: int | None = None) -> int:
        ch = self.channel(channel)
        if self.state not in HOPEFUL:
            raise self.unusable("attach")
        op = self.requests.new_op()
        ch.attach(op, rewind or 0)
        self.requests.deadline(op, now + self.config.request_timeout)
        self.reconcile(now, ch)
        return op

    def detach(self, channel: str, now: float) -> int:
        ch = self.channel(channel)
        op = self.requests.new_op()
        ch.detach(op)
        self.requests.deadline(op, now + self.config.request_timeout)
        self.reconcile(now, ch)
        return op

    # ================================================================ other operations

    def _request_op(self, frame_type: type[fr.Frame], kind: str, now: float,
                    for_channel: str | None = None, extra: Any = None, **fields: Any) -> int:
        """An operation that needs a live connection: sent now, or when (re)connected."""
        if self.state not in HOPEFUL:
            raise self.unusable(frame_type.ACTION)
        op = self.requests.new_op()
        self.requests.deadline(op, now + self.config.request_timeout)
        if self.state is S.CONNECTED:
            self.requests.send(frame_type, Pending(kind, op, for_channel, now, extra),
                               **fields)
        else:
            self.requests.later(Waiting(op, frame_type, fields, kind, for_channel, extra))
        return op

    def history(self, channel: str, now: float, limit: int = 100, before: int | None = None,
                after: int | None = None) -> int:
        fr.validate_channel_name(channel)
        return self._request_op(fr.History, "history", now, channel, channel=channel,
                                limit=limit, before=before, after=after)

    def presence(self, channel: str, op: fr.PresenceOp, now: float, data: Any = None) -> int:
        self.channel(channel)
        if op in ("enter", "update") and not fr.is_json_value(data):
            raise ProtocolError("presence data must be JSON", code=40003)
        return self._request_op(fr.Presence, "presence", now, channel, extra=(op, data),
                                channel=channel, op=op, data=data)

    def ping(self, now: float) -> int:
        return self._request_op(fr.Heartbeat, "ping", now)

    def publish(self, channel: str, name: str, data: Any, msg_id: str, now: float,
                timeout: float | None = None) -> int:
        """Queue a publish (checked and encoded now) and send it when the link and the
        pacing allow. Raises at once for bad input, a full queue, or a client that cannot
        publish (suspended, failed, closed)."""
        if self.state in (S.INITIALIZED, S.SUSPENDED, S.FAILED, S.CLOSED, S.CLOSING):
            raise self.unusable("publish")
        limit = self.session.limits.get("max_message_size") if self.session else None
        op = self.publishing.publish(channel, name, data, msg_id, now, timeout, limit)
        if self.state is S.CONNECTED:
            self.publishing.flush(now)
        return op

    def withdraw(self, op: int, now: float) -> None:
        """The application stopped waiting for ``op``: drop it if nothing was sent yet
        (a publish still queued, a request waiting for the connection)."""
        entry = self.outbox.by_op(op)
        if entry is not None and entry.sends == 0 and entry.ref is None:
            self.outbox.remove(entry)
        self.requests.waiting.pop(op, None)

    # ================================================================ tokens

    def renew_token(self, now: float) -> int:
        """Get a new token from auth_callback now and, if connected, present it in-band."""
        return self.renewal.renew(now)

    def token_obtained(self, fetch_id: int, token: object, now: float) -> None:
        """The driver's auth_callback returned ``token`` for fetch ``fetch_id``."""
        err = self.credentials.obtained(fetch_id, token, now)
        if err is not None:
            return self.token_trouble(err, now)
        if self.credentials.fetch is not None or self.credentials.token != token:
            return None  # a late answer
        conn = self.connection
        if conn.waiting_token and self.state is S.CONNECTING:
            conn.waiting_token = False
            conn.open_link(now)
        elif self.state is S.CONNECTED and conn.link_open:
            self.renewal.present(now)
        else:
            self.renewal.settle(token)  # the next connection presents it
        return None

    def token_failed(self, fetch_id: int, error: RtkitError, now: float) -> None:
        err = self.credentials.failed(fetch_id, error, now)
        if err is not None:
            self.token_trouble(err, now)

    def token_trouble(self, err: RtkitError, now: float) -> None:
        self.renewal.trouble(err)
        conn = self.connection
        if conn.waiting_token and self.state is S.CONNECTING:
            conn.waiting_token = False
            conn.attempt_failed(err, now, report=False)
    # ================================================================ lifecycle

    def connect(self, now: float) -> None:
        """Connect, or retry at once if waiting to retry."""
        self.connection.connect(now)

    def reconnect(self, now: float) -> None:
        """Drop the link now and reconnect at once (no backoff), resuming."""
        self.connection.reconnect(now)

    def close(self, now: float) -> None:
        """Say goodbye to the broker and stop. Pending operations fail."""
        self.connection.close(now)

    @property
    def url(self) -> str:
        """The broker URL the current (or next) connection attempt uses."""
        return self.connection.url

    @property
    def link_id(self) -> int:
        """The id of the link the last OpenLink asked for (the driver echoes it back)."""
        return self.connection.link

    @property
    def link_transport(self) -> str:
        """The transport of the latest link opened (or being opened)."""
        return self.connection.transport

    def link_opened(self, link: int, now: float) -> None:
        """The link asked for by the last ``OpenLink`` is up: say who we are."""
        self.connection.link_opened(link, now)

    def probe_done(self, ok: bool, now: float) -> None:
        """The driver's :class:`Probe` of the preferred transport ended (``ok``: it got
        through): if so, move back to it by reconnecting and resuming now."""
        self.connection.probe_done(ok, now)

    def link_failed(self, link: int, error: RtkitError, now: float) -> None:
        """The link asked for could not be opened."""
        self.connection.link_down(link, error, now)

    def link_lost(self, link: int, error: RtkitError, now: float) -> None:
        """The link is gone (closed by either side, or broken)."""
        self.connection.link_down(link, error, now)

    def link_down(self, link: int, error: RtkitError, now: float, report: bool = True) -> None:
        """Link ``link`` failed or went away (``report``: tell the application)."""
        self.connection.link_down(link, error, now, report)

    # ================================================================ input

    def receive(self, text: str | bytes, now: float) -> None:
        """Handle one frame from the broker."""
        self.schedule.liveness.heard(now)
        self._input.receive(text, now)

    # ================================================================ time

    def next_deadline(self) -> float | None:
        """When the driver must call :meth:`timer` next (monotonic), if ever."""
        return client_timers.next_deadline(self)

    def timer(self, now: float) -> None:
        """Do what is due at ``now``."""
        client_timers.timer(self, now)

    # ================================================================ recovery

    def recovery_key(self) -> str | None:
        """The connection key and every wanted channel's position, as one string."""
        if self.resume_key is None:
            return None
        channels: dict[str, tuple[int, str | None]] = {
            name: (ch.tracker.serial, ch.tracker.epoch) for name, ch in self.channels.items()
            if ch.wanted and ch.tracker.epoch is not None}
        return RecoveryKey(self.resume_key, channels).encode()
