"""The client's asyncio driver: WebSocket I/O, futures and timers around :class:`ClientCore`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from rtkit import _rerun
from rtkit.aio.channel import Channel
from rtkit.core import client as cc
from rtkit.core import frames as fr
from rtkit.core.states import ConnectionState, StateChange, Trigger
from rtkit.errors import (
    AuthError,
    ConnectionFailed,
    Disconnected,
    RequestTimeout,
    RtkitError,
    TokenExpired,
    error,
)
from rtkit.errors import (
    ConnectionClosed as RtConnectionClosed,
)

log = logging.getLogger("rtkit.client")
AuthCallback = Callable[[], str | Awaitable[str]]
StateListener = Callable[[StateChange], Any]


def error_from_close(code: int | None, reason: str) -> RtkitError:
    """Map a WebSocket close (code, reason) to an rtkit error (see docs/protocol.md)."""
    head, _, rest = reason.partition(" ")
    if head.isdigit() and len(head) == 5:
        return error(int(head), rest or None)
    if code == 1009:
        return error(42902, reason or None)
    return Disconnected(f"connection closed (code {code}{', ' + reason if reason else ''})")


def _is_fatal(err: RtkitError) -> bool:
    """Credentials the broker refused will be refused again: stop instead of retrying."""
    return isinstance(err, AuthError) and not isinstance(err, TokenExpired)


class Client:
    """A connection to an rtkit broker.

    Give one of ``key`` (trusted code only), ``token`` or ``auth_callback`` (called, sync or
    async, whenever a token is needed; returns the token string). ``client_id`` names this
    client when using a key; with a token, the token's client id applies.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        token: str | None = None,
        auth_callback: AuthCallback | None = None,
        client_id: str | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        heartbeat_grace: float | None = None,
        max_frame_size: int = 16 * 1024 * 1024,
    ) -> None:
        if key is None and token is None and auth_callback is None:
            raise ValueError("give key=, token= or auth_callback=")
        if key is not None and (token is not None or auth_callback is not None):
            raise ValueError("give either a key or a token/auth_callback, not both")
        self.url = url
        self._key = key
        self._token = token
        self._auth_callback = auth_callback
        self._requested_client_id = client_id
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self._max_frame_size = max_frame_size
        self._core = cc.ClientCore(time.time(), heartbeat_grace if heartbeat_grace else 0.0)
        self._grace = heartbeat_grace
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._futures: dict[fr.Ref, asyncio.Future[fr.Frame]] = {}
        self._channels: dict[str, Channel] = {}
        self._listeners: list[StateListener] = []
        self._watchers: set[asyncio.Queue[StateChange]] = set()
        self._pings: dict[fr.Ref, float] = {}
        self._close_error: RtkitError | None = None
        #: Round-trip time of the last heartbeat, in seconds.
        self.last_rtt: float | None = None
        #: The last error reported by the broker or the link.
        self.last_error: RtkitError | None = None
        _rerun.replace_previous("client", self, Client._close_soon)

    # ---------------------------------------------------------------- properties

    @property
    def state(self) -> ConnectionState:
        return self._core.state

    @property
    def state_history(self) -> list[StateChange]:
        """Every state change so far (bounded), oldest first."""
        return list(self._core.machine.history)

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
    def token(self) -> str | None:
        """The token in use (None with a key)."""
        return self._token

    @property
    def token_expires(self) -> float | None:
        """When the current token expires (seconds since the epoch), as the broker said."""
        return self._core.session.token_expires if self._core.session else None

    # ---------------------------------------------------------------- state changes

    def on_state_change(self, callback: StateListener) -> Callable[[], None]:
        """Call ``callback(change)`` on every state change; returns a function to stop."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def state_changes(self) -> AsyncIterator[StateChange]:
        """Iterate over state changes as they happen: ``async for change in ...``."""
        queue: asyncio.Queue[StateChange] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    async def wait_for_state(self, *states: ConnectionState, timeout: float = 10.0) -> None:
        """Wait until the state is one of ``states``."""
        if self.state in states:
            return
        async with asyncio.timeout(timeout):
            async for change in self.state_changes():
                if change.current in states:
                    return

    def _transition(self, trigger: Trigger, reason: str, err: RtkitError | None = None) -> None:
        change = self._core.transition(trigger, reason, time.time(), err)
        log.debug("%s -> %s (%s)", change.previous, change.current, reason)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("state listener failed")
        for queue in self._watchers:
            queue.put_nowait(change)

    # ---------------------------------------------------------------- connect / close

    async def connect(self) -> None:
        """Connect and authenticate; raises the broker's error if it refuses."""
        if self.state is ConnectionState.CONNECTED:
            return
        self._transition(Trigger.CONNECT, "connect() called")
        try:
            await self._open()
        except RtkitError as exc:
            await self._drop_transport()
            if self.state in (ConnectionState.CONNECTING, ConnectionState.CONNECTED):
                trigger = Trigger.FATAL if _is_fatal(exc) else Trigger.TRANSPORT_LOST
                self._transition(trigger, f"connect failed: {exc.message}", exc)
            raise

    async def _credentials(self) -> dict[str, Any]:
        if self._key is not None:
            return {"key": self._key, "client_id": self._requested_client_id}
        if self._token is None:
            assert self._auth_callback is not None
            token = self._auth_callback()
            if inspect.isawaitable(token):
                token = await token
            if not isinstance(token, str):
                raise AuthError("auth_callback must return a token string", code=40106)
            self._token = token
        return {"token": self._token, "client_id": self._requested_client_id}

    async def _open(self) -> None:
        credentials = await self._credentials()
        try:
            ws = await ws_connect(
                self.url,
                open_timeout=self.connect_timeout,
                max_size=self._max_frame_size,
                ping_interval=None,  # liveness comes from the broker's heartbeats
                close_timeout=2.0,
                compression=None,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {exc}") from exc
        self._ws = ws
        self._close_error = None
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))
        try:
            reply = await self._request(fr.Connect, timeout=self.connect_timeout, **credentials)
        except RequestTimeout:
            raise RequestTimeout("no 'connected' reply in time", code=40801) from None
        assert isinstance(reply, fr.Connected)
        self._transition(Trigger.CONNECTED, f"connected as {reply.connection_id}")
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(ws))

    async def close(self) -> None:
        """Say goodbye to the broker and close the connection. Safe to call twice."""
        if self.state in (ConnectionState.CLOSED, ConnectionState.CLOSING):
            return
        if self.state is ConnectionState.INITIALIZED:
            self._transition(Trigger.CLOSE, "close() called")
            return
        was_connected = self.state is ConnectionState.CONNECTED
        if self.state in (ConnectionState.CONNECTING, ConnectionState.CONNECTED):
            self._transition(Trigger.CLOSE, "close() called")
            if was_connected:
                with contextlib.suppress(RtkitError):
                    await self._request(fr.Close, timeout=min(2.0, self.request_timeout))
        await self._drop_transport()
        for channel in self._channels.values():
            channel._close_all()
        # The state may have moved while awaiting (the broker may have closed first).
        state: ConnectionState = self._core.state
        if state is ConnectionState.CLOSING:
            self._transition(Trigger.CLOSED, "closed")
        elif state is not ConnectionState.CLOSED:
            self._transition(Trigger.CLOSE, "close() called")

    def _close_soon(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.close())

    async def _drop_transport(self) -> None:
        ws, self._ws = self._ws, None
        tasks = [t for t in (self._watchdog, self._reader) if t is not None]
        self._watchdog = self._reader = None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._fail_pending(RtConnectionClosed("connection closed"))

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
            ch = self._channels[name] = Channel(self, name)
        return ch

    async def _request(
        self, frame_type: type[fr.Frame], timeout: float | None = None, **fields: Any
    ) -> fr.Frame:
        ws = self._ws
        if ws is None or self.state not in (ConnectionState.CONNECTED, ConnectionState.CONNECTING,
                                            ConnectionState.CLOSING):
            raise Disconnected(f"cannot {frame_type.ACTION}: the client is {self.state.value}")
        ref, text = self._core.request(frame_type, **fields)
        fut: asyncio.Future[fr.Frame] = asyncio.get_running_loop().create_future()
        self._futures[ref] = fut
        try:
            await ws.send(text)
            return await asyncio.wait_for(fut, timeout or self.request_timeout)
        except TimeoutError:
            raise RequestTimeout(f"no reply to {frame_type.ACTION} in time") from None
        except ConnectionClosed as exc:
            raise error_from_close(exc.rcvd.code if exc.rcvd else None,
                                   exc.rcvd.reason if exc.rcvd else "") from None
        finally:
            self._futures.pop(ref, None)
            self._core.forget(ref)

    async def ping(self) -> float:
        """Send a heartbeat and return the round-trip time in seconds."""
        start = time.perf_counter()
        await self._request(fr.Heartbeat)
        self.last_rtt = time.perf_counter() - start
        return self.last_rtt

    def _fail_pending(self, err: RtkitError) -> None:
        for ref in self._core.abandon_all():
            fut = self._futures.pop(ref, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)

    # ---------------------------------------------------------------- input

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                for event in self._core.receive(data, time.time()):
                    self._on_event(event)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("client reader failed")
        if ws is self._ws:
            err = self._close_error or error_from_close(ws.close_code, ws.close_reason or "")
            self._transport_lost(err)

    def _transport_lost(self, err: RtkitError) -> None:
        self._ws = None
        self.last_error = err
        self._fail_pending(err)
        if self.state in (ConnectionState.CONNECTED, ConnectionState.CONNECTING):
            trigger = Trigger.FATAL if _is_fatal(err) else Trigger.TRANSPORT_LOST
            self._transition(trigger, err.message, err)

    def _on_event(self, event: cc.Event) -> None:
        if isinstance(event, cc.Delivery):
            ch = self._channels.get(event.channel)
            if ch is not None:
                ch._deliver(event.messages)
        elif isinstance(event, cc.Reply):
            sent = self._pings.pop(event.ref, None)
            if sent is not None:
                self.last_rtt = time.perf_counter() - sent
            fut = self._futures.get(event.ref)
            if fut is not None and not fut.done():
                fut.set_result(event.frame)
        elif isinstance(event, cc.Refused):
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
                self.last_error = event.error
        elif isinstance(event, cc.BrokerError):
            self.last_error = event.error
            if event.fatal:
                self._close_error = event.error
            log.warning("broker error: %s", event.error)
        elif isinstance(event, cc.BrokerClosed):
            self._close_error = event.error or RtConnectionClosed("closed by the broker")
        elif isinstance(event, cc.Malformed):
            log.warning("ignored a malformed frame from the broker: %s", event.error)

    # ---------------------------------------------------------------- liveness

    async def _watch(self, ws: ClientConnection) -> None:
        """Drop the link after a heartbeat interval (plus grace) of silence; measure RTT."""
        session = self._core.session
        assert session is not None
        interval = session.heartbeat_interval
        grace = self._grace if self._grace is not None else max(0.1, interval / 2)
        self._core.liveness.interval, self._core.liveness.grace = interval, grace
        next_ping = time.time() + interval
        period = min(interval / 4, 1.0)
        last_tick = time.time()
        while ws is self._ws:
            await asyncio.sleep(period)
            now = time.time()
            late = now - last_tick > period + grace
            last_tick = now
            if late:
                # Our own loop was blocked (a busy notebook cell): heartbeats may be waiting
                # unread in the socket. Let the reader catch up before judging the link.
                continue
            if self._core.liveness.is_dead(now):
                silent = now - self._core.liveness.last_heard
                self._close_error = Disconnected(f"no heartbeat from the broker for {silent:.2f} s")
                if ws.transport is not None:
                    ws.transport.abort()  # a half-open link would never finish a clean close
                return
            if now >= next_ping:
                next_ping = now + interval
                ref, text = self._core.request(fr.Heartbeat)
                self._pings[ref] = time.perf_counter()
                if len(self._pings) > 16:  # replies lost: stop waiting for the oldest
                    oldest = next(iter(self._pings))
                    del self._pings[oldest]
                    self._core.forget(oldest)
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(text)

    def __repr__(self) -> str:
        return f"<rtkit.Client {self.url} {self.state.value} id={self.connection_id}>"
