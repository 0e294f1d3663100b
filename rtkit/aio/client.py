"""The client's public face: connecting and closing, requests, channels, and what each
(re)connection does: resume the connection and every attached channel from the last serial
seen, then send the publishes still waiting for an ack. The retry policy lives in
:mod:`rtkit.aio.supervisor`, one WebSocket in :mod:`rtkit.aio.link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from types import TracebackType
from typing import Any

from websockets.exceptions import ConnectionClosed

from rtkit import _rerun
from rtkit.aio.auth import AuthCallback, TokenSource, renew_forever
from rtkit.aio.channel import Channel
from rtkit.aio.link import Link, error_from_close
from rtkit.aio.publishing import Publisher
from rtkit.aio.subscription import PublishResult
from rtkit.aio.supervisor import ResumeInfo, Supervisor
from rtkit.core import client as cc
from rtkit.core import frames as fr
from rtkit.core.recovery import RecoveryKey
from rtkit.core.states import ConnectionState, Trigger
from rtkit.core.timing import Backoff, RandomSource
from rtkit.errors import (
    AuthError,
    ConnectionFailed,
    ConnectionSuspended,
    Disconnected,
    RequestTimeout,
    RtkitError,
)
from rtkit.errors import (
    ConnectionClosed as RtConnectionClosed,
)

log = logging.getLogger("rtkit.client")
S = ConnectionState

__all__ = ["Client", "ResumeInfo", "error_from_close"]


class Client(Supervisor):
    """A connection to an rtkit broker that reconnects and resumes by itself.

    Give one of ``key`` (trusted code only), ``token`` or ``auth_callback`` (called, sync or
    async, for the first token, again before it expires and after an expiry; returns the
    token string). ``client_id`` names this client when using a key; with a token, the
    token's client id applies. ``recover`` is a :attr:`recovery_key` of an earlier client.

    Reconnection: ``backoff`` (default base 0.5 s, cap 15 s, full jitter, random source
    ``random_source``), ``suspended_retry_interval`` (default 15 s) once suspended. Liveness:
    a link silent for the broker's heartbeat interval plus ``heartbeat_grace`` (default half
    the interval) is dropped. At most ``max_queued_publishes`` publishes wait for an ack.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        token: str | None = None,
        auth_callback: AuthCallback | None = None,
        client_id: str | None = None,
        recover: str | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        heartbeat_grace: float | None = None,
        backoff: Backoff | None = None,
        suspended_retry_interval: float = 15.0,
        connection_state_ttl: float = 120.0,
        max_queued_publishes: int = 1000,
        random_source: RandomSource | None = None,
        max_frame_size: int = 16 * 1024 * 1024,
    ) -> None:
        super().__init__()
        if key is None and token is None and auth_callback is None:
            raise ValueError("give key=, token= or auth_callback=")
        if key is not None and (token is not None or auth_callback is not None):
            raise ValueError("give either a key or a token/auth_callback, not both")
        self.url = url
        self._key = key
        self._auth = TokenSource(token, auth_callback) if key is None else None
        self._requested_client_id = client_id
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff()
        self.suspended_retry_interval = suspended_retry_interval
        self._default_ttl = connection_state_ttl
        self._rng: RandomSource = random_source or random.Random()
        self._grace = heartbeat_grace
        self._max_frame_size = max_frame_size
        self._core = cc.ClientCore(time.time())
        self._publisher = Publisher(self, max_queued_publishes)
        self._link: Link | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._retry_now = asyncio.Event()
        self._futures: dict[fr.Ref, asyncio.Future[fr.Frame]] = {}
        self._channels: dict[str, Channel] = {}
        self._resume_key: str | None = None
        self._replayed = 0
        #: Round-trip time of the last heartbeat, in seconds.
        self.last_rtt: float | None = None
        #: The last error reported by the broker, the link or token renewal.
        self.last_error: RtkitError | None = None
        #: How the latest (re)connection went.
        self.last_resume: ResumeInfo | None = None
        if recover is not None:
            self._restore(RecoveryKey.decode(recover))
        _rerun.replace_previous("client", self, Client._close_soon)

    # ---------------------------------------------------------------- properties

    @property
    def connection_id(self) -> str | None:
        return self._core.session.connection_id if self._core.session else None

    @property
    def client_id(self) -> str | None:
        return self._core.session.client_id if self._core.session else self._requested_client_id

    @property
    def limits(self) -> dict[str, int]:
        """The limits the broker announced (message size, publish rate, ...)."""
        return dict(self._core.session.limits) if self._core.session else {}

    @property
    def heartbeat_interval(self) -> float | None:
        return self._core.session.heartbeat_interval if self._core.session else None

    @property
    def connection_state_ttl(self) -> float:
        s = self._core.session
        return s.connection_state_ttl if s else self._default_ttl

    @property
    def token(self) -> str | None:
        """The token in use (None with a key)."""
        return self._auth.token if self._auth else None

    @property
    def token_source(self) -> TokenSource | None:
        return self._auth

    @property
    def token_expires(self) -> float | None:
        """When the current token expires (seconds since the epoch)."""
        if self._auth is None or self._auth.claims is None:
            return None
        return self._auth.claims.expires_at

    @property
    def next_renewal(self) -> float | None:
        """When the token will next be renewed (seconds since the epoch), if it will."""
        return self._auth.renew_at() if self._auth else None

    @property
    def queued_publishes(self) -> int:
        """Publishes waiting for their ack (sent or not yet sent)."""
        return len(self._publisher.outbox)

    @property
    def recovery_key(self) -> str | None:
        """A string from which a new client (``Client(..., recover=key)``) resumes this
        connection's channels, e.g. after a kernel restart, within the connection TTL."""
        if self._resume_key is None:
            return None
        channels: dict[str, tuple[int, str | None]] = {
            name: (ch.serial, ch.epoch) for name, ch in self._channels.items()
            if ch._want_attached and ch.epoch is not None}
        return RecoveryKey(self._resume_key, channels).encode()

    def _restore(self, key: RecoveryKey) -> None:
        self._resume_key = key.connection_key
        for name, (serial, epoch) in key.channels.items():
            ch = self.channel(name)
            ch._tracker.serial, ch._tracker.epoch = serial, epoch
            ch._want_attached = True

    # ---------------------------------------------------------------- lifecycle

    async def connect(self, timeout: float | None = None) -> None:
        """Connect (or wait for the reconnect in progress) and return once connected.

        Refused credentials raise at once (state ``failed``). If the broker cannot be reached
        within ``timeout`` (default ``connect_timeout``) the last error is raised and the
        client keeps retrying in the background; ``close()`` stops it.
        """
        if self.state is S.CONNECTED:
            return
        if self._supervisor is None or self._supervisor.done():
            self._transition(Trigger.CONNECT, "connect() called")
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
            if self._auth is not None and self._auth.renewable and self._renewer is None:
                self._renewer = asyncio.get_running_loop().create_task(renew_forever(
                    self._auth, self._present_token,
                    lambda attempt: self.backoff.delay(attempt, self._rng), self._report_error))
        else:
            self._retry_now.set()
        try:
            await self.wait_for_state(S.CONNECTED, S.FAILED, S.CLOSED,
                                      timeout=timeout or self.connect_timeout)
        except TimeoutError:
            err = self.last_error or RequestTimeout("not connected in time", code=40801)
            raise type(err)(f"{err.message} (still retrying in the background; close() "
                            f"stops it)", code=err.code) from None
        if self._core.state is not S.CONNECTED:  # (re-read: it changed while we waited)
            raise self.last_error or RtConnectionClosed("closed while connecting")

    async def reconnect(self, timeout: float | None = None) -> None:
        """Drop the link now and reconnect at once (no backoff), resuming; returns when
        connected again."""
        if self.state in (S.INITIALIZED, S.CLOSED, S.FAILED):
            await self.connect(timeout)
            return
        self._retry_now.set()
        state: ConnectionState = self._core.state
        if state is S.CONNECTED and self._link is not None:
            self._link.abort(Disconnected("reconnect() called"))
            await self.wait_for_state(S.DISCONNECTED, S.CONNECTING, S.FAILED, S.CLOSED,
                                      timeout=self.connect_timeout)
        await self.connect(timeout)

    async def close(self) -> None:
        """Say goodbye to the broker and stop. Pending publishes fail with ConnectionClosed."""
        if self.state in (S.CLOSED, S.CLOSING):
            return
        if self.state is S.INITIALIZED:
            self._transition(Trigger.CLOSE, "close() called")
            return
        tasks = [t for t in (self._supervisor, self._renewer) if t is not None]
        self._supervisor = self._renewer = None
        link = self._link
        if self.state in (S.CONNECTING, S.CONNECTED):
            self._transition(Trigger.CLOSE, "close() called")
            if link is not None and link.connected:
                with contextlib.suppress(RtkitError):
                    await self._request(fr.Close, timeout=min(2.0, self.request_timeout),
                                        internal=True)
        else:
            self._transition(Trigger.CLOSE, "close() called")
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._drop_link()
        self._publisher.fail_all(RtConnectionClosed("the client was closed before the ack"))
        for channel in self._channels.values():
            channel._close_all()
        if self._core.state is S.CLOSING:
            self._transition(Trigger.CLOSED, "closed")

    def _close_soon(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.close())

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _open(self) -> None:
        """One connection attempt: link, connect (resuming), re-attach, resend."""
        self._retry_now.clear()
        started = time.perf_counter()
        credentials = await self._credentials()
        link = Link(self.url, self._core, self._on_event, self.connect_timeout,
                    self._max_frame_size, self._grace, self._fail_pending, self._set_rtt)
        self._link = link
        await link.open()
        resume_from = self._resume_key
        try:
            reply = await self._request(fr.Connect, timeout=self.connect_timeout,
                                        resume=resume_from, internal=True, **credentials)
        except RequestTimeout:
            raise RequestTimeout("no 'connected' reply in time", code=40801) from None
        assert isinstance(reply, fr.Connected)
        connected = time.perf_counter()
        self._resume_key = reply.connection_key
        if resume_from is not None and not reply.resumed:
            why = "the broker could not resume the connection (TTL passed or broker restarted)"
            for ch in self._channels.values():
                ch._resume_refused(why)
        replayed_before = self._replayed
        channels = [ch for ch in self._channels.values() if ch._want_attached]
        await asyncio.gather(*(ch._reattach() for ch in channels))
        link.start_watchdog()
        self._transition(Trigger.CONNECTED, f"connected as {reply.connection_id}"
                         + (" (resumed)" if reply.resumed else ""))
        if self._auth is not None and self._auth.token != credentials["token"]:
            # Renewed while we were connecting with the previous token: present the new one.
            await self._request(fr.Auth, token=self._auth.token, internal=True)
        await self._publisher.flush()
        self.last_resume = ResumeInfo(started, connected, time.perf_counter(), reply.resumed,
                                      len(channels), self._replayed - replayed_before)

    async def _credentials(self) -> dict[str, Any]:
        if self._key is not None:
            return {"key": self._key, "client_id": self._requested_client_id}
        assert self._auth is not None
        return {"token": await self._auth.fresh(), "client_id": self._requested_client_id}

    async def _drop_link(self) -> None:
        link, self._link = self._link, None
        self._publisher.outbox.transport_lost()
        if link is not None:
            await link.close()

    # ---------------------------------------------------------------- requests

    def channel(self, name: str) -> Channel:
        """The channel called ``name`` (the same object each time)."""
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = Channel(self, name)
        return ch

    async def _usable(self, action: str) -> None:
        """Wait (up to request_timeout) while reconnecting; refuse when it is hopeless."""
        if self.state in (S.DISCONNECTED, S.CONNECTING):
            with contextlib.suppress(TimeoutError):
                await self.wait_for_state(S.CONNECTED, S.SUSPENDED, S.FAILED, S.CLOSED,
                                          timeout=self.request_timeout)
        if self.state is not S.CONNECTED:
            raise self._unusable(action)

    def _unusable(self, action: str) -> RtkitError:
        state = self.state
        why = f"cannot {action}: the client is {state.value}"
        if state is S.SUSPENDED:
            return ConnectionSuspended(why)
        if state is S.FAILED:
            return ConnectionFailed(why)
        if state in (S.CLOSED, S.CLOSING):
            return RtConnectionClosed(why)
        return Disconnected(why)

    async def _request(self, frame_type: type[fr.Frame], timeout: float | None = None,
                       internal: bool = False, **fields: Any) -> fr.Frame:
        if not internal:
            await self._usable(frame_type.ACTION)
        link = self._link
        if link is None or link.ws is None:
            raise self._unusable(frame_type.ACTION)
        ref, text = self._core.request(frame_type, **fields)
        fut: asyncio.Future[fr.Frame] = asyncio.get_running_loop().create_future()
        self._futures[ref] = fut
        try:
            await link.ws.send(text)
            return await asyncio.wait_for(fut, timeout or self.request_timeout)
        except TimeoutError:
            raise RequestTimeout(f"no reply to {frame_type.ACTION} in time") from None
        except ConnectionClosed as exc:
            raise link.close_error(exc) from None
        finally:
            self._futures.pop(ref, None)
            self._core.forget(ref)

    def _fail_pending(self, err: RtkitError) -> None:
        for ref in self._core.abandon_all():
            fut = self._futures.pop(ref, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)

    async def ping(self) -> float:
        """Send a heartbeat and return the round-trip time in seconds."""
        start = time.perf_counter()
        await self._request(fr.Heartbeat)
        self.last_rtt = time.perf_counter() - start
        return self.last_rtt

    async def _publish(self, channel: str, name: str, data: Any, msg_id: str | None,
                       timeout: float | None) -> PublishResult:
        return await self._publisher.publish(channel, name, data, msg_id, timeout)

    async def renew_token(self) -> str:
        """Get a new token from ``auth_callback`` now and, if connected, present it in-band
        (the connection stays up). Returns the new token."""
        if self._auth is None or not self._auth.renewable:
            raise AuthError("this client has no auth_callback to renew with", code=40170)
        token = await self._auth.renew()
        if self.state is S.CONNECTED:
            await self._present_token(token)
        return token

    async def _present_token(self, token: str) -> None:
        """Give a renewed token to the live connection (in-band), if there is one."""
        if self.state is not S.CONNECTED:
            raise Disconnected("no live connection to present the token to")
        await self._request(fr.Auth, token=token, internal=True)

    # ---------------------------------------------------------------- input

    def _on_event(self, event: cc.Event) -> None:
        if isinstance(event, cc.Delivery):
            ch = self._channels.get(event.channel)
            if ch is not None:
                ch._deliver(event.messages)
        elif isinstance(event, cc.Reply):
            if isinstance(event.frame, fr.Attached):
                ch = self._channels.get(event.frame.channel)
                if ch is not None:
                    ch._on_attached(event.frame)
            if isinstance(event.frame, fr.Ack) and self._publisher.acked(event.ref, event.frame):
                return
            fut = self._futures.get(event.ref)
            if fut is not None and not fut.done():
                fut.set_result(event.frame)
        elif isinstance(event, cc.Refused):
            if self._publisher.refused(event.ref, event.error):
                return
            fut = self._futures.get(event.ref)
            if fut is not None and not fut.done():
                fut.set_exception(event.error)
        elif isinstance(event, cc.PresenceUpdate):
            ch = self._channels.get(event.channel)
            if ch is not None:
                ch.presence._apply(event.changes)
        elif isinstance(event, cc.ChannelDetached):
            ch = self._channels.get(event.channel)
            if ch is not None:
                ch._on_detached()
            if event.error is not None:
                self._report_error(event.error)
        elif isinstance(event, cc.BrokerError):
            self._report_error(event.error)
            log.warning("broker error: %s", event.error)
        elif isinstance(event, cc.Malformed):
            log.warning("ignored a malformed frame from the broker: %s", event.error)

    def _count_replay(self, n: int) -> None:
        self._replayed += n

    def _set_rtt(self, rtt: float) -> None:
        self.last_rtt = rtt

    def __repr__(self) -> str:
        return f"<rtkit.Client {self.url} {self.state.value} id={self.connection_id}>"
