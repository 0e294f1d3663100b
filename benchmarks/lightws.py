"""A minimal WebSocket client for load generation: handshake, frame parsing, counting.

A full client library costs tens of microseconds per frame, which would make the load
generator, not the broker, the bottleneck at 100,000+ deliveries per second. This one parses
frame headers only, counts messages without decoding JSON (except on the few connections
sampled for latency), and masks its own frames with a zero key (legal, and free).
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


class LightWS(asyncio.Protocol):
    """One light connection. ``on_payload(ws, payload_bytes)`` is called for sampled ones;
    others only count (``count_marker`` occurrences per frame, or one per frame)."""

    def __init__(self, *, sample: bool, count_marker: bytes | None,
                 on_payload: Callable[[LightWS, bytes], None] | None = None,
                 on_count: Callable[[LightWS], None] | None = None) -> None:
        self.sample = sample
        self.count_marker = count_marker
        self.on_payload = on_payload
        self.on_count = on_count
        self.count = 0
        self.frames = 0
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
                self.open.set_exception(ConnectionError(bytes(buf[:80]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self._handshaken = True
            self.open.set_result(None)
        pos, size = 0, len(buf)
        marker = self.count_marker
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
                if self.sample and self.on_payload is not None:
                    self.on_payload(self, bytes(buf[start:end]))
                elif marker is None:
                    self.count += 1
                else:
                    self.count += buf.count(marker, start, end)
                if self.on_count is not None:
                    self.on_count(self)
            elif opcode == 9:  # ping -> pong
                self._send(0xA, bytes(buf[start:end]))
            elif opcode == 8:
                self.transport.close()  # type: ignore[union-attr]
            pos = end
        if pos:
            del buf[:pos]

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        # Mask bit set with the zero key: the payload goes out unchanged.
        self.transport.write(head + b"\0\0\0\0" + payload)  # type: ignore[union-attr]

    def send_text(self, text: str) -> None:
        self._send(1, text.encode())

    def send_json(self, obj: Any) -> None:
        self._send(1, json.dumps(obj, separators=(",", ":")).encode())


async def open_light(url: str, **kwargs: Any) -> LightWS:
    parsed = urlparse(url)
    loop = asyncio.get_running_loop()

    def factory() -> LightWS:
        ws = LightWS(**kwargs)
        ws._path = parsed.path or "/"
        ws._host = parsed.netloc
        return ws

    _, ws = await loop.create_connection(factory, parsed.hostname, parsed.port)
    await asyncio.wait_for(ws.open, 30)
    return ws


def now() -> float:
    return time.monotonic()
