"""A minimal WebSocket client for load generation: handshake, frame parsing, counting.

A full client library costs tens of microseconds per frame, which would make the load
generator, not the broker, the bottleneck at 100,000+ deliveries per second. This one parses
frame headers only, counts messages without decoding JSON (except on the few connections
sampled for latency), masks its own frames with a zero key (legal, and free) and lets a caller
write many frames in one system call (:func:`text_frame` + :meth:`LightWS.write`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse


def text_frame(payload: bytes) -> bytes:
    """A client text frame holding ``payload``, masked with the zero key (sent unchanged)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, 0x80 | n, 0, 0, 0, 0)) + payload
    if n < 65536:
        return bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big") + b"\0\0\0\0" + payload
    return bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big") + b"\0\0\0\0" + payload


class LightWS(asyncio.Protocol):
    """One light connection.

    ``on_payload(ws, payload_bytes)`` is called for every text frame of a sampled connection
    (it does its own counting); the others only count: ``counter(buf, start, end)`` per text
    frame when given, else ``count_marker`` occurrences, or one per frame without a marker.
    ``on_count(ws)`` is called after every text frame, ``on_progress(ws, previous_count)`` once
    per chunk read when the count moved (the cheap hook for flow control). ``error_marker``
    occurrences are counted in ``errors`` and the first frame holding one is kept in
    ``first_error``.
    """

    def __init__(self, *, sample: bool, count_marker: bytes | None,
                 on_payload: Callable[[LightWS, bytes], None] | None = None,
                 on_count: Callable[[LightWS], None] | None = None,
                 on_progress: Callable[[LightWS, int], None] | None = None,
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
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._handshaken = False
        self._path = "/"
        self._host = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed during handshake"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                if not self.open.done():
                    self.open.set_exception(
                        ConnectionError(bytes(buf[:80]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self._handshaken = True
            self.open.set_result(None)
        before = self.count
        pos, size = 0, len(buf)
        marker, error_marker, counter = self.count_marker, self.error_marker, self.counter
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            hdr = 2
            if b1 == 126:
                if size - pos < 4:
                    break
                b1 = int.from_bytes(buf[pos + 2:pos + 4], "big")
                hdr = 4
            elif b1 == 127:
                if size - pos < 10:
                    break
                b1 = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hdr = 10
            start, end = pos + hdr, pos + hdr + b1
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == 1:
                self.frames += 1
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
            elif opcode == 9:  # ping -> pong
                self.write(bytes((0x8A, 0x80 | (end - start), 0, 0, 0, 0)) + buf[start:end])
            elif opcode == 8:
                self.transport.close()  # type: ignore[union-attr]
            pos = end
        if pos:
            del buf[:pos]
        if self.on_progress is not None and self.count != before:
            self.on_progress(self, before)

    def write(self, data: bytes) -> None:
        """Write ready-made frames (see :func:`text_frame`)."""
        self.transport.write(data)  # type: ignore[union-attr]

    def send_text(self, text: str) -> None:
        self.write(text_frame(text.encode()))

    def send_json(self, obj: Any) -> None:
        self.write(text_frame(json.dumps(obj, separators=(",", ":")).encode()))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_light(url: str, **kwargs: Any) -> LightWS:
    parsed = urlparse(url)
    loop = asyncio.get_running_loop()

    def factory() -> LightWS:
        ws = LightWS(**kwargs)
        ws._path = parsed.path or "/"
        ws._host = parsed.netloc
        return ws

    assert parsed.hostname is not None and parsed.port is not None, url
    _, ws = await loop.create_connection(factory, parsed.hostname, parsed.port)
    await asyncio.wait_for(ws.open, 30)
    return ws


def now() -> float:
    return time.monotonic()
