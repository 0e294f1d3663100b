"""One connection of a feed: a WebSocket, or an HTTP response carrying Server-Sent Events.

A link lives for one connection attempt. It reads in its own task and hands every frame to
the feed; its ``lost`` future resolves with the error that ended it (closed by the server,
aborted by the feed's watchdog, cut short). The feed decides whether and when to try again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from rtkit.aio import http
from rtkit.core import sse
from rtkit.errors import (
    ConnectionFailed,
    Disconnected,
    ProtocolError,
    RequestTimeout,
    RtkitError,
)

log = logging.getLogger("rtkit.feed")
FrameHandler = Callable[[str | bytes, str, str | None], None]


class GiveUp(Exception):
    """The server asked not to be retried (SSE's HTTP 204): the feed fails."""

    def __init__(self, error: RtkitError) -> None:
        super().__init__(error.message)
        self.error = error


class Link(abc.ABC):
    """What both kinds share: the ``lost`` future, the reader task, aborting."""

    can_ping = False

    def __init__(self, url: str, on_frame: FrameHandler, on_heard: Callable[[], None]) -> None:
        self.url = url
        self._on_frame = on_frame
        self._on_heard = on_heard
        self.lost: asyncio.Future[RtkitError] = asyncio.get_running_loop().create_future()
        self.last_rtt: float | None = None
        self._reason: RtkitError | None = None  # why we ended it ourselves
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None

    def _end(self, err: RtkitError) -> None:
        if not self.lost.done():
            self.lost.set_result(self._reason or err)

    def abort(self, err: RtkitError) -> None:
        """End the link now (no closing handshake), reporting ``err``."""
        self._reason = self._reason or err
        self._abort_transport()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; raises :class:`~rtkit.ConnectionFailed` (or :class:`GiveUp`)."""

    @abc.abstractmethod
    def _abort_transport(self) -> None: ...

    @abc.abstractmethod
    async def _close_transport(self) -> None: ...

    async def send(self, payload: str | bytes) -> None:
        raise ProtocolError("this feed only receives (Server-Sent Events cannot send)",
                            code=40000)

    def ping(self) -> None:
        """Send a ping if the transport has them (WebSocket); the pong counts as heard."""
        return

    async def round_trip(self, timeout: float) -> float:
        """Ping now and return the round-trip time in seconds (WebSocket only)."""
        raise ProtocolError("a Server-Sent Events feed cannot ping: its liveness is the "
                            "server's keep-alive comments", code=40000)

    async def close(self) -> None:
        self._reason = self._reason or Disconnected("closed by the feed")
        await self._close_transport()
        for task in (self._reader, self._pinger):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._end(Disconnected("closed by the feed"))


class WebSocketLink(Link):
    """A WebSocket (``ws://`` or ``wss://``): text and binary messages are frames."""

    can_ping = True

    def __init__(self, url: str, on_frame: FrameHandler, on_heard: Callable[[], None], *,
                 headers: Mapping[str, str], ssl: ssl_module.SSLContext | None,
                 open_timeout: float, max_size: int) -> None:
        super().__init__(url, on_frame, on_heard)
        self._headers = headers
        self._ssl = ssl
        self._open_timeout = open_timeout
        self._max_size = max_size
        self.ws: ClientConnection | None = None

    async def open(self) -> None:
        names = {k.lower() for k in self._headers}
        tls: dict[str, Any] = {"ssl": self._ssl} if self._ssl and self.url.startswith(
            "wss:") else {}
        try:
            self.ws = await ws_connect(
                self.url,
                additional_headers=dict(self._headers),
                user_agent_header=None if "user-agent" in names else http.USER_AGENT,
                open_timeout=self._open_timeout,
                ping_interval=None,  # the feed's watchdog pings, and watches the data too
                ping_timeout=None,
                close_timeout=1.0,
                max_size=self._max_size,
                max_queue=64,
                **tls,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ValueError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {exc}") from None
        self._reader = asyncio.get_running_loop().create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        on_frame = self._on_frame
        try:
            async for payload in ws:
                on_frame(payload, "message", None)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("feed reader failed")
        code, reason = ws.close_code, ws.close_reason
        if code is None or code == 1006:
            why = "connection lost (no close frame)"
        else:
            why = f"closed by the server (code {code}" + (f", {reason})" if reason else ")")
        self._end(Disconnected(why))

    async def send(self, payload: str | bytes) -> None:
        if self.ws is None or self.lost.done():
            raise Disconnected("the feed is not connected")
        try:
            await self.ws.send(payload)
        except ConnectionClosed:
            raise Disconnected("the connection closed while sending") from None

    def ping(self) -> None:
        if self.ws is None or self.lost.done() or (self._pinger and not self._pinger.done()):
            return  # (a pong still awaited: the watchdog judges the silence)
        self._pinger = asyncio.get_running_loop().create_task(self._ping())

    async def _ping(self) -> None:
        with contextlib.suppress(Disconnected):
            await self._measure()

    async def round_trip(self, timeout: float) -> float:
        try:
            async with asyncio.timeout(timeout):
                return await self._measure()
        except TimeoutError:
            raise RequestTimeout(f"no pong within {timeout:g} s") from None

    async def _measure(self) -> float:
        """One ping and its pong: the round trip (raises Disconnected if the link ends)."""
        ws = self.ws
        if ws is None or self.lost.done():
            raise Disconnected("the feed is not connected")
        start = time.perf_counter()
        try:
            waiter = await ws.ping()
            await waiter
        except ConnectionClosed:
            raise Disconnected("the connection closed before the pong") from None
        self.last_rtt = rtt = time.perf_counter() - start
        self._on_heard()
        return rtt

    def _abort_transport(self) -> None:
        if self.ws is not None and self.ws.transport is not None:
            self.ws.transport.abort()

    async def _close_transport(self) -> None:
        ws = self.ws
        if ws is None:
            return
        if self.lost.done():
            self._abort_transport()
            return
        try:
            await asyncio.wait_for(ws.close(), 2.0)
        except (TimeoutError, OSError, ConnectionClosed):
            self._abort_transport()


class SSELink(Link):
    """An ``http(s)://`` response of type ``text/event-stream``: each event is a frame.
    Resumes with ``Last-Event-ID``; a ``retry:`` field is passed to ``on_retry``."""

    def __init__(self, url: str, on_frame: FrameHandler, on_heard: Callable[[], None], *,
                 headers: Mapping[str, str], ssl: ssl_module.SSLContext | None,
                 open_timeout: float, parser: sse.SSEParser,
                 on_retry: Callable[[int], None],
                 on_oversized: Callable[[sse.Oversized], None]) -> None:
        super().__init__(url, on_frame, on_heard)
        self._headers = headers
        self._ssl = ssl
        self._open_timeout = open_timeout
        self.parser = parser
        self._on_retry = on_retry
        self._on_oversized = on_oversized
        self.response: http.Response | None = None

    async def open(self) -> None:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache",
                   **self._headers}
        if self.parser.last_event_id:
            headers["Last-Event-ID"] = self.parser.last_event_id
        response = await http.request("GET", self.url, headers=headers, ssl=self._ssl,
                                      timeout=self._open_timeout)
        if response.status == 204:
            await response.close()
            raise GiveUp(ConnectionFailed(
                f"{self.url} answered 204 No Content: the server asks clients to stop"))
        if response.status != 200:
            body = b""
            with contextlib.suppress(RtkitError, TimeoutError):
                body = await asyncio.wait_for(response.read(200), 1.0)
            await response.close()
            detail = body.decode("utf-8", "replace").strip()
            raise ConnectionFailed(f"{self.url} answered HTTP {response.status} "
                                   f"{response.reason}" + (f": {detail}" if detail else ""))
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "text/event-stream":
            await response.close()
            raise ConnectionFailed(f"{self.url} sent {kind or 'no content type'}, "
                                   "not text/event-stream")
        self.response = response
        self.parser.reset()
        self._reader = asyncio.get_running_loop().create_task(self._read(response))

    async def _read(self, response: http.Response) -> None:
        parser, on_frame, on_heard = self.parser, self._on_frame, self._on_heard
        Event, Retry, Oversized = sse.Event, sse.Retry, sse.Oversized
        why: RtkitError = Disconnected("the server ended the stream")
        try:
            async for chunk in response.chunks():
                on_heard()
                for item in parser.feed(chunk):
                    if type(item) is Event:
                        on_frame(item.data, item.event, item.id or None)
                    elif type(item) is Retry:
                        self._on_retry(item.milliseconds)
                    elif type(item) is Oversized:
                        self._on_oversized(item)
        except RtkitError as exc:
            why = exc
        except Exception:
            log.exception("feed reader failed")
        self._end(why)

    def _abort_transport(self) -> None:
        if self.response is not None:
            self.response.abort()

    async def _close_transport(self) -> None:
        if self.response is not None:
            self.response.abort()
