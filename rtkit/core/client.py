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
* :class:`~rtkit.core.transports.TransportPicker` (the transport of each attempt).

Operations return an ``op`` number; their outcome arrives later as ``OpDone``/``OpFailed``.
The frames the broker sends are handled in :mod:`rtkit.core.client_input`.
"""

from __future__ import annotations

import functools
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.channel_state import ChannelCore
from rtkit.core.client_config import ClientConfig, Session
from rtkit.core.client_events import (
    AbortLink,
    OpenLink,
    OpFailed,
    Output,
    Probe,
    Problem,
    Resumed,
    StateChanged,
)
from rtkit.core.client_input import Input
from rtkit.core.credentials import Credentials
from rtkit.core.outbox import Outbox
from rtkit.core.publishing import Publishing
from rtkit.core.recovery import RecoveryKey
from rtkit.core.renewal import Renewal
from rtkit.core.requests import Pending, Requests, Waiting
from rtkit.core.schedule import Pulse, Schedule
from rtkit.core.states import ConnectionState, StateChange, StateMachine, Trigger
from rtkit.core.timing import Liveness, RandomSource
from rtkit.core.transports import TransportPicker
from rtkit.errors import (
    ConnectionClosed,
    ConnectionFailed,
    ConnectionSuspended,
    Disconnected,
    InvalidCredentials,
    ProtocolError,
    RequestTimeout,
    RtkitError,
    TokenExpired,
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
        #: The transport of the latest link opened (or being opened).
        self.link_transport = self.transports.current
        self._attempt_opened = False  # the failed attempt's link had opened
        self.resume_key: str | None = None
        self.last_rtt: float | None = None
        self.last_resume: Resumed | None = None
        self.stats = {"connects": 0, "resumed": 0, "malformed": 0}
        self._input = Input(self)
        self._link = 0  # id of the current link (0: none)
        self._link_ids = iter(range(1, 1 << 62))
        self.link_open = False
        self.close_error: RtkitError | None = None
        self._waiting_token = False
        self._resuming: set[str] = set()
        self._resume_connected = 0.0
        self._resumed_flag = False
        self._replayed_before = 0
        self._rng = rng
        #: The broker URLs: ``config.url``, then ``config.fallback_urls`` (other nodes of a
        #: cluster); ``url_index`` names the one in use.
        self.urls = (config.url, *config.fallback_urls)
        self.url_index = 0
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
            else self.link_transport
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
        if self._waiting_token and self.state is S.CONNECTING:
            self._waiting_token = False
            self._open_link(now)
        elif self.state is S.CONNECTED and self.link_open:
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
        if self._waiting_token and self.state is S.CONNECTING:
            self._waiting_token = False
            self._attempt_failed(err, now, report=False)

    # ================================================================ lifecycle

    def connect(self, now: float) -> None:
        """Connect, or retry at once if waiting to retry."""
        state = self.state
        if state in (S.INITIALIZED, S.CLOSED, S.FAILED):
            self.schedule.fresh()
            self.transports.reset()
            self.transition(Trigger.CONNECT, "connect() called", now)
            self._start_attempt(now)
        elif state in (S.DISCONNECTED, S.SUSPENDED):
            self.transition(Trigger.CONNECT, "connect() called: retrying now", now)
            self._start_attempt(now)

    def reconnect(self, now: float) -> None:
        """Drop the link now and reconnect at once (no backoff), resuming."""
        self.transports.reset()
        if self.state is S.CONNECTED:
            self.schedule.retry_now = True
            err = Disconnected("reconnect() called")
            self.out.append(AbortLink(err))
            self.link_down(self._link, err, now, report=False)
        else:
            self.connect(now)

    def close(self, now: float) -> None:
        """Say goodbye to the broker and stop. Pending operations fail."""
        state = self.state
        if state in (S.CLOSED, S.CLOSING):
            return
        self.transition(Trigger.CLOSE, "close() called", now)
        if state is S.CONNECTED and self.link_open:
            # Publishes sent on this link are acked before 'closed' (the broker answers
            # in order); those not sent fail now, the others when the link goes.
            self.requests.send(fr.Close, Pending("close", None, None, now))
            self.schedule.close_deadline = now + self.config.close_timeout
            self._closing(unsent_only=True)
            return
        if self.state is S.CLOSING:  # a connect attempt was in progress
            if self._link:
                self.out.append(AbortLink(ConnectionClosed("close() called")))
            self._link = 0
            self.link_open = False
            self.transition(Trigger.TRANSPORT_LOST, "closed", now)
        self._closing(unsent_only=False)

    def _closing(self, unsent_only: bool) -> None:
        err = ConnectionClosed("the client was closed")
        self.publishing.fail(ConnectionClosed("the client was closed before sending it"),
                             unsent_only)
        self.requests.fail_all(err)
        for ch in self.channels.values():
            for op in ch.clear():
                self.requests.failed(op, err)
        if self.renewal.ops:
            self.renewal.trouble(err)
        self.credentials.fetch = None
        self._waiting_token = False
        self.schedule.retry_at = self.schedule.attempt_deadline = None
        self.resume_key = None

    def _start_attempt(self, now: float) -> None:
        """Begin a connection attempt (state connecting): get a token if needed, then open."""
        creds = self.credentials.credentials_for_connect(now)
        if isinstance(creds, RtkitError):
            self.schedule.begin(now, self.config.connect_timeout)
            self._attempt_failed(creds, now)
        elif creds is None:
            # Wait for a token: fetched now, or when a failing auth_callback may be retried.
            self.schedule.begin(now, None)  # the fetch has its own deadline
            self._waiting_token = True
            self.renewal.fetch("a token is needed to connect", now)
        else:
            self.schedule.begin(now, self.config.connect_timeout)
            self._open_link(now)

    @property
    def url(self) -> str:
        """The broker URL the current (or next) connection attempt uses."""
        return self.urls[self.url_index]

    def _next_url(self) -> None:
        """This node refused, timed out or went away: the next attempt goes to another,
        chosen at random among the others (so the clients of a dead node spread over the
        nodes left; each resumes there, with the same backoff and jitter)."""
        if len(self.urls) > 1:
            others = [i for i in range(len(self.urls)) if i != self.url_index]
            self.url_index = others[min(len(others) - 1, int(self._rng.random() * len(others)))]

    def _open_link(self, now: float) -> None:
        self._link = next(self._link_ids)
        self.link_open = False
        self.close_error = None
        self.schedule.attempt_deadline = now + self.config.connect_timeout
        self.link_transport = self.transports.current
        self.out.append(OpenLink(self.url, self.link_transport))

    @property
    def link_id(self) -> int:
        """The id of the link the last OpenLink asked for (the driver echoes it back)."""
        return self._link

    def link_opened(self, link: int, now: float) -> None:
        """The link asked for by the last ``OpenLink`` is up: say who we are."""
        if link != self._link or self.state is not S.CONNECTING:
            return
        self.link_open = True
        self.schedule.liveness.heard(now)
        creds = self.credentials.credentials_for_connect(now)
        if not isinstance(creds, dict):  # it expired while the link opened
            err = creds or TokenExpired("the token expired while connecting")
            self.out.append(AbortLink(err))
            self.link_down(link, err, now)
            return
        self.requests.send(fr.Connect, Pending("connect", None, None, now),
                           client_id=self.config.client_id, resume=self.resume_key, **creds)

    def probe_done(self, ok: bool, now: float) -> None:
        """The driver's :class:`Probe` of the preferred transport ended (``ok``: it got
        through): if so, move back to it by reconnecting and resuming now."""
        if not self.transports.probe_result(ok, now) or self.state is not S.CONNECTED:
            return
        preferred = self.transports.preferred
        self.schedule.retry_now = True
        err = Disconnected(f"moving back to {preferred}: it gets through again")
        self.out.append(AbortLink(err))
        self.link_down(self._link, err, now, report=False)

    def link_failed(self, link: int, error: RtkitError, now: float) -> None:
        """The link asked for could not be opened."""
        self.link_down(link, error, now)

    def link_lost(self, link: int, error: RtkitError, now: float) -> None:
        """The link is gone (closed by either side, or broken)."""
        self.link_down(link, error, now)

    def link_down(self, link: int, error: RtkitError, now: float, report: bool = True) -> None:
        if link != self._link or link == 0:
            return  # an old link's last words
        err = self.close_error or error
        self._link = 0
        self._attempt_opened = self.link_open
        self.link_open = False
        self.close_error = None
        self.outbox.transport_lost()
        for ch in self.channels.values():
            ch.link_lost()
        self.requests.link_lost(err)  # (a renewed token is presented on the next link)
        state = self.state
        if state is S.CLOSING:
            self.schedule.close_deadline = None
            self.publishing.fail(ConnectionClosed("the client was closed"))
            self.transition(Trigger.TRANSPORT_LOST, "closed", now)
        elif state is S.CONNECTED:
            if err.code == 50001:  # the broker is shutting down: another node at once
                self._next_url()
            self.schedule.lost(now)
            self.transports.disconnected()
            if report:
                self.out.append(Problem(err, "connection lost"))
            self.transition(Trigger.TRANSPORT_LOST, err.message, now, err)
            self._after_failure(err, now)
        elif state is S.CONNECTING:
            self._attempt_failed(err, now)

    def _attempt_failed(self, err: RtkitError, now: float, report: bool = True) -> None:
        if self.state is not S.CONNECTING:
            return
        opened, self._attempt_opened = self.link_open or self._attempt_opened, False
        if self._link:
            self.out.append(AbortLink(err))
            self._link = 0
            self.link_open = False
        if report:
            self.out.append(Problem(err, "connect failed"))
        if self._is_fatal(err):
            self._fail(err, now)
            return
        self._next_url()
        self.schedule.failed(now)
        reason = f"connect failed: {err.message}"
        switched = self.transports.attempt_failed(self.link_transport, err, opened)
        if switched is not None:
            reason += f" ({switched})"
            self.schedule.retry_now = True  # the other transport is tried at once
        if self.schedule.ttl_passed(now, self._ttl()):
            self.transition(Trigger.TTL_EXPIRED, reason, now, err)  # (still) suspended
            self._suspended(now)
        else:
            self.transition(Trigger.TRANSPORT_LOST, reason, now, err)
        self._after_failure(err, now)

    def _after_failure(self, err: RtkitError, now: float) -> None:
        """Plan the next attempt: with backoff while disconnected, at the slower suspended
        interval once the TTL has passed; at once when a new token is all it takes."""
        sched = self.schedule
        if isinstance(err, TokenExpired) and self.credentials.renewable:
            self.credentials.reject()
            # The cause is known; but if the new token is refused too, back off.
            sched.retry_now = sched.attempt <= 1
        if self.state is S.SUSPENDED:
            sched.suspend(now)
        else:
            sched.plan_retry(now)
            self._check_ttl(now)

    def _ttl(self) -> float:
        s = self.session
        return s.connection_state_ttl if s is not None else self.config.connection_state_ttl

    def _check_ttl(self, now: float) -> None:
        if self.state is S.DISCONNECTED and self.schedule.ttl_passed(now, self._ttl()):
            self.transition(Trigger.TTL_EXPIRED,
                            f"disconnected for more than {self._ttl():g} s", now)
            self._suspended(now)
            self.schedule.suspend(now)

    def _suspended(self, now: float) -> None:
        """Continuity is no longer promised: what waits for the connection fails."""
        self.publishing.fail(ConnectionSuspended(
            "the connection is suspended: queued publishes cannot be kept"))
        self.requests.fail_waiting(ConnectionSuspended("the connection is suspended"))

    def _is_fatal(self, err: RtkitError) -> bool:
        """Refused credentials are refused again: stop instead of retrying. With an
        auth_callback, a refused token gets one more chance: a new token (signed with a
        rotated key, say) may be accepted."""
        creds = self.credentials
        if isinstance(err, InvalidCredentials) and creds.renewable and \
                creds.token is not None and not creds.second_chance_used:
            creds.second_chance_used = True
            creds.reject()
            self.schedule.retry_now = True
            return False
        if isinstance(err, InvalidCredentials) or err.code in (40106, 40107, 40009, 40301):
            return True  # (40301: this page's origin is not allowed: it will not be)
        return isinstance(err, TokenExpired) and not creds.renewable

    def _fail(self, err: RtkitError, now: float) -> None:
        self.transition(Trigger.FATAL, err.message, now, err)
        self.schedule.retry_at = self.schedule.attempt_deadline = None
        failed = ConnectionFailed(f"connection failed: {err.message}")
        self.publishing.fail(failed)
        self.requests.fail_waiting(failed)
        for ch in self.channels.values():
            for op, _ in ch.attach_waiters:
                self.requests.failed(op, failed)
            ch.attach_waiters = []

    # ================================================================ connected

    def on_connected(self, f: fr.Connected, now: float) -> None:
        resumed_asked = self.resume_key is not None
        self.session = Session(
            connection_id=f.connection_id, connection_key=f.connection_key,
            client_id=f.client_id, heartbeat_interval=f.heartbeat_interval / 1000,
            connection_state_ttl=f.connection_state_ttl / 1000,
            token_expires=None if f.token_expires is None else f.token_expires / 1000,
            limits=dict(f.limits), server_time=f.server_time / 1000)
        self.credentials.synced(f.server_time, now)
        self.credentials.second_chance_used = False
        self.session.server_time_offset = self.credentials.server_offset
        self.schedule.connected(now, self.session.heartbeat_interval,
                                self.config.heartbeat_grace)
        self.resume_key = f.connection_key
        self.outbox.pace(f.limits.get("publish_rate"), f.limits.get("publish_burst"), now)
        self.stats["connects"] += 1
        self.stats["resumed"] += f.resumed
        self.transports.connected(self.link_transport, now)
        reason = f"connected as {f.connection_id} over {self.link_transport}" + (
            " (resumed)" if f.resumed else "")
        if resumed_asked and not f.resumed:
            reason += ": the broker could not resume the connection; channels resume " \
                      "from their last serial"
        self.transition(Trigger.CONNECTED, reason, now)
        # Channels resume one by one; note when all are back, for Resumed.
        self._resume_connected, self._resumed_flag = now, f.resumed
        self._replayed_before = sum(c.replayed for c in self.channels.values())
        self.reconcile(now)
        self._resuming = {n for n, c in self.channels.items() if c.inflight is not None}
        for ch in self.channels.values():
            if ch.entered[0]:
                self.requests.send(fr.Presence, Pending("presence", None, ch.name, now,
                                                        ("enter", ch.entered[1])),
                                   channel=ch.name, op="enter", data=ch.entered[1])
        self.requests.send_waiting(now)
        if self.renewal.unpresented():
            self.renewal.present(now)  # renewed while we were connecting
        elif self.renewal.ops and self.credentials.fetch is None:
            self.renewal.settle(self.credentials.token)
        self.publishing.flush(now)
        self._maybe_resumed(now)

    def resume_done(self, channel: str, now: float) -> None:
        if channel in self._resuming:
            self._resuming.discard(channel)
            self._maybe_resumed(now)

    def _maybe_resumed(self, now: float) -> None:
        if self._resuming or self._resume_connected == 0.0:
            return
        replayed = sum(c.replayed for c in self.channels.values()) - self._replayed_before
        info = Resumed(self.schedule.attempt_started, self._resume_connected, now,
                       self._resumed_flag, sum(1 for c in self.channels.values() if c.wanted),
                       replayed)
        self._resume_connected = 0.0
        self.last_resume = info
        self.out.append(info)

    # ================================================================ input

    def receive(self, text: str | bytes, now: float) -> None:
        """Handle one frame from the broker."""
        self.schedule.liveness.heard(now)
        self._input.receive(text, now)

    # ================================================================ time

    def next_deadline(self) -> float | None:
        """When the driver must call :meth:`timer` next (monotonic), if ever."""
        sched, creds, state = self.schedule, self.credentials, self.state
        times: list[float | None] = [self.requests.next_deadline()]
        if state in (S.DISCONNECTED, S.SUSPENDED):
            times.append(sched.retry_at)
            if state is S.DISCONNECTED and sched.lost_at is not None:
                times.append(sched.lost_at + self._ttl())
        elif state is S.CONNECTING:
            times.append(sched.attempt_deadline)
            if self._waiting_token and creds.fetch is None:
                times.append(creds.retry_at)
        elif state is S.CLOSING:
            times.append(sched.close_deadline)
        elif state is S.CONNECTED:
            times += sched.connected_deadlines()
            times.append(self.transports.deadline())
            times.append(self.publishing.flush_at)
            if creds.fetch is None:
                times.append(self.renewal.due(sched.last_poll))
        if creds.fetch is not None:
            times.append(creds.fetch.deadline)
        times += [ch.retry_at for ch in self.channels.values()]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def timer(self, now: float) -> None:
        """Do what is due at ``now``."""
        sched = self.schedule
        stalled = sched.observe(now)
        state = self.state
        if state in (S.DISCONNECTED, S.SUSPENDED):
            self._check_ttl(now)
            if sched.retry_at is not None and now >= sched.retry_at:
                self.transition(Trigger.RETRY, f"retry #{sched.attempt + 1}", now)
                self._start_attempt(now)
        elif state is S.CONNECTING:
            if self._waiting_token and self.credentials.fetch is None:
                self.renewal.fetch("a token is needed to connect", now)
            if sched.attempt_deadline is not None and now >= sched.attempt_deadline:
                what = "no 'connected' reply" if self.link_open else "the link did not open"
                self._attempt_failed(RequestTimeout(
                    f"{what} within {self.config.connect_timeout:g} s", code=40801), now)
        elif state is S.CLOSING:
            if sched.close_deadline is not None and now >= sched.close_deadline:
                self.out.append(AbortLink(ConnectionClosed("close timed out")))
                self.link_down(self._link, ConnectionClosed("closed"), now)
        elif state is S.CONNECTED:
            self._connected_timers(now, stalled)
        err = self.credentials.timed_out(now)
        if err is not None:
            self.token_trouble(err, now)
        if self.state is S.CONNECTED and self.credentials.fetch is None:
            at = self.renewal.due(now)
            if at is not None and now >= at:
                self.renewal.fetch("the token expires soon", now)
        for ch in self.channels.values():
            if ch.retry_at is not None and now >= ch.retry_at:
                ch.retry_at = None
                self.reconcile(now, ch)
        for op in self.requests.expired(now):
            self._expire(op)

    def _connected_timers(self, now: float, stalled: bool) -> None:
        sched = self.schedule
        if sched.pulse(now, stalled) is Pulse.DEAD:
            silent = now - sched.liveness.last_heard
            err = Disconnected(f"no heartbeat from the broker for {silent:.2f} s")
            self.out.append(AbortLink(err))
            self.link_down(self._link, err, now)
            return
        if self.transports.probe_due(now):
            self.out.append(Probe(self.url, self.transports.preferred))
        if sched.ping_due(now):
            self.requests.trim_pings()
            self.requests.send(fr.Heartbeat, Pending("ping", None, None, now))
        flush_at = self.publishing.flush_at
        if flush_at is not None and now >= flush_at:
            self.publishing.flush(now)

    def _expire(self, op: int) -> None:
        err = self.publishing.expire(op)
        if err is None:
            err = RequestTimeout("no reply in time") if self.state is S.CONNECTED else \
                self.unusable("complete the request (still not connected)")
        self.requests.forget(op)
        for ch in self.channels.values():
            ch.forget(op)
        self.renewal.forget(op)
        self.out.append(OpFailed(op, err))

    # ================================================================ recovery

    def recovery_key(self) -> str | None:
        """The connection key and every wanted channel's position, as one string."""
        if self.resume_key is None:
            return None
        channels: dict[str, tuple[int, str | None]] = {
            name: (ch.tracker.serial, ch.tracker.epoch) for name, ch in self.channels.items()
            if ch.wanted and ch.tracker.epoch is not None}
        return RecoveryKey(self.resume_key, channels).encode()

