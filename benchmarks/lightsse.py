"""A minimal client of rtkit's SSE transport for load generation (the SSE twin of
``lightws.py``): it opens the event stream, sends its frames in one POST, and counts
messages without decoding JSON (except on the few connections sampled for latency).

It has what ``fanout_load.Subscriber`` asks of a subscriber (``sample``, ``count``,
``frames``, ``errors``, ``error_marker``, ``first_error``, ``on_progress``, ``closed``,
``transport``, ``close()``), and counts as :class:`lightws.LightWS` does (``counter``,
``count_marker``, ``on_payload``, ``on_count``, ``on_progress``), from the ``data`` of each
event: the same frames as over a WebSocket. Frames go to the broker with
:meth:`LightSSE.send_frames` (one POST). A fan-out subscriber, as an SSE dialect of
``fanout_load.py`` would open it (a subclass of ``RtkitDialect``)::

    sub = await open_light_sse(url, sample=sample, count_marker=None,
                               counter=count_serials, on_payload=on_payload,
                               error_marker=self.error)
    await sub.send_frames({"action": "connect", "ref": 0, "key": KEY},
                          {"action": "attach", "ref": 1, "channel": channel})  # 204
    # subscriber_ready: sub.frames >= 2 (connected, attached), as for a WebSocket
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

_STREAM = re.compile(rb'"stream":"([^"]+)"')


class LightSSE(asyncio.Protocol):
    """One light SSE session (its event stream; POSTs go on short-lived connections)."""

    def __init__(self, *, sample: bool, count_marker: bytes | None,
                 on_payload: Callable[[LightSSE, bytes], None] | None = None,
                 on_count: Callable[[LightSSE], None] | None = None,
                 on_progress: Callable[[LightSSE, int], None] | None = None,
                 error_marker: bytes | None = None,
                 counter: Callable[[bytearray, int, int], int] | None = None) -> None:
        self.sample = sample
        self.count_marker = count_marker
        self.counter = counter
        self.on_payload = on_payload
        self.on_count = on_count
        self.on_progress = on_progress
        self.error_marker = error_marker
        self.count = 0
        self.frames = 0
        self.errors = 0
        self.first_error = b""
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        loop = asyncio.get_running_loop()
        self.open: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[Exception | None] = loop.create_future()
        self.key = ""
        self._head_done = False
        self._seq = 0
        self._host = ""
        self._port = 0
        self._path = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(f"GET {self._path}/v1/connect HTTP/1.1\r\nHost: {self._host}\r\n"
                        f"Accept: text/event-stream\r\n\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed before the stream opened"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self._head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 200"):
                if not self.open.done():
                    self.open.set_exception(
                        ConnectionError(bytes(buf[:80]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self._head_done = True
        before = self.count
        pos = 0
        marker, error_marker, counter = self.count_marker, self.error_marker, self.counter
        while True:
            end = buf.find(b"\n\n", pos)
            if end < 0:
                break
            if buf.startswith(b"id:", pos):  # a protocol frame: "id: n\ndata: {...}"
                self.frames += 1
                start = buf.find(b"data: ", pos, end) + 6
                if error_marker is not None and buf.find(error_marker, start, end) >= 0:
                    self.errors += 1
                    if not self.first_error:
                        self.first_error = bytes(buf[start:end])
                if self.sample and self.on_payload is not None:
                    self.on_payload(self, bytes(buf[start:end]))
                elif counter is not None:
                    self.count += counter(buf, start, end)
                elif marker is None:
                    self.count += 1
                else:
                    self.count += buf.count(marker, start, end)
                if self.on_count is not None:
                    self.on_count(self)
            elif buf.find(b"event: transport", pos, end) >= 0:  # (after the padding)
                found = _STREAM.search(buf, pos, end)
                if found is not None:
                    self.key = found.group(1).decode()
                    if not self.open.done():
                        self.open.set_result(None)
            pos = end + 2
        if pos:
            del buf[:pos]
        if self.on_progress is not None and self.count != before:
            self.on_progress(self, before)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def send_frames(self, *frames: Any) -> int:
        """POST ``frames`` (JSON objects) in one request; returns the HTTP status."""
        self._seq += 1
        body = "".join(json.dumps(f, separators=(",", ":")) + "\n" for f in frames).encode()
        reader, writer = await asyncio.open_connection(self._host.split(":")[0], self._port)
        writer.write(f"POST {self._path}/v1/send HTTP/1.1\r\nHost: {self._host}\r\n"
                     f"Authorization: Bearer {self.key}\r\nRtkit-Seq: {self._seq}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)
        status = await reader.readline()
        writer.close()
        return int(status.split()[1])


async def open_light_sse(url: str, **kwargs: Any) -> LightSSE:
    """Open an SSE session's stream on the broker at ``url`` (``ws://`` or ``http://``)."""
    parsed = urlparse(url)
    loop = asyncio.get_running_loop()

    def factory() -> LightSSE:
        sub = LightSSE(**kwargs)
        sub._host, sub._port = parsed.netloc, parsed.port or 80
        sub._path = parsed.path.rstrip("/")
        return sub

    _, sub = await loop.create_connection(factory, parsed.hostname, parsed.port)
    await asyncio.wait_for(sub.open, 30)
    return sub
