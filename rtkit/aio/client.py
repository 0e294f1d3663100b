"""The client's public face: :class:`Client` (``rtkit.Client``).

Every protocol decision is made by the sans-I/O :class:`~rtkit.core.client.ClientCore`; its
asyncio driver (:class:`~rtkit.aio.client_driver.Driver`) feeds it calls, frames, link events
and ``now``, performs what it asks (through :class:`~rtkit.aio.client_links.Links` for the
links), wakes it at its next deadline, and turns its events into futures, callbacks and
subscriptions. This module holds the options, the properties and the public operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
import ssl as ssl_module
import time
from collections.abc import Sequence
from types import TracebackType

from rtkit import _rerun
from rtkit.aio.auth import AuthCallback, TokenSource
from rtkit.aio.channel import Channel
from rtkit.aio.client_driver import Driver
from rtkit.aio.client_links import BATCH_BYTES as BATCH_BYTES
from rtkit.aio.events import Observable
from rtkit.aio.link import error_from_close
from rtkit.core import client_events as ev
from rtkit.core.client import ClientConfig, ClientCore
from rtkit.core.outbox import DEFAULT_MAX_QUEUED_BYTES
from rtkit.core.recovery import RecoveryKey
from rtkit.core.states import ConnectionState
from rtkit.core.timing import Backoff, RandomSource
from rtkit.core.transports import FALLBACK_AFTER, RETRY_INTERVAL, TRANSPORTS, check_transports
from rtkit.errors import ConnectionClosed, RequestTimeout, RtkitError

S = ConnectionState
#: How the latest (re)connection went (times on the monotonic clock).
ResumeInfo = ev.Resumed

__all__ = ["Client", "ResumeInfo", "error_from_close"]


def _wall_offset() -> float:
    """This machine's wall clock minus its monotonic clock (the core runs on the latter;
    token expiry and state-change times are wall-clock times)."""
    return time.time() - time.monotonic()


class Client(Observable):
    """A connection to an rtkit broker that reconnects and resumes by itself.

    Give one of ``key`` (trusted code only), ``token`` or ``auth_callback`` (called, sync or
    async, for the first token, again before it expires and after the broker says it
    expired; returns the token string; ``auth_timeout`` bounds each call). ``client_id``
    names this client when using a key; with a token, the token's client id applies.
    ``recover`` is a :attr:`recovery_key` of an earlier client. ``ssl`` is an
    :class:`ssl.SSLContext` for ``wss://`` URLs (default: the system's trust store).

    Reconnection: ``backoff`` (default base 0.5 s, cap 2 s, full jitter, random source
    ``random_source``) until ``connection_state_ttl`` has passed, then ``suspended`` with a
    retry every ``suspended_retry_interval`` (15 s).

    Transports: ``transports`` in order of preference, ``("websocket", "sse")`` by default:
    a WebSocket when it gets through, else the SSE transport (an event stream plus POSTs,
    for networks that refuse WebSocket upgrades). An attempt whose upgrade is refused or times
    out falls back at once; ``fallback_after`` other failures in a row (3) do too. Connected
    over SSE, the client probes the WebSocket every ``transport_retry_interval`` seconds (15)
    and moves back when it gets through, by a reconnect that resumes: nothing is lost.
    :attr:`transport` says which is in use; each change shows in :attr:`state_history`.

    Liveness: a link silent for the broker's heartbeat interval plus ``heartbeat_grace``
    (default half the interval) is dropped. Publishes wait for their ack in a queue of at
    most ``max_queued_bytes`` (16 MiB; ``max_queued_publishes`` adds a count limit).

    ``fallback_urls``: other nodes of a cluster (brokers sharing a backplane). When the
    node in use refuses, times out or goes away, the next attempt goes to one of the others
    (at random, with the same backoff and jitter) and every channel resumes there from its
    last serial: the history is shared, so nothing is lost. :attr:`current_url` is the one
    in use. An attempt that fails may change both: the next one goes to another node, over
    the next transport when this one did not get through.
    """

    def __init__(
        self,
        url: str,
        *,
        fallback_urls: Sequence[str] = (),
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
        max_queued_publishes: int | None = None,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        auth_timeout: float = 10.0,
        random_source: RandomSource | None = None,
        max_frame_size: int = 16 * 1024 * 1024,
        ssl: ssl_module.SSLContext | None = None,
        transports: tuple[str, ...] | list[str] = TRANSPORTS,
        transport_retry_interval: float = RETRY_INTERVAL,
        fallback_after: int = FALLBACK_AFTER,
    ) -> None:
        super().__init__()
        if key is None and token is None and auth_callback is None:
            raise ValueError("give key=, token= or auth_callback=")
        if key is not None and (token is not None or auth_callback is not None):
            raise ValueError("give either a key or a token/auth_callback, not both")
        self.url = url
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff(base=0.5, cap=2.0)
        self.suspended_retry_interval = suspended_retry_interval
        self._rng: RandomSource = random_source or random.Random()
        if isinstance(fallback_urls, str):
            raise TypeError("fallback_urls is a list of URLs")
        config = ClientConfig(
            url=url, fallback_urls=tuple(fallback_urls), key=key, token=token,
            renewable=auth_callback is not None,
            client_id=client_id, request_timeout=request_timeout,
            connect_timeout=connect_timeout, heartbeat_grace=heartbeat_grace,
            backoff=self.backoff, suspended_retry_interval=suspended_retry_interval,
            connection_state_ttl=connection_state_ttl, max_queued_bytes=max_queued_bytes,
            max_queued_publishes=max_queued_publishes, auth_timeout=auth_timeout,
            transports=check_transports(transports),
            transport_retry_interval=transport_retry_interval, fallback_after=fallback_after)
        self._core = ClientCore(config, time.monotonic(), self._rng,
                                RecoveryKey.decode(recover) if recover is not None else None,
                                _wall_offset())
        self._tokens = TokenSource(self._core.credentials, auth_callback) \
            if key is None else None
        self._channels: dict[str, Channel] = {}
        self._driver = Driver(self, self._core, self._channels, auth_callback, _wall_offset,
                              max_frame_size, ssl, connect_timeout)
        self._links = self._driver.links
        self._instance = secrets.token_hex(4)
        self._ids = itertools.count(1)
        #: The last error reported by the broker, the link or token renewal.
        self.last_error: RtkitError | None = None
        if recover is not None:
            for name in self._core.channels:
                self.channel(name)
        _rerun.replace_previous("client", self, Client._close_soon)

    # ---------------------------------------------------------------- properties

    @property
    def connection_id(self) -> str | None:
        return self._core.session.connection_id if self._core.session else None

    @property
    def client_id(self) -> str | None:
        s = self._core.session
        return s.client_id if s else self._core.config.client_id

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
        return s.connection_state_ttl if s else self._core.config.connection_state_ttl

    @property
    def transport(self) -> str:
        """The transport in use: ``"websocket"`` or ``"sse"`` (that of the current link; with
        no link, the one the next attempt will use)."""
        link = self._links.link
        if link is not None:
            return link.transport_name
        return self._core.transports.current

    @property
    def transports(self) -> tuple[str, ...]:
        """The transports this client may use, in order of preference."""
        return self._core.transports.order

    @property
    def bytes_received(self) -> int:
        """Bytes received by this client's links so far (WebSocket frames with their headers;
        over SSE, the event stream and the POSTs' responses)."""
        link = self._links.link
        return self._links.bytes_done[0] + (link.bytes_in if link is not None else 0)

    @property
    def bytes_sent(self) -> int:
        """Bytes sent by this client's links so far (over SSE, the POSTs)."""
        link = self._links.link
        return self._links.bytes_done[1] + (link.bytes_out if link is not None else 0)

    @property
    def token(self) -> str | None:
        """The token in use (None with a key)."""
        return self._core.credentials.token

    @property
    def token_source(self) -> TokenSource | None:
        return self._tokens

    @property
    def token_expires(self) -> float | None:
        """When the current token expires (seconds since the epoch)."""
        claims = self._core.credentials.claims
        return claims.expires_at if claims is not None else None

    @property
    def next_renewal(self) -> float | None:
        """When the token will next be renewed (seconds since the epoch), if it will."""
        return self._tokens.renew_at() if self._tokens else None

    @property
    def server_time_offset(self) -> float:
        """The broker's clock minus this machine's, in seconds (measured on connect)."""
        return self._core.credentials.server_offset

    @property
    def queued_publishes(self) -> int:
        """Publishes waiting for their ack (sent or not yet sent)."""
        return len(self._core.outbox)

    @property
    def queued_bytes(self) -> int:
        return self._core.outbox.bytes

    @property
    def recovery_key(self) -> str | None:
        """A string from which a new client (``Client(..., recover=key)``) resumes this
        connection's channels, e.g. after a kernel restart, within the connection TTL."""
        return self._core.recovery_key()

    @property
    def last_rtt(self) -> float | None:
        """Round-trip time of the last heartbeat, in seconds (measured on connect and then
        every heartbeat interval)."""
        return self._core.last_rtt

    @property
    def last_resume(self) -> ResumeInfo | None:
        """How the latest (re)connection went."""
        return self._core.last_resume

    @property
    def current_url(self) -> str:
        """The broker URL in use (or tried next): ``url`` or one of ``fallback_urls``."""
        return self._core.url

    def _new_message_id(self) -> str:
        return f"{self._instance}:{next(self._ids)}"

    # ---------------------------------------------------------------- lifecycle

    async def connect(self, timeout: float | None = None) -> None:
        """Connect (or wait for the reconnect in progress) and return once connected.

        Refused credentials raise at once (state ``failed``). If the broker cannot be reached
        within ``timeout`` (default ``connect_timeout``) the last error is raised and the
        client keeps retrying in the background; ``close()`` stops it.
        """
        if self.state is S.CONNECTED:
            return
        self._driver.call(self._core.connect)
        await self._until_connected(timeout)

    async def _until_connected(self, timeout: float | None) -> None:
        try:
            await self.wait_for_state(S.CONNECTED, S.FAILED, S.CLOSED,
                                      timeout=timeout or self.connect_timeout)
        except TimeoutError:
            err = self.last_error or RequestTimeout("not connected in time", code=40801)
            raise type(err)(f"{err.message} (still retrying in the background; close() "
                            f"stops it)", code=err.code) from None
        if self._core.state is not S.CONNECTED:  # (re-read: it changed while we waited)
            raise self.last_error or ConnectionClosed("closed while connecting")

    async def reconnect(self, timeout: float | None = None) -> None:
        """Drop the link now and reconnect at once (no backoff), resuming; returns when
        connected again."""
        self._driver.call(self._core.reconnect)
        await self._until_connected(timeout)

    async def close(self) -> None:
        """Say goodbye to the broker and stop. Pending publishes fail with ConnectionClosed."""
        if self.state is not S.CLOSED and self.state is not S.CLOSING:
            self._driver.call(self._core.close)
        if self.state is S.CLOSING:
            with contextlib.suppress(TimeoutError):
                await self.wait_for_state(S.CLOSED, S.FAILED, timeout=self.request_timeout)
        await self._driver.reap()

    def _closed(self) -> None:
        """The core reached ``closed``: end what the driver runs for it (whoever closed).
        A connect() made later starts afresh."""
        self._driver.stop()
        for channel in self._channels.values():
            channel._close_all()

    async def _shutdown(self) -> None:
        """Cut everything now, no goodbye (as a process that dies would)."""
        self._closed()
        self._driver.cancel_timer()
        await self._driver.reap()

    def _close_soon(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.close())

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ---------------------------------------------------------------- requests

    def channel(self, name: str) -> Channel:
        """The channel called ``name`` (the same object each time)."""
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = Channel(self, name, self._core.channel(name))
        return ch

    async def ping(self) -> float:
        """Send a heartbeat and return the round-trip time in seconds."""
        rtt: float = await self._driver.op(self._core.ping)
        return rtt

    async def renew_token(self) -> str:
        """Get a new token from ``auth_callback`` now and, if connected, present it in-band
        (the connection stays up). Returns the new token."""
        token: str = await self._driver.op(self._core.renew_token)
        return token

    def __repr__(self) -> str:
        return f"<rtkit.Client {self.url} {self.state.value} id={self.connection_id}>"
