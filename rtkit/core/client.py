"""The client side of the protocol, sans I/O: one :class:`ClientCore` per client.

It takes inputs — the application's requests, links opening and failing, frames received,
tokens obtained, and ``now`` (the client's *monotonic* clock, in seconds) — and returns, through
:meth:`ClientCore.take`, effects for its driver (send this frame, open a link, fetch a
token: see :mod:`rtkit.core.client_events`) and events for the application. The driver moves
bytes, calls ``auth_callback`` and wakes the core at :meth:`ClientCore.next_deadline`; every
decision — resume, re-attach, gap repair, publish order and pacing, token presentation,
backoff, liveness, suspension — is made here, so tests and :mod:`rtkit.sim` drive it without
a socket or a clock.

Operations return an ``op`` number; their outcome arrives later as ``OpDone``/``OpFailed``.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.channel_state import ChannelCore
from rtkit.core.client_events import (
    AbortLink,
    CloseLink,
    FetchToken,
    Measured,
    OpDone,
    OpenLink,
    OpFailed,
    Output,
    PresenceChanged,
    Problem,
    PublishResult,
    Resumed,
    Send,
    StateChanged,
)
from rtkit.core.credentials import Credentials
from rtkit.core.outbox import DEFAULT_MAX_QUEUED_BYTES, Outbox
from rtkit.core.recovery import RecoveryKey
from rtkit.core.states import ConnectionState, StateChange, StateMachine, Trigger
from rtkit.core.timing import Backoff, Liveness, RandomSource
from rtkit.errors import (
    AuthError,
    ConnectionClosed,
    ConnectionFailed,
    ConnectionSuspended,
    Disconnected,
    InvalidCredentials,
    LimitExceeded,
    ProtocolError,
    RequestTimeout,
    RtkitError,
    TokenExpired,
)

S = ConnectionState
__all__ = ["ClientConfig", "ClientCore", "Session"]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A client's options (times in seconds on the client's monotonic clock)."""

    url: str = "ws://127.0.0.1"
    key: str | None = None
    token: str | None = None
    #: An auth_callback exists: tokens can be renewed.
    renewable: bool = False
    client_id: str | None = None
    request_timeout: float = 10.0
    connect_timeout: float = 10.0
    #: Silence tolerated after the broker's heartbeat interval (None: half the interval).
    heartbeat_grace: float | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=2.0))
    suspended_retry_interval: float = 15.0
    connection_state_ttl: float = 120.0
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    max_queued_publishes: int | None = None
    auth_timeout: float = 10.0
    close_timeout: float = 2.0


@dataclass(slots=True)
class Session:
    """What the broker told us in ``connected`` (times in seconds)."""

    connection_id: str
    connection_key: str
    client_id: str | None
    heartbeat_interval: float
    connection_state_ttl: float
    token_expires: float | None  # seconds since the epoch (broker's clock)
    limits: dict[str, int] = field(default_factory=dict)
    server_time: float = 0.0
    #: The broker's wall clock minus ours (seconds), measured when connected.
    server_time_offset: float = 0.0


@dataclass(slots=True)
class _Pending:
    """A request on the wire, waiting for its reply."""

    kind: str  # connect, attach, detach, history, presence, ping, auth, close
    op: int | None = None
    channel: str | None = None
    sent: float = 0.0
    extra: Any = None


@dataclass(slots=True)
class _Waiting:
    """An operation that needs a live connection and waits for one."""

    op: int
    frame: type[fr.Frame]
    fields: dict[str, Any]
    kind: str
    channel: str | None = None
    extra: Any = None


class ClientCore:
    """The protocol logic of one client: connection, channels, publishes and tokens."""

    def __init__(self, config: ClientConfig, now: float, rng: RandomSource,
                 recover: RecoveryKey | None = None, wall_offset: float = 0.0) -> None:
        self.config = config
        self.rng = rng
        self.machine = StateMachine(now)
        self.session: Session | None = None
        self.credentials = Credentials(config.key, config.token, config.renewable,
                                       config.auth_timeout, config.backoff, rng)
        self.credentials.wall_offset = wall_offset
        self.outbox = Outbox(config.max_queued_bytes, config.max_queued_publishes)
        self.channels: dict[str, ChannelCore] = {}
        self.liveness = Liveness(interval=15.0, grace=7.5, last_heard=now)
        self.resume_key: str | None = None
        self.last_rtt: float | None = None
        self.last_resume: Resumed | None = None
        self.stats = {"connects": 0, "resumed": 0, "replayed": 0, "malformed": 0}
        self._out: list[Output] = []
        self._refs = itertools.count(1)
        self._ops = itertools.count(1)
        self._pending: dict[fr.Ref, _Pending] = {}
        self._waiting: dict[int, _Waiting] = {}
        self._renew_ops: list[int] = []
        self._deadlines: list[tuple[float, int]] = []  # (deadline, op): lazily deleted
        self._op_deadline: dict[int, float] = {}
        self._link = 0  # id of the current link (0: none)
        self._link_ids = itertools.count(1)
        self._link_open = False
        self._connect_ref: fr.Ref | None = None
        self._close_ref: fr.Ref | None = None
        self._close_error: RtkitError | None = None
        self._attempt = 0
        self._attempt_started = 0.0
        self._attempt_deadline: float | None = None
        self._waiting_token = False
        self._retry_at: float | None = None
        self._lost_at: float | None = None
        self._retry_immediately = False
        self._close_deadline: float | None = None
        self._next_ping: float | None = None
        self._next_poll: float | None = None
        self._last_poll = now
        self._resuming: set[str] = set()
        self._resume_started = 0.0
        self._resume_connected = 0.0
        self._resumed_flag = False
        self._replayed_before = 0
        self._flush_at: float | None = None
        if recover is not None:
            self.resume_key = recover.connection_key
            for name, (serial, epoch) in recover.channels.items():
                ch = self.channel(name)
                ch.tracker.restore(serial, epoch)
                ch.explicit = True

    # ================================================================ outputs

    def take(self) -> list[Output]:
        """Everything to do and to tell since the last call, in order."""
        out, self._out = self._out, []
        return out

    def _emit(self, item: Output) -> None:
        self._out.append(item)

    @property
    def state(self) -> ConnectionState:
        return self.machine.state

    def _transition(self, trigger: Trigger, reason: str, now: float,
                    error: RtkitError | None = None) -> StateChange:
        change = self.machine.apply(trigger, reason, now, error)
        self._emit(StateChanged(change))
        return change

    def new_op(self) -> int:
        return next(self._ops)

    def _deadline(self, op: int, at: float) -> None:
        self._op_deadline[op] = at
        heapq.heappush(self._deadlines, (at, op))

    def _done(self, op: int | None, value: Any = None) -> None:
        if op is not None:
            self._op_deadline.pop(op, None)
            self._emit(OpDone(op, value))

    def _failed(self, op: int | None, error: RtkitError) -> None:
        if op is not None:
            self._op_deadline.pop(op, None)
            self._emit(OpFailed(op, error))

    # ================================================================ channels

    def channel(self, name: str) -> ChannelCore:
        ch = self.channels.get(name)
        if ch is None:
            fr.validate_channel_name(name)
            ch = self.channels[name] = ChannelCore(
                name, functools.partial(self._channel_request, name), self._emit)
        return ch

    def _channel_request(self, name: str, action: str, fields: dict[str, Any]) -> fr.Ref:
        frame = fr.Attach if action == "attach" else fr.Detach
        return self._send_request(frame, _Pending(action, None, name), channel=name, **fields)

    def _reconcile(self, now: float, ch: ChannelCore | None = None) -> None:
        live = self.state is S.CONNECTED
        for c in (ch,) if ch is not None else tuple(self.channels.values()):
            c.reconcile(live, now)

    @property
    def usable(self) -> bool:
        return self.state is S.CONNECTED

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

    def subscribe(self, channel: str, now: float, rewind: int | None = None,
                  wait: bool = True) -> tuple[int, int | None]:
        """Add a subscription (its id is returned) and attach the channel if needed; the op
        (when ``wait``) completes once attached. Before ``connect()`` nothing waits."""
        ch = self.channel(channel)
        if wait and self.state not in (S.CONNECTED, S.CONNECTING, S.DISCONNECTED):
            raise self.unusable("attach")
        sub_id = self.new_op()
        op = self.new_op() if wait else None
        ch.subscribe(sub_id, rewind or 0, op)
        if op is not None:
            self._deadline(op, now + self.config.request_timeout)
        self._reconcile(now, ch)
        return sub_id, op

    def unsubscribe(self, channel: str, sub_id: int, now: float) -> None:
        ch = self.channels.get(channel)
        if ch is not None:
            ch.unsubscribe(sub_id)
            self._reconcile(now, ch)

    def attach(self, channel: str, now: float, rewind: int | None = None) -> int:
        ch = self.channel(channel)
        if self.state not in (S.CONNECTED, S.CONNECTING, S.DISCONNECTED):
            raise self.unusable("attach")
        op = self.new_op()
        ch.attach(op, rewind or 0)
        self._deadline(op, now + self.config.request_timeout)
        self._reconcile(now, ch)
        return op

    def detach(self, channel: str, now: float) -> int:
        ch = self.channel(channel)
        op = self.new_op()
        ch.detach(op)
        self._deadline(op, now + self.config.request_timeout)
        self._reconcile(now, ch)
        return op

    # ================================================================ requests

    def _send_request(self, frame_type: type[fr.Frame], pending: _Pending,
                      **fields: Any) -> fr.Ref:
        ref = next(self._refs)
        self._pending[ref] = pending
        self._emit(Send(fr.encode(frame_type(ref=ref, **fields))))  # type: ignore[call-arg]
        return ref

    def _request_op(self, frame_type: type[fr.Frame], kind: str, now: float,
                    for_channel: str | None = None, extra: Any = None, **fields: Any) -> int:
        """An operation that needs a live connection: sent now, or when reconnected."""
        state = self.state
        if state not in (S.CONNECTED, S.CONNECTING, S.DISCONNECTED):
            raise self.unusable(frame_type.ACTION)
        op = self.new_op()
        self._deadline(op, now + self.config.request_timeout)
        if state is S.CONNECTED:
            self._send_request(frame_type, _Pending(kind, op, for_channel, now, extra),
                               **fields)
        else:
            self._waiting[op] = _Waiting(op, frame_type, fields, kind, for_channel, extra)
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

    # ================================================================ publishing

    def publish(self, channel: str, name: str, data: Any, msg_id: str, now: float,
                timeout: float | None = None) -> int:
        """Queue a publish (encoded now) and send it when the link and pacing allow.
        Raises at once for bad input, a full queue or a client that cannot publish."""
        if self.state in (S.INITIALIZED, S.SUSPENDED, S.FAILED, S.CLOSED, S.CLOSING):
            raise self.unusable("publish")
        fr.validate_channel_name(channel)
        if not isinstance(name, str) or len(name) > fr.MAX_NAME_LENGTH:
            raise ProtocolError(f"the event name must be a string of at most "
                                f"{fr.MAX_NAME_LENGTH} characters", code=40003)
        try:
            data_json = fr.dumps(data)
            size = len(data_json.encode()) + len(name.encode())
        except UnicodeEncodeError:
            raise ProtocolError("data or name is not valid UTF-8 (a lone surrogate?)",
                                code=40001) from None
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"data is not JSON: {exc}", code=40003) from None
        limit = self.session.limits.get("max_message_size") if self.session else None
        if limit is not None and size > limit:
            raise LimitExceeded(f"message is {size} bytes; the limit is {limit}", code=42901)
        op = self.new_op()
        self.outbox.add(channel, name, data_json, msg_id, op,
                        None if timeout is None else now + timeout)
        if timeout is not None:
            self._deadline(op, now + timeout)
        self._flush_outbox(now)
        return op

    def _flush_outbox(self, now: float) -> None:
        if self.state is not S.CONNECTED:
            return
        box = self.outbox
        for entry in box.take_sendable(now):
            ref = next(self._refs)
            box.mark_sent(entry, ref)
            self._emit(Send(entry.frame(ref)))
        self._flush_at = box.next_send_at(now)

    def _on_ack(self, f: fr.Ack) -> bool:
        assert f.ref is not None
        entry = self.outbox.by_ref(f.ref)
        if entry is None:
            return False
        self.outbox.remove(entry)
        self._done(entry.op, PublishResult(f.id, f.serial, f.timestamp, f.duplicate))
        return True

    def _on_nack(self, ref: fr.Ref, error: RtkitError, now: float) -> bool:
        entry = self.outbox.by_ref(ref)
        if entry is None:
            return False
        if error.code == 42900:  # over the broker's rate: keep it, send it again shortly
            self.outbox.retry(entry)
            self._flush_at = now + 0.2
            return True
        self.outbox.remove(entry)
        self._failed(entry.op, error)
        return True

    def _fail_outbox(self, error: RtkitError, unsent_only: bool = False) -> None:
        """Fail queued publishes: those never sent with ``error``; those sent without an
        ack with :class:`RequestTimeout`, since the broker may have published them."""
        for entry in self.outbox.take_all(unsent_only):
            if entry.sends:
                self._failed(entry.op, RequestTimeout(
                    f"{error.message}: no ack for {entry.id!r} (it may have been published)"))
            else:
                self._failed(entry.op, error)

    # ================================================================ tokens

    def renew_token(self, now: float) -> int:
        """Get a new token from auth_callback now and, if connected, present it in-band."""
        if not self.credentials.renewable:
            raise AuthError("this client has no auth_callback to renew with", code=40170)
        op = self.new_op()
        self._renew_ops.append(op)
        self.credentials.retry_at = None
        self._start_fetch("renew_token() called", now)
        return op

    def _start_fetch(self, reason: str, now: float) -> bool:
        fetch = self.credentials.start_fetch(reason, now)
        if fetch is None:
            return self.credentials.fetch is not None
        self._emit(FetchToken(fetch.id, reason, self.credentials.auth_timeout))
        return True

    def token_obtained(self, fetch_id: int, token: object, now: float) -> None:
        """The driver's auth_callback returned ``token`` for fetch ``fetch_id``."""
        err = self.credentials.obtained(fetch_id, token, now)
        if err is not None:
            return self._token_trouble(err, now)
        if self.credentials.fetch is not None or self.credentials.token != token:
            return None
        if self._waiting_token and self.state is S.CONNECTING:
            self._waiting_token = False
            self._open_link(now)
        elif self.state is S.CONNECTED and self._link_open:
            self._present(now)
        else:
            ops, self._renew_ops = self._renew_ops, []
            for op in ops:
                self._done(op, token)
        return None

    def token_failed(self, fetch_id: int, error: RtkitError, now: float) -> None:
        err = self.credentials.failed(fetch_id, error, now)
        if err is not None:
            self._token_trouble(err, now)

    def _token_trouble(self, err: RtkitError, now: float) -> None:
        self._emit(Problem(err, "token renewal failed"))
        ops, self._renew_ops = self._renew_ops, []
        for op in ops:
            self._failed(op, err)
        if self._waiting_token and self.state is S.CONNECTING:
            self._waiting_token = False
            self._attempt_failed(err, now, report=False)

    def _present(self, now: float) -> None:
        token = self.credentials.token
        assert token is not None
        self.credentials.presented = token
        self._send_request(fr.Auth, _Pending("auth", None, None, now, token), token=token)

    # ================================================================ lifecycle

    def connect(self, now: float) -> None:
        """Connect, or retry at once if waiting to retry."""
        state = self.state
        if state in (S.INITIALIZED, S.CLOSED, S.FAILED):
            self._attempt = 0
            self._lost_at = None
            self._transition(Trigger.CONNECT, "connect() called", now)
            self._start_attempt(now)
        elif state in (S.DISCONNECTED, S.SUSPENDED):
            self._transition(Trigger.CONNECT, "connect() called: retrying now", now)
            self._start_attempt(now)

    def reconnect(self, now: float) -> None:
        """Drop the link now and reconnect at once (no backoff), resuming."""
        if self.state is S.CONNECTED:
            self._retry_immediately = True
            self._emit(AbortLink(Disconnected("reconnect() called")))
            self._link_down(self._link, Disconnected("reconnect() called"), now, report=False)
        else:
            self.connect(now)

    def close(self, now: float) -> None:
        """Say goodbye to the broker and stop. Pending operations fail."""
        state = self.state
        if state in (S.CLOSED, S.CLOSING):
            return
        if state is S.CONNECTED and self._link_open:
            self._transition(Trigger.CLOSE, "close() called", now)
            self._close_ref = self._send_request(fr.Close, _Pending("close", None, None, now))
            self._close_deadline = now + self.config.close_timeout
            self._closing_cleanup(now)
            return
        self._transition(Trigger.CLOSE, "close() called", now)
        if self.state is S.CLOSING:  # a connect attempt was in progress
            if self._link:
                self._emit(AbortLink(ConnectionClosed("close() called")))
            self._link = 0
            self._link_open = False
            self._transition(Trigger.TRANSPORT_LOST, "closed", now)
        self._closing_cleanup(now)

    def _closing_cleanup(self, now: float) -> None:
        err = ConnectionClosed("the client was closed")
        # Publishes sent on this link may still be acked before 'closed' arrives (the
        # broker answers in order); the rest fail now.
        self._fail_outbox(ConnectionClosed("the client was closed before sending it"),
                          unsent_only=self.state is S.CLOSING)
        self._fail_waiting(err)
        for ch in self.channels.values():
            for op in ch.clear():
                self._failed(op, err)
        for ref, p in list(self._pending.items()):
            if p.kind != "close":
                self._failed(p.op, err)
                del self._pending[ref]
        ops, self._renew_ops = self._renew_ops, []
        for op in ops:
            self._failed(op, err)
        self.credentials.fetch = None
        self._waiting_token = False
        self._retry_at = self._attempt_deadline = None
        self.resume_key = None

    def _start_attempt(self, now: float) -> None:
        """Begin a connection attempt (state connecting): get a token if needed, then open."""
        self._retry_at = None
        self._attempt_started = now
        self._attempt_deadline = now + self.config.connect_timeout
        creds = self.credentials.credentials_for_connect(now)
        if isinstance(creds, RtkitError):
            self._attempt_failed(creds, now)
            return
        if creds is None:
            # Wait for a token: fetched now, or when a failing auth_callback may be retried.
            self._waiting_token = True
            self._attempt_deadline = None  # the fetch has its own deadline
            self._start_fetch("a token is needed to connect", now)
            return
        self._open_link(now)

    def _open_link(self, now: float) -> None:
        self._link = next(self._link_ids)
        self._link_open = False
        self._close_error = None
        self._attempt_deadline = now + self.config.connect_timeout
        self._emit(OpenLink(self.config.url))

    @property
    def link_id(self) -> int:
        """The id of the link the last OpenLink asked for (the driver echoes it back)."""
        return self._link

    def link_opened(self, link: int, now: float) -> None:
        """The link asked for by the last ``OpenLink`` is up: say who we are."""
        if link != self._link or self.state is not S.CONNECTING:
            return
        self._link_open = True
        self.liveness.heard(now)
        creds = self.credentials.credentials_for_connect(now)
        if not isinstance(creds, dict):  # expired while the link opened
            if creds is None and self.credentials.renewable:
                self._emit(AbortLink(TokenExpired("the token expired while connecting")))
                self._link_down(link, TokenExpired("the token expired while connecting"), now)
            else:
                self._attempt_failed(creds or AuthError(code=40106), now)
            return
        self._connect_ref = self._send_request(
            fr.Connect, _Pending("connect", None, None, now),
            client_id=self.config.client_id, resume=self.resume_key, **creds)

    def link_failed(self, link: int, error: RtkitError, now: float) -> None:
        """The link asked for could not be opened."""
        self._link_down(link, error, now)

    def link_lost(self, link: int, error: RtkitError, now: float) -> None:
        """The link is gone (closed by either side, or broken)."""
        self._link_down(link, error, now)

    def _link_down(self, link: int, error: RtkitError, now: float,
                   report: bool = True) -> None:
        if link != self._link or link == 0:
            return  # an old link's last words
        err = self._close_error or error
        self._link = 0
        self._link_open = False
        self._connect_ref = None
        self._close_error = None
        self._next_ping = self._next_poll = None
        self.outbox.transport_lost()
        for ch in self.channels.values():
            ch.link_lost()
        for ref, p in list(self._pending.items()):
            del self._pending[ref]
            if p.kind in ("history", "presence", "ping"):
                self._failed(p.op, err)
            elif p.kind == "auth":
                pass  # the next connection presents the newest token
        state = self.state
        if state is S.CLOSING:
            self._close_deadline = None
            self._fail_outbox(ConnectionClosed("the client was closed"))
            self._transition(Trigger.TRANSPORT_LOST, "closed", now)
            return
        if state is S.CONNECTED:
            self._lost_at = now
            self._attempt = 0
            if report:
                self._emit(Problem(err, "connection lost"))
            self._transition(Trigger.TRANSPORT_LOST, err.message, now, err)
            self._after_failure(err, now)
        elif state is S.CONNECTING:
            self._attempt_failed(err, now)

    def _attempt_failed(self, err: RtkitError, now: float, report: bool = True) -> None:
        if self.state is not S.CONNECTING:
            return
        if self._link:
            self._emit(AbortLink(err))
            self._link = 0
            self._link_open = False
        self._attempt_deadline = None
        if report:
            self._emit(Problem(err, "connect failed"))
        if self._is_fatal(err):
            self._fail(err, now)
            return
        if self._lost_at is None:
            self._lost_at = now
        self._transition(Trigger.TRANSPORT_LOST, f"connect failed: {err.message}", now, err)
        self._attempt += 1
        self._after_failure(err, now)

    def _after_failure(self, err: RtkitError, now: float) -> None:
        """Disconnected: plan the next attempt (or suspend once the TTL has passed)."""
        if isinstance(err, TokenExpired) and self.credentials.renewable:
            self.credentials.rejected = True
            self._retry_immediately = True  # the cause is known: a new token fixes it
        if self._retry_immediately:
            self._retry_immediately = False
            self._retry_at = now
        else:
            self._retry_at = now + self.config.backoff.delay(self._attempt, self.rng)
        self._check_ttl(now)

    def _ttl(self) -> float:
        s = self.session
        return s.connection_state_ttl if s is not None else self.config.connection_state_ttl

    def _check_ttl(self, now: float) -> None:
        if self.state is S.DISCONNECTED and self._lost_at is not None and \
                now >= self._lost_at + self._ttl():
            self._transition(Trigger.TTL_EXPIRED,
                             f"disconnected for more than {self._ttl():g} s", now)
            self._fail_outbox(ConnectionSuspended(
                "the connection is suspended: queued publishes cannot be kept"))
            self._fail_waiting(ConnectionSuspended("the connection is suspended"))
            self._retry_at = min(self._retry_at or now, now + self._suspended_delay())

    def _suspended_delay(self) -> float:
        return self.config.suspended_retry_interval * (0.5 + self.rng.random() / 2)

    def _is_fatal(self, err: RtkitError) -> bool:
        """Refused credentials are refused again: stop instead of retrying."""
        if isinstance(err, InvalidCredentials) or err.code in (40106, 40107, 40009):
            return True
        return isinstance(err, TokenExpired) and not self.credentials.renewable

    def _fail(self, err: RtkitError, now: float) -> None:
        self._transition(Trigger.FATAL, err.message, now, err)
        self._retry_at = self._attempt_deadline = None
        self._fail_outbox(ConnectionFailed(f"connection failed: {err.message}"))
        self._fail_waiting(ConnectionFailed(f"connection failed: {err.message}"))
        for ch in self.channels.values():
            for op, _ in ch.attach_waiters:
                self._failed(op, ConnectionFailed(f"connection failed: {err.message}"))
            ch.attach_waiters = []

    def _fail_waiting(self, err: RtkitError) -> None:
        waiting, self._waiting = self._waiting, {}
        for w in waiting.values():
            self._failed(w.op, err)

    # ================================================================ connected

    def _on_connected(self, f: fr.Connected, now: float) -> None:
        resumed_asked = self.resume_key is not None
        self.session = Session(
            connection_id=f.connection_id, connection_key=f.connection_key,
            client_id=f.client_id, heartbeat_interval=f.heartbeat_interval / 1000,
            connection_state_ttl=f.connection_state_ttl / 1000,
            token_expires=None if f.token_expires is None else f.token_expires / 1000,
            limits=dict(f.limits), server_time=f.server_time / 1000)
        self.credentials.synced(f.server_time, now)
        self.session.server_time_offset = self.credentials.server_offset
        interval = self.session.heartbeat_interval
        grace = self.config.heartbeat_grace
        self.liveness.interval = interval
        self.liveness.grace = grace if grace is not None else max(0.1, interval / 2)
        self.liveness.heard(now)
        self.resume_key = f.connection_key
        self.outbox.pace(f.limits.get("publish_rate"), f.limits.get("publish_burst"), now)
        self._attempt = 0
        self._lost_at = None
        self._attempt_deadline = None
        self.stats["connects"] += 1
        if f.resumed:
            self.stats["resumed"] += 1
        reason = f"connected as {f.connection_id}" + (" (resumed)" if f.resumed else "")
        if resumed_asked and not f.resumed:
            reason += ": the broker could not resume the connection; channels resume " \
                      "from their last serial"
        self._transition(Trigger.CONNECTED, reason, now)
        self._next_ping = now  # measure the round trip once at once
        self._next_poll = now + self._poll_period()
        self._last_poll = now
        # Channels resume one by one; note when all are back, for Resumed.
        self._resume_started, self._resume_connected = self._attempt_started, now
        self._resumed_flag = f.resumed
        self._replayed_before = sum(c.replayed for c in self.channels.values())
        self._reconcile(now)
        self._resuming = {n for n, c in self.channels.items() if c.inflight is not None}
        for ch in self.channels.values():
            if ch.entered[0]:
                self._send_request(fr.Presence, _Pending("presence", None, ch.name, now,
                                                         ("enter", ch.entered[1])),
                                   channel=ch.name, op="enter", data=ch.entered[1])
        waiting, self._waiting = self._waiting, {}
        for w in waiting.values():
            self._send_request(w.frame, _Pending(w.kind, w.op, w.channel, now, w.extra),
                               **w.fields)
        if self.credentials.token is not None and \
                self.credentials.token != self.credentials.presented:
            self._present(now)  # renewed while we were connecting
        elif self._renew_ops and self.credentials.fetch is None:
            ops, self._renew_ops = self._renew_ops, []
            for op in ops:
                self._done(op, self.credentials.token)
        self._flush_outbox(now)
        self._maybe_resumed(now)

    def _maybe_resumed(self, now: float) -> None:
        if self._resuming or self._resume_connected == 0.0:
            return
        replayed = sum(c.replayed for c in self.channels.values()) - self._replayed_before
        info = Resumed(self._resume_started, self._resume_connected, now, self._resumed_flag,
                       sum(1 for c in self.channels.values() if c.wanted), replayed)
        self._resume_connected = 0.0
        self.last_resume = info
        self._emit(info)

    def _poll_period(self) -> float:
        return max(0.01, min(self.liveness.interval / 4, 1.0))

    # ================================================================ input

    def receive(self, text: str | bytes, now: float) -> None:
        """Handle one frame from the broker."""
        self.liveness.heard(now)
        try:
            obj = fr.loads(text)
            if obj.get("action") == "message":
                self._on_messages(obj, now)
                return
            frame = fr.decode_object(obj, fr.SERVER_FRAMES)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            shown = text if isinstance(text, str) else repr(text)
            self._emit(Problem(exc, f"ignored a malformed frame from the broker: "
                                    f"{shown[:200]}"))
            return
        self._dispatch(frame, now)

    def _on_messages(self, obj: dict[str, Any], now: float) -> None:
        """A ``message`` frame: each message is decoded on its own, so one bad item does
        not lose the others (it is reported, and its serial counted as lost)."""
        channel = obj.get("channel")
        items = obj.get("messages")
        if not isinstance(channel, str) or not isinstance(items, list):
            raise ProtocolError("message: needs 'channel' and 'messages'", code=40003)
        ch = self.channels.get(channel)
        if ch is None:
            return
        from_wire = fr.Message.from_wire
        good: list[fr.Message] = []
        for item in items:
            try:
                good.append(from_wire(item, channel))
            except ProtocolError as exc:
                self.stats["malformed"] += 1
                serial = item.get("serial") if isinstance(item, dict) else None
                self._emit(Problem(exc, f"undecodable message on {channel}"))
                if isinstance(serial, int) and not isinstance(serial, bool):
                    ch.deliver(good, now)
                    good = []
                    if serial == ch.tracker.serial + 1 and ch.state.value == "attached" \
                            and not ch.repairing:
                        ch.skip(serial, "a message could not be decoded", now)
        ch.deliver(good, now)
        if ch.repairing and ch.inflight is None:
            self._reconcile(now, ch)

    def _dispatch(self, f: fr.Frame, now: float) -> None:
        ref = getattr(f, "ref", None)
        if isinstance(f, fr.Ack):
            if ref is not None:
                self._on_ack(f)
            return
        if isinstance(f, fr.Heartbeat):
            if ref is not None:
                p = self._pending.pop(ref, None)
                if p is not None:
                    self.last_rtt = now - p.sent
                    self._emit(Measured(self.last_rtt))
                    self._done(p.op, self.last_rtt)
            return
        if isinstance(f, fr.PresenceEvent):
            self._emit(PresenceChanged(f.channel, f.changes))
            return
        if isinstance(f, fr.Nack):
            if ref is not None and f.error is not None:
                self._on_nack(ref, f.error, now)
            return
        if isinstance(f, fr.Error):
            self._on_error(f, now)
            return
        if isinstance(f, fr.Detached) and (ref is None or ref not in self._pending):
            ch = self.channels.get(f.channel)
            if ch is not None:
                ch.on_detached(f.error, solicited=False)
                self._resume_done(ch.name, now)
            if f.error is not None:
                self._emit(Problem(f.error, f"the broker detached {f.channel}"))
            return
        if isinstance(f, fr.Closed):
            self._close_error = f.error or ConnectionClosed("closed by the broker")
            if ref is not None and self._pending.pop(ref, None) is not None:
                self._emit(CloseLink(1000, "closed"))
            return
        p = self._pending.pop(ref, None) if ref is not None else None
        if p is None:
            return  # a late reply to a request we gave up on
        if isinstance(f, fr.Connected):
            self._on_connected(f, now)
        elif isinstance(f, fr.Attached):
            ch = self.channels.get(f.channel)
            if ch is not None:
                ch.on_attached(f, ref, now)  # type: ignore[arg-type]
                self._reconcile(now, ch)
                if ch.inflight is None:
                    self._resume_done(ch.name, now)
        elif isinstance(f, fr.Detached):
            ch = self.channels.get(f.channel)
            if ch is not None:
                ch.on_detached(None, solicited=True)
                self._reconcile(now, ch)
        elif isinstance(f, fr.HistoryResult):
            self._done(p.op, list(f.messages))
        elif isinstance(f, fr.PresenceResult):
            ch = self.channels.get(f.channel)
            if ch is not None and p.extra is not None:
                op_name, data = p.extra
                if op_name in ("enter", "update"):
                    ch.entered = (True, data)
                elif op_name == "leave":
                    ch.entered = (False, None)
            self._done(p.op, list(f.members))
        elif isinstance(f, fr.Authorized):
            if self.session is not None:
                self.session.token_expires = (None if f.token_expires is None
                                              else f.token_expires / 1000)
            ops, self._renew_ops = self._renew_ops, []
            for op in ops:
                self._done(op, p.extra)

    def _resume_done(self, channel: str, now: float) -> None:
        if channel in self._resuming:
            self._resuming.discard(channel)
            self._maybe_resumed(now)

    def _on_error(self, f: fr.Error, now: float) -> None:
        err = f.error
        assert err is not None
        ref = f.ref
        p = self._pending.pop(ref, None) if ref is not None else None
        if f.fatal:
            self._close_error = err
            if isinstance(err, TokenExpired):
                self.credentials.rejected = True
            link = self._link
            self._emit(AbortLink(err))
            self._link_down(link, err, now)
            return
        if p is None:
            self._emit(Problem(err, "error from the broker"))
            return
        if p.kind in ("attach", "detach"):
            ch = self.channels.get(p.channel or "")
            if ch is not None:
                ch.on_refused(ref, err, now)  # type: ignore[arg-type]
                if ch.state.value == "failed":
                    self._emit(Problem(err, f"cannot attach {ch.name}"))
                self._resume_done(ch.name, now)
        elif p.kind == "presence" and p.op is None:
            ch = self.channels.get(p.channel or "")
            if ch is not None:
                ch.entered = (False, None)  # cannot re-enter (capability narrowed)
            self._emit(Problem(err, f"cannot re-enter presence on {p.channel}"))
        elif p.kind == "auth":
            self._token_trouble(err, now)
            if isinstance(err, TokenExpired):
                self.credentials.rejected = True
                self.credentials.retry_at = None
                self._start_fetch("the renewed token had already expired", now)
        else:
            self._failed(p.op, err)

    # ================================================================ time

    def next_deadline(self) -> float | None:
        """When the driver must call :meth:`timer` next (monotonic), if ever."""
        candidates: list[float] = []
        state = self.state
        if state in (S.DISCONNECTED, S.SUSPENDED) and self._retry_at is not None:
            candidates.append(self._retry_at)
        if state is S.DISCONNECTED and self._lost_at is not None:
            candidates.append(self._lost_at + self._ttl())
        if state is S.CONNECTING and self._attempt_deadline is not None:
            candidates.append(self._attempt_deadline)
        if state is S.CONNECTING and self._waiting_token and self.credentials.fetch is None \
                and self.credentials.retry_at is not None:
            candidates.append(self.credentials.retry_at)
        if state is S.CLOSING and self._close_deadline is not None:
            candidates.append(self._close_deadline)
        if state is S.CONNECTED:
            if self._next_poll is not None:
                candidates.append(self._next_poll)
            if self._next_ping is not None:
                candidates.append(self._next_ping)
            if self._flush_at is not None:
                candidates.append(self._flush_at)
        creds = self.credentials
        if creds.fetch is not None:
            candidates.append(creds.fetch.deadline)
        elif state is S.CONNECTED:
            at = self._renewal_due(self._last_poll)
            if at is not None:
                candidates.append(at)
        for ch in self.channels.values():
            if ch.retry_at is not None:
                candidates.append(ch.retry_at)
        while self._deadlines and self._op_deadline.get(self._deadlines[0][1]) != \
                self._deadlines[0][0]:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            candidates.append(self._deadlines[0][0])
        return min(candidates) if candidates else None

    def _renewal_due(self, now: float) -> float | None:
        """When to fetch the next token: the planned renewal, or the retry after a failure."""
        creds = self.credentials
        if creds.retry_at is not None:
            return creds.retry_at
        return creds.renew_at(now)

    def set_wall_offset(self, offset: float) -> None:
        """The driver's wall clock minus its monotonic clock (token expiry uses wall time)."""
        self.credentials.wall_offset = offset

    def timer(self, now: float) -> None:
        """Do what is due at ``now``."""
        stalled = now - self._last_poll > self._poll_period() + self.liveness.grace
        self._last_poll = now
        state = self.state
        if state in (S.DISCONNECTED, S.SUSPENDED):
            self._check_ttl(now)
            if self._retry_at is not None and now >= self._retry_at:
                self._retry_at = None
                self._transition(Trigger.RETRY, f"retry #{self._attempt + 1}", now)
                self._start_attempt(now)
        elif state is S.CONNECTING:
            if self._waiting_token and self.credentials.fetch is None:
                self._start_fetch("a token is needed to connect", now)
            if self._attempt_deadline is not None and now >= self._attempt_deadline:
                what = "no 'connected' reply" if self._link_open else "the link did not open"
                self._attempt_failed(RequestTimeout(
                    f"{what} within {self.config.connect_timeout:g} s", code=40801), now)
        elif state is S.CLOSING:
            if self._close_deadline is not None and now >= self._close_deadline:
                self._emit(AbortLink(ConnectionClosed("close timed out")))
                self._link_down(self._link, ConnectionClosed("closed"), now)
        elif state is S.CONNECTED:
            self._connected_timers(now, stalled)
        err = self.credentials.timed_out(now)
        if err is not None:
            self._token_trouble(err, now)
        if self.state is S.CONNECTED and self.credentials.fetch is None:
            at = self._renewal_due(now)
            if at is not None and now >= at:
                self._start_fetch("the token expires soon", now)
        for ch in self.channels.values():
            if ch.retry_at is not None and now >= ch.retry_at:
                ch.retry_at = None
                self._reconcile(now, ch)
        self._expire_ops(now)

    def _connected_timers(self, now: float, stalled: bool) -> None:
        if self._next_poll is not None and now >= self._next_poll:
            self._next_poll = now + self._poll_period()
        if stalled:
            # Our own loop was blocked (a busy notebook cell): heartbeats may be waiting
            # unread. Let the reader catch up before judging the link.
            self._next_poll = now + min(self._poll_period(), 0.05)
        elif self.liveness.is_dead(now):
            silent = now - self.liveness.last_heard
            err = Disconnected(f"no heartbeat from the broker for {silent:.2f} s")
            self._emit(AbortLink(err))
            self._link_down(self._link, err, now)
            return
        if self._next_ping is not None and now >= self._next_ping:
            self._next_ping = now + self.liveness.interval
            pings = [r for r, p in self._pending.items() if p.kind == "ping" and p.op is None]
            for ref in pings[:-8]:  # replies lost: stop waiting for the oldest
                del self._pending[ref]
            self._send_request(fr.Heartbeat, _Pending("ping", None, None, now))
        if self._flush_at is not None and now >= self._flush_at:
            self._flush_at = None
            self._flush_outbox(now)

    def _expire_ops(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            at, op = heapq.heappop(heap)
            if self._op_deadline.get(op) != at:
                continue
            del self._op_deadline[op]
            self._expire(op, now)

    def _expire(self, op: int, now: float) -> None:
        connected = self.state is S.CONNECTED
        err: RtkitError = RequestTimeout("no reply in time") if connected else \
            self.unusable("complete the request (still not connected)")
        entry = self.outbox.by_op(op)
        if entry is not None:
            self.outbox.remove(entry)
            err = RequestTimeout(f"no ack for {entry.id!r} in time (it may still have been "
                                 f"published)")
        self._waiting.pop(op, None)
        for ref, p in list(self._pending.items()):
            if p.op == op:
                del self._pending[ref]
        for ch in self.channels.values():
            ch.attach_waiters = [(o, s) for o, s in ch.attach_waiters if o != op]
            if op in ch.detach_waiters:
                ch.detach_waiters.remove(op)
        if op in self._renew_ops:
            self._renew_ops.remove(op)
        self._emit(OpFailed(op, err))

    # ================================================================ recovery

    def recovery_key(self) -> str | None:
        """The connection key and every wanted channel's position, as one string."""
        if self.resume_key is None:
            return None
        channels: dict[str, tuple[int, str | None]] = {
            name: (ch.tracker.serial, ch.tracker.epoch)
                    for name, ch in self.channels.items()
            if ch.wanted and ch.tracker.epoch is not None}
        return RecoveryKey(self.resume_key, channels).encode()
