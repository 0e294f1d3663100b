"""One SSE link of a client: the protocol over plain HTTP, for networks that refuse
WebSockets (see docs/protocol.md, "The SSE transport").

Broker to client: an event stream (``GET /v1/connect``), read by h11 and parsed by
:mod:`rtkit.core.sse`; each event is one protocol frame. Client to broker: POSTs of
newline-separated frames to ``/v1/send`` on one kept-alive connection, one at a time (the
frames queued meanwhile go together in the next POST), each carrying the stream key, a
sequence number (so a POST sent again after a lost response is not handled twice) and the
last event id received (so the broker can forget what the client has).

A broken stream is re-opened with ``Last-Event-ID`` and continues where it stopped, within
the broker's re-open window; a POST whose connection broke is sent again on a new one. Only
when that fails is the link lost: the client core then reconnects and resumes, as after a
dropped WebSocket. Same interface as :class:`~rtkit.aio.link.WebSocketLink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl as ssl_module
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from rtkit.aio import http
from rtkit.aio.link import error_from_close
from rtkit.core import sse
from rtkit.errors import (
    ConnectionFailed,
    Disconnected,
    RtkitError,
    error,
    error_from_wire,
)

log = logging.getLogger("rtkit.client")

#: Frames sent in one POST: at most this many bytes (one frame alone may be larger).
BATCH_BYTES = 128 * 1024
#: Received bytes after which the client tells the broker what it has, even with nothing
#: to send (the broker keeps unacknowledged events for a re-opened stream).
ACK_BYTES = 256 * 1024


def http_base(url: str) -> str:
    """The broker's HTTP URL for a ``ws://`` or ``wss://`` URL (path kept, no trailing /)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def refusal(status: int, body: bytes) -> RtkitError:
    """The error for an HTTP response refusing the stream: the body's leading five-digit
    rtkit code (or its JSON error object) if it has one."""
    text = body.decode(errors="replace").strip()
    head, _, rest = text.partition(" ")
    if head.isdigit() and len(head) == 5:
        return error(int(head), rest or None)
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return error_from_wire(obj["error"])
    return ConnectionFailed(f"the broker's event stream was refused (HTTP {status})")


class SseLink:
    """The SSE transport to the broker. :meth:`connect` opens the event stream."""

    transport_name = "sse"

    def __init__(
        self,
        url: str,
        on_frames: Callable[[list[str | bytes]], None],
        on_lost: Callable[[RtkitError], None],
        max_size: int | None,
        ssl: ssl_module.SSLContext | None = None,
        close_timeout: float = 1.0,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        base = http_base(url)
        self._connect_url = base + "/v1/connect"
        self._send_path = (urlsplit(base).path or "") + "/v1/send"
        self._on_frames = on_frames
        self._on_lost = on_lost
        self._ssl = ssl
        self._close_timeout = close_timeout
        self._open_timeout = open_timeout
        limit = max(sse.DEFAULT_MAX, (max_size or 0) + 1024)
        self._parser = sse.SSEParser(max_line=limit, max_event=limit)
        self._posts = http.KeepAlive(base, ssl)
        self._key: str | None = None
        self._reopen_window = 15.0
        self._response: http.Response | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._queue: list[str] = []
        self._seq = 0
        self._unacked = 0
        self._acked_id = ""
        self._opened = False
        self._closing = False
        self._lost = False
        self._error: RtkitError | None = None
        self._closed_by_broker: RtkitError | None = None
        self.reopens = 0  # streams re-opened (each continued the same session)
        self._bytes_in = 0

    @property
    def open(self) -> bool:
        return self._opened and not self._lost and not self._closing

    @property
    def bytes_in(self) -> int:
        return self._bytes_in + self._posts.bytes_in

    @property
    def bytes_out(self) -> int:
        return self._posts.bytes_out

    @property
    def write_buffer_size(self) -> int:
        return sum(len(t) + 1 for t in self._queue)

    # ---------------------------------------------------------------- opening

    async def connect(self) -> None:
        """Open the event stream and wait for its first event (the stream key).

        Raises :class:`~rtkit.ConnectionFailed` (or the broker's refusal: 42911, 42912...).
        """
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        try:
            response = await self._get(None)
            if response.status != 200:
                err = refusal(response.status, await self._body(response))
                raise err
            self._reader = loop.create_task(self._read(response, ready))
            await ready
        except RtkitError as exc:
            self.abort(exc)
            raise
        except asyncio.CancelledError:
            self.abort(ConnectionFailed("connect cancelled"))
            raise
        self._opened = True

    async def _get(self, last_id: str | None) -> http.Response:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key}"
            if last_id:
                headers["Last-Event-ID"] = last_id
        return await http.request("GET", self._connect_url, headers=headers, ssl=self._ssl,
                                  timeout=self._open_timeout)

    @staticmethod
    async def _body(response: http.Response) -> bytes:
        try:
            async with asyncio.timeout(2.0):
                return await response.read(4096)
        except (TimeoutError, RtkitError):
            return b""
        finally:
            await response.close()

    # ---------------------------------------------------------------- the stream

    async def _read(self, response: http.Response, ready: asyncio.Future[None]) -> None:
        err: RtkitError = Disconnected("the event stream ended")
        while True:
            self._response = response
            try:
                async for chunk in response.chunks():
                    self._bytes_in += len(chunk)
                    self._unacked += len(chunk)
                    self._items(self._parser.feed(chunk), ready)
                    if self._ended:
                        return
                    if self._unacked > ACK_BYTES and self._opened:
                        self._kick()
                err = Disconnected("the event stream ended")
            except RtkitError as exc:
                err = exc
            finally:
                await response.close()
            if not ready.done():
                ready.set_exception(ConnectionFailed(f"the event stream ended before it "
                                                     f"opened: {err.message}"))
                return
            if self._ended:
                return
            if self._closing or self._closed_by_broker is not None:
                break
            reopened = await self._reopen()
            if reopened is None:
                break
            response = reopened
        self._finish(self._closed_by_broker or err)

    @property
    def _ended(self) -> bool:
        """Lost, or aborted (its loss is being reported): nothing more is delivered."""
        return self._lost or self._error is not None

    def _items(self, items: list[sse.Item], ready: asyncio.Future[None]) -> None:
        """The events of one read: their frames go up together (as a WebSocket link hands
        over the frames of a read), before anything that ends the link."""
        received: list[str | bytes] = []
        for item in items:
            if isinstance(item, sse.Event):
                if item.event == "message":
                    received.append(item.data)
                elif item.event == "transport":
                    self._transport_event(item.data, ready)
                elif item.event == "close":
                    self._close_event(item.data)
            elif isinstance(item, sse.Oversized):
                # A frame was skipped: continuity cannot be kept on this link.
                if received and not self._ended:
                    self._on_frames(received)
                self.abort(error(42902, f"an event of {item.size} bytes from the broker"))
                return
        if received and not self._ended:
            self._on_frames(received)

    def _transport_event(self, data: str, ready: asyncio.Future[None]) -> None:
        try:
            info = json.loads(data)
            key = info["stream"]
            window = float(info.get("reopen_window", 15000)) / 1000
        except (ValueError, KeyError, TypeError):
            self.abort(ConnectionFailed("the broker's event stream sent no stream key"))
            return
        if self._key is None:
            self._key = str(key)
        self._reopen_window = max(0.5, window)
        if not ready.done():
            ready.set_result(None)

    def _close_event(self, data: str) -> None:
        try:
            info = json.loads(data)
            self._closed_by_broker = error_from_close(int(info["code"]), str(info["reason"]))
        except (ValueError, KeyError, TypeError):
            self._closed_by_broker = Disconnected("the broker closed the event stream")

    async def _reopen(self) -> http.Response | None:
        """Open the stream again after the last event received, within (most of) the
        broker's re-open window; None when that cannot be done."""
        deadline = time.monotonic() + self._reopen_window * 0.8
        delay = 0.05
        while not self._lost and not self._closing and time.monotonic() < deadline:
            try:
                response = await self._get(self._parser.last_event_id)
            except ConnectionFailed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if response.status == 200:
                self._parser.reset()
                self.reopens += 1
                return response
            log.info("the broker would not re-open the event stream: %s",
                     refusal(response.status, await self._body(response)))
            return None
        return None

    # ---------------------------------------------------------------- sending

    def send(self, text: str) -> bool:
        """Queue one frame for the next POST; False if the link is not open."""
        if not self.open:
            return False
        self._queue.append(text)
        self._kick()
        return True

    def _kick(self) -> None:
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        """POST what is queued, one POST at a time, until nothing is left to send or to
        acknowledge."""
        while not self._lost and (self._queue or self._ack_due()):
            batch: list[str] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0]) < BATCH_BYTES):
                text = self._queue.pop(0)
                batch.append(text)
                size += len(text) + 1
            body = ("\n".join(batch) + "\n").encode() if batch else b""
            seq = None
            if batch:
                self._seq += 1
                seq = self._seq
            err = await self._post(body, seq)
            if err is not None:
                self.abort(err)
                return

    def _ack_due(self) -> bool:
        return self._unacked > ACK_BYTES and self._parser.last_event_id != self._acked_id

    async def _post(self, body: bytes, seq: int | None) -> RtkitError | None:
        """Send one POST (again on a new connection when one breaks, within the re-open
        window); the error that ends the link, or None."""
        deadline = time.monotonic() + max(1.0, self._reopen_window / 2)
        delay = 0.05
        while True:
            last = self._parser.last_event_id
            headers = {"Authorization": f"Bearer {self._key}",
                       "Content-Type": "application/x-ndjson"}
            if seq is not None:
                headers["Rtkit-Seq"] = str(seq)
            if last:
                headers["Last-Event-ID"] = last
            unacked = self._unacked
            try:
                async with asyncio.timeout(self._open_timeout):
                    status, _, answer = await self._posts.request("POST", self._send_path,
                                                                  headers, body)
            except (ConnectionFailed, TimeoutError) as exc:
                if self._lost or time.monotonic() >= deadline:
                    return exc if isinstance(exc, RtkitError) else ConnectionFailed(
                        f"a POST to the broker timed out after {self._open_timeout:g} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if status in (200, 202, 204):
                self._acked_id = last
                self._unacked = max(0, self._unacked - unacked)
                return None
            if status == 404:
                return Disconnected("the broker no longer knows this SSE session")
            return refusal(status, answer)

    # ---------------------------------------------------------------- ending

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the link: pending POSTs get ``close_timeout`` to go, then both connections
        close."""
        if self._closing or self._lost:
            return
        self._closing = True
        asyncio.get_running_loop().create_task(self._close_later(code, reason))

    async def _close_later(self, code: int, reason: str) -> None:
        sender = self._sender
        if sender is not None and not sender.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(sender), self._close_timeout)
        self._stop()
        self._finish(self._closed_by_broker or error_from_close(code, reason))

    def abort(self, err: RtkitError) -> None:
        """End the link at once, reporting ``err`` (if it was open)."""
        self._error = self._error or err
        self._stop()
        if self._opened:
            asyncio.get_running_loop().call_soon(self._finish, self._error)
        else:
            self._lost = True  # never opened: nothing to report

    def _stop(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.abort()
        self._posts.abort()
        for task in (self._reader, self._sender):
            if task is not None and task is not asyncio.current_task() and not task.done():
                task.cancel()
        self._queue.clear()

    def _finish(self, err: RtkitError) -> None:
        if not self._lost:
            self._lost = True
            self._stop()
            self._on_lost(self._error or err)
