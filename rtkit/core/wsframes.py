"""WebSocket framing (RFC 6455), sans I/O: the handshake's accept key, frames built once and
written to many connections, and an incremental reader for the other side's frames.

rtkit's own drivers use this instead of a general WebSocket library on their hot paths: a
broker builds each outgoing frame *once* (server frames are not masked) and writes the same
bytes to every subscriber, and both sides parse incoming frames with one loop over a buffer
and no coroutine per message. Extensions (compression) and subprotocols are not supported;
fragmented messages are reassembled; text must be valid UTF-8 (close code 1007 otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import NamedTuple

try:  # websockets' C helper: unmasking at memcpy speed
    from websockets.speedups import apply_mask as _c_apply_mask

    _apply_mask: Callable[[bytes | bytearray, bytes | bytearray], bytes] = _c_apply_mask
except ImportError:  # pragma: no cover - a build without the C extension
    from websockets.utils import apply_mask as _apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL = frozenset({OP_CLOSE, OP_PING, OP_PONG})
DATA = frozenset({OP_CONT, OP_TEXT, OP_BINARY})

#: Close codes (RFC 6455 section 7.4.1).
NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED, INVALID_DATA, TOO_BIG = \
    1000, 1001, 1002, 1003, 1007, 1009


class FrameError(Exception):
    """The peer broke the framing rules: close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answering a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def valid_key(key: str | None) -> bool:
    if not key:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` (websockets' C helper)."""
    return bytes(_apply_mask(data, mask))


def _header(opcode: int, length: int, masked: bool, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return struct.pack("!BB", first, mask_bit | length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    return struct.pack("!BBQ", first, mask_bit | 127, length)


def frame(opcode: int, payload: bytes, mask: bool = False) -> bytes:
    """One whole frame. A client masks (``mask=True``), a server does not."""
    if not mask:
        return _header(opcode, len(payload), False) + payload
    key = os.urandom(4)
    return _header(opcode, len(payload), True) + key + unmask(payload, key)


def text(payload: bytes | str, mask: bool = False) -> bytes:
    return frame(OP_TEXT, payload.encode() if isinstance(payload, str) else payload, mask)


def close_frame(code: int, reason: str = "", mask: bool = False) -> bytes:
    body = struct.pack("!H", code) + reason.encode()[:123]
    return frame(OP_CLOSE, body, mask)


def parse_close(payload: bytes) -> tuple[int, str]:
    """A close frame's (code, reason); 1005 when it has no code."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame of one byte")
    code = struct.unpack("!H", payload[:2])[0]
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None


class Message(NamedTuple):
    """A whole message (``opcode`` TEXT or BINARY) or a control frame. ``data`` is ``str``
    for a text message read by a reader made with ``decode_text``, else ``bytes``."""

    opcode: int
    data: bytes | str


class FrameReader:
    """Turns received bytes into whole messages and control frames.

    ``masked``: whether frames must be masked (a server reads masked client frames; a client
    reads unmasked server frames). ``max_size`` bounds a message (close code 1009). With
    ``decode_text`` a text message's data is the decoded ``str``.
    """

    __slots__ = ("_buffer", "_frag_op", "_frag_size", "_fragments", "decode_text", "masked",
                 "max_size")

    def __init__(self, masked: bool, max_size: int = 1 << 20, decode_text: bool = False) -> None:
        self.masked = masked
        self.max_size = max_size
        self.decode_text = decode_text
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._frag_op = 0
        self._frag_size = 0

    def feed(self, data: bytes) -> list[Message]:
        """Parse what ``data`` completes; raises :class:`FrameError` on a violation."""
        buf = self._buffer
        buf += data
        out: list[Message] = []
        pos, end = 0, len(buf)
        masked, max_size = self.masked, self.max_size
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension in use)")
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if bool(b1 & 0x80) != masked:
                raise FrameError(PROTOCOL_ERROR, "frames from a client must be masked, "
                                 "from a server unmasked")
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if opcode in CONTROL:
                if length > 125 or not fin:
                    raise FrameError(PROTOCOL_ERROR, "bad control frame")
            elif opcode not in DATA:
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if length > max_size or self._frag_size + length > max_size:
                raise FrameError(TOO_BIG, f"message over {max_size} bytes")
            total = head + (4 if masked else 0) + length
            if end - pos < total:
                break
            start, pos = pos + head, pos + total
            if masked:
                payload = bytes(_apply_mask(buf[start + 4:pos], buf[start:start + 4]))
            else:
                payload = bytes(buf[start:pos])
            if opcode == OP_TEXT and fin and not self._frag_op:  # the usual case, inline
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    raise FrameError(INVALID_DATA, "text frame is not valid UTF-8") from None
                out.append(Message(OP_TEXT, text if self.decode_text else payload))
            else:
                self._take(opcode, bool(fin), payload, out)
        if pos:
            del buf[:pos]
        return out

    def _take(self, opcode: int, fin: bool, payload: bytes, out: list[Message]) -> None:
        if opcode in CONTROL:
            out.append(Message(opcode, payload))
            return
        if opcode == OP_CONT:
            if not self._frag_op:
                raise FrameError(PROTOCOL_ERROR, "continuation without a first fragment")
            self._fragments.append(payload)
            self._frag_size += len(payload)
            if fin:
                whole = b"".join(self._fragments)
                op = self._frag_op
                self._fragments, self._frag_op, self._frag_size = [], 0, 0
                self._whole(op, whole, out)
            return
        if self._frag_op:
            raise FrameError(PROTOCOL_ERROR, "a new message inside a fragmented one")
        if fin:
            self._whole(opcode, payload, out)
        else:
            self._frag_op, self._fragments, self._frag_size = opcode, [payload], len(payload)

    def _whole(self, opcode: int, payload: bytes, out: list[Message]) -> None:
        if opcode == OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                raise FrameError(INVALID_DATA, "text frame is not valid UTF-8") from None
            if self.decode_text:
                out.append(Message(opcode, text))
                return
        out.append(Message(opcode, payload))
