"""The connection lifecycle of one :class:`~rtkit.core.client.ClientCore`, sans I/O.

Connecting and closing, each attempt and its link (which URL, which transport, waiting for
a token), what a failure leads to (backoff, the connection-state TTL, suspension, giving up
on refused credentials), and the ``connected`` reply: the session, then channels, presence,
waiting requests, a renewed token and queued publishes resuming, reported as one
:class:`~rtkit.core.client_events.Resumed` once every channel is back.

The core's public methods (``connect``, ``link_opened``, ``link_down``...) call into it;
the state it keeps is that of the links: the others (schedule, credentials, channels...)
belong to the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rtkit.core import frames as fr
from rtkit.core.client_config import Session
from rtkit.core.client_events import AbortLink, OpenLink, Problem, Resumed
from rtkit.core.requests import Pending
from rtkit.core.states import ConnectionState, Trigger
from rtkit.core.timing import RandomSource
from rtkit.errors import (
    ConnectionClosed,
    ConnectionFailed,
    ConnectionSuspended,
    Disconnected,
    InvalidCredentials,
    RtkitError,
    TokenExpired,
)

if TYPE_CHECKING:
    from rtkit.core.client import ClientCore

S = ConnectionState


class Connection:
    """Attempts, links, failures and closing, for one :class:`~rtkit.core.client.ClientCore`."""

    def __init__(self, core: ClientCore, rng: RandomSource) -> None:
        self.core = core
        self.link = 0  # id of the current link (0: none)
        self._link_ids = iter(range(1, 1 << 62))
        self.link_open = False
        #: The transport of the latest link opened (or being opened).
        self.transport = core.transports.current
        #: Why the broker is closing the link (its ``closed`` or fatal ``error`` frame).
        self.close_error: RtkitError | None = None
        self.waiting_token = False  # the attempt waits for a token before opening its link
        self._attempt_opened = False  # the failed attempt's link had opened
        self._rng = rng
        #: The broker URLs: ``config.url``, then ``config.fallback_urls`` (other nodes of a
        #: cluster); ``url_index`` names the one in use.
        self.urls = (core.config.url, *core.config.fallback_urls)
        self.url_index = 0
        # Channels resume one by one after 'connected': Resumed is told when all are back.
        self._resuming: set[str] = set()
        self._resume_connected = 0.0
        self._resumed_flag = False
        self._replayed_before = 0

    # ================================================================ lifecycle

    def connect(self, now: float) -> None:
        core = self.core
        state = core.state
        if state in (S.INITIALIZED, S.CLOSED, S.FAILED):
            core.schedule.fresh()
            core.transports.reset()
            core.transition(Trigger.CONNECT, "connect() called", now)
            self.start_attempt(now)
        elif state in (S.DISCONNECTED, S.SUSPENDED):
            core.transition(Trigger.CONNECT, "connect() called: retrying now", now)
            self.start_attempt(now)

    def reconnect(self, now: float) -> None:
        core = self.core
        core.transports.reset()
        if core.state is S.CONNECTED:
            core.schedule.retry_now = True
            err = Disconnected("reconnect() called")
            core.out.append(AbortLink(err))
            self.link_down(self.link, err, now, report=False)
        else:
            self.connect(now)

    def close(self, now: float) -> None:
        core = self.core
        state = core.state
        if state in (S.CLOSED, S.CLOSING):
            return
        core.transition(Trigger.CLOSE, "close() called", now)
        if state is S.CONNECTED and self.link_open:
            # Publishes sent on this link are acked before 'closed' (the broker answers
            # in order); those not sent fail now, the others when the link goes.
            core.requests.send(fr.Close, Pending("close", None, None, now))
            core.schedule.close_deadline = now + core.config.close_timeout
            self._closing(unsent_only=True)
            return
        if core.state is S.CLOSING:  # a connect attempt was in progress
            if self.link:
                core.out.append(AbortLink(ConnectionClosed("close() called")))
            self.link = 0
            self.link_open = False
            core.transition(Trigger.TRANSPORT_LOST, "closed", now)
        self._closing(unsent_only=False)

    def _closing(self, unsent_only: bool) -> None:
        core = self.core
        err = ConnectionClosed("the client was closed")
        core.publishing.fail(ConnectionClosed("the client was closed before sending it"),
                             unsent_only)
        core.requests.fail_all(err)
        for ch in core.channels.values():
            for op in ch.clear():
                core.requests.failed(op, err)
        if core.renewal.ops:
            core.renewal.trouble(err)
        core.credentials.fetch = None
        self.waiting_token = False
        core.schedule.retry_at = core.schedule.attempt_deadline = None
        core.resume_key = None

    def start_attempt(self, now: float) -> None:
        """Begin a connection attempt (state connecting): get a token if needed, then open."""
        core = self.core
        creds = core.credentials.credentials_for_connect(now)
        if isinstance(creds, RtkitError):
            core.schedule.begin(now, core.config.connect_timeout)
            self.attempt_failed(creds, now)
        elif creds is None:
            # Wait for a token: fetched now, or when a failing auth_callback may be retried.
            core.schedule.begin(now, None)  # the fetch has its own deadline
            self.waiting_token = True
            core.renewal.fetch("a token is needed to connect", now)
        else:
            core.schedule.begin(now, core.config.connect_timeout)
            self.open_link(now)

    @property
    def url(self) -> str:
        return self.urls[self.url_index]

    def _next_url(self) -> None:
        """This node refused, timed out or went away: the next attempt goes to another,
        chosen at random among the others (so the clients of a dead node spread over the
        nodes left; each resumes there, with the same backoff and jitter)."""
        if len(self.urls) > 1:
            others = [i for i in range(len(self.urls)) if i != self.url_index]
            self.url_index = others[min(len(others) - 1, int(self._rng.random() * len(others)))]

    def open_link(self, now: float) -> None:
        core = self.core
        self.link = next(self._link_ids)
        self.link_open = False
        self.close_error = None
        core.schedule.attempt_deadline = now + core.config.connect_timeout
        self.transport = core.transports.current
        core.out.append(OpenLink(self.url, self.transport))

    # ================================================================ links

    def link_opened(self, link: int, now: float) -> None:
        core = self.core
        if link != self.link or core.state is not S.CONNECTING:
            return
        self.link_open = True
        core.schedule.liveness.heard(now)
        creds = core.credentials.credentials_for_connect(now)
        if not isinstance(creds, dict):  # it expired while the link opened
            err = creds or TokenExpired("the token expired while connecting")
            core.out.append(AbortLink(err))
            self.link_down(link, err, now)
            return
        core.requests.send(fr.Connect, Pending("connect", None, None, now),
                           client_id=core.config.client_id, resume=core.resume_key, **creds)

    def probe_done(self, ok: bool, now: float) -> None:
        core = self.core
        if not core.transports.probe_result(ok, now) or core.state is not S.CONNECTED:
            return
        preferred = core.transports.preferred
        core.schedule.retry_now = True
        err = Disconnected(f"moving back to {preferred}: it gets through again")
        core.out.append(AbortLink(err))
        self.link_down(self.link, err, now, report=False)

    def link_down(self, link: int, error: RtkitError, now: float, report: bool = True) -> None:
        if link != self.link or link == 0:
            return  # an old link's last words
        core = self.core
        err = self.close_error or error
        self.link = 0
        self._attempt_opened = self.link_open
        self.link_open = False
        self.close_error = None
        core.outbox.transport_lost()
        for ch in core.channels.values():
            ch.link_lost()
        core.requests.link_lost(err)  # (a renewed token is presented on the next link)
        state = core.state
        if state is S.CLOSING:
            core.schedule.close_deadline = None
            core.publishing.fail(ConnectionClosed("the client was closed"))
            core.transition(Trigger.TRANSPORT_LOST, "closed", now)
        elif state is S.CONNECTED:
            if err.code == 50001:  # the broker is shutting down: another node at once
                self._next_url()
            core.schedule.lost(now)
            core.transports.disconnected()
            if report:
                core.out.append(Problem(err, "connection lost"))
            core.transition(Trigger.TRANSPORT_LOST, err.message, now, err)
            self._after_failure(err, now)
        elif state is S.CONNECTING:
            self.attempt_failed(err, now)

    # ================================================================ failures

    def attempt_failed(self, err: RtkitError, now: float, report: bool = True) -> None:
        core = self.core
        if core.state is not S.CONNECTING:
            return
        opened, self._attempt_opened = self.link_open or self._attempt_opened, False
        if self.link:
            core.out.append(AbortLink(err))
            self.link = 0
            self.link_open = False
        if report:
            core.out.append(Problem(err, "connect failed"))
        if self._is_fatal(err):
            self._fail(err, now)
            return
        self._next_url()
        core.schedule.failed(now)
        reason = f"connect failed: {err.message}"
        switched = core.transports.attempt_failed(self.transport, err, opened)
        if switched is not None:
            reason += f" ({switched})"
            core.schedule.retry_now = True  # the other transport is tried at once
        if core.schedule.ttl_passed(now, self.ttl()):
            core.transition(Trigger.TTL_EXPIRED, reason, now, err)  # (still) suspended
            self._suspended()
        else:
            core.transition(Trigger.TRANSPORT_LOST, reason, now, err)
        self._after_failure(err, now)

    def _after_failure(self, err: RtkitError, now: float) -> None:
        """Plan the next attempt: with backoff while disconnected, at the slower suspended
        interval once the TTL has passed; at once when a new token is all it takes."""
        core = self.core
        sched = core.schedule
        if isinstance(err, TokenExpired) and core.credentials.renewable:
            core.credentials.reject()
            # The cause is known; but if the new token is refused too, back off.
            sched.retry_now = sched.attempt <= 1
        if core.state is S.SUSPENDED:
            sched.suspend(now)
        else:
            sched.plan_retry(now)
            self.check_ttl(now)

    def ttl(self) -> float:
        """How long the broker keeps the connection's state (the session's, or configured)."""
        s = self.core.session
        return s.connection_state_ttl if s is not None else self.core.config.connection_state_ttl

    def check_ttl(self, now: float) -> None:
        core = self.core
        if core.state is S.DISCONNECTED and core.schedule.ttl_passed(now, self.ttl()):
            core.transition(Trigger.TTL_EXPIRED,
                            f"disconnected for more than {self.ttl():g} s", now)
            self._suspended()
            core.schedule.suspend(now)

    def _suspended(self) -> None:
        """Continuity is no longer promised: what waits for the connection fails."""
        core = self.core
        core.publishing.fail(ConnectionSuspended(
            "the connection is suspended: queued publishes cannot be kept"))
        core.requests.fail_waiting(ConnectionSuspended("the connection is suspended"))

    def _is_fatal(self, err: RtkitError) -> bool:
        """Refused credentials are refused again: stop instead of retrying. With an
        auth_callback, a refused token gets one more chance: a new token (signed with a
        rotated key, say) may be accepted."""
        creds = self.core.credentials
        if isinstance(err, InvalidCredentials) and creds.renewable and \
                creds.token is not None and not creds.second_chance_used:
            creds.second_chance_used = True
            creds.reject()
            self.core.schedule.retry_now = True
            return False
        if isinstance(err, InvalidCredentials) or err.code in (40106, 40107, 40009, 40301):
            return True  # (40301: this page's origin is not allowed: it will not be)
        return isinstance(err, TokenExpired) and not creds.renewable

    def _fail(self, err: RtkitError, now: float) -> None:
        core = self.core
        core.transition(Trigger.FATAL, err.message, now, err)
        core.schedule.retry_at = core.schedule.attempt_deadline = None
        failed = ConnectionFailed(f"connection failed: {err.message}")
        core.publishing.fail(failed)
        core.requests.fail_waiting(failed)
        for ch in core.channels.values():
            for op, _ in ch.attach_waiters:
                core.requests.failed(op, failed)
            ch.attach_waiters = []

    # ================================================================ connected

    def connected(self, f: fr.Connected, now: float) -> None:
        """The broker's ``connected`` reply: the session starts, and everything resumes."""
        core = self.core
        resumed_asked = core.resume_key is not None
        session = core.session = Session(
            connection_id=f.connection_id, connection_key=f.connection_key,
            client_id=f.client_id, heartbeat_interval=f.heartbeat_interval / 1000,
            connection_state_ttl=f.connection_state_ttl / 1000,
            token_expires=None if f.token_expires is None else f.token_expires / 1000,
            limits=dict(f.limits), server_time=f.server_time / 1000)
        core.credentials.synced(f.server_time, now)
        core.credentials.second_chance_used = False
        session.server_time_offset = core.credentials.server_offset
        core.schedule.connected(now, session.heartbeat_interval, core.config.heartbeat_grace)
        core.resume_key = f.connection_key
        core.outbox.pace(f.limits.get("publish_rate"), f.limits.get("publish_burst"), now)
        core.stats["connects"] += 1
        core.stats["resumed"] += f.resumed
        core.transports.connected(self.transport, now)
        reason = f"connected as {f.connection_id} over {self.transport}" + (
            " (resumed)" if f.resumed else "")
        if resumed_asked and not f.resumed:
            reason += ": the broker could not resume the connection; channels resume " \
                      "from their last serial"
        core.transition(Trigger.CONNECTED, reason, now)
        # Channels resume one by one; note when all are back, for Resumed.
        self._resume_connected, self._resumed_flag = now, f.resumed
        self._replayed_before = sum(c.replayed for c in core.channels.values())
        core.reconcile(now)
        self._resuming = {n for n, c in core.channels.items() if c.inflight is not None}
        for ch in core.channels.values():
            if ch.entered[0]:
                core.requests.send(fr.Presence, Pending("presence", None, ch.name, now,
                                                        ("enter", ch.entered[1])),
                                   channel=ch.name, op="enter", data=ch.entered[1])
        core.requests.send_waiting(now)
        if core.renewal.unpresented():
            core.renewal.present(now)  # renewed while we were connecting
        elif core.renewal.ops and core.credentials.fetch is None:
            core.renewal.settle(core.credentials.token)
        core.publishing.flush(now)
        self._maybe_resumed(now)

    def resume_done(self, channel: str, now: float) -> None:
        """``channel`` is back (attached, or refused) after a (re)connection."""
        if channel in self._resuming:
            self._resuming.discard(channel)
            self._maybe_resumed(now)

    def _maybe_resumed(self, now: float) -> None:
        if self._resuming or self._resume_connected == 0.0:
            return
        core = self.core
        channels = core.channels.values()
        replayed = sum(c.replayed for c in channels) - self._replayed_before
        info = Resumed(core.schedule.attempt_started, self._resume_connected, now,
                       self._resumed_flag, sum(1 for c in channels if c.wanted), replayed)
        self._resume_connected = 0.0
        core.last_resume = info
        core.out.append(info)
