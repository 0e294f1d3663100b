"""One WebSocket link of a client: websockets' sans-I/O protocol under a plain asyncio
:class:`asyncio.Protocol`, with rtkit's own frame reader on the receiving hot path.

websockets' protocol object opens the link (the handshake), writes every frame, answers
pings and runs the closing handshake. Once the link is open, the bytes received go through
:class:`rtkit.core.wsframes.FrameReader` (one loop over the buffer, about a third of the
cost per frame): data frames go up, control frames are handed to the protocol object as
they came, so it keeps answering them as RFC 6455 says.

The link only moves bytes: the frames of each read go to ``on_frames`` together (text
frames as ``str``, binary ones as ``bytes``), the end of the link to ``on_lost`` (once, with
the error that ended it); :meth:`send` writes a text frame at once, with no coroutine per
message. Every decision about what the frames mean, and when to give
up on a silent link, is the client core's.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from rtkit.core import wsframes
from rtkit.errors import ConnectionFailed, Disconnected, RtkitError, error

log = logging.getLogger("rtkit.client")


def error_from_close(code: int | None, reason: str) -> RtkitError:
    """Map a WebSocket close (code, reason) to an rtkit error (see docs/protocol.md)."""
    head, _, rest = reason.partition(" ")
    if head.isdigit() and len(head) == 5:
        return error(int(head), rest or None)
    if code == 1009:
        return error(42902, reason or None)
    return Disconnected(f"connection closed (code {code}{', ' + reason if reason else ''})")


def refusal(exc: BaseException) -> RtkitError | None:
    """The broker's reason for refusing the WebSocket upgrade (origin not allowed, too many
    connections...): its body starts with the five-digit error code."""
    response = getattr(exc, "response", None)
    body = getattr(response, "body", None)
    if not isinstance(body, bytes | bytearray):
        return None
    head, _, rest = bytes(body).decode(errors="replace").strip().partition(" ")
    if head.isdigit() and len(head) == 5:
        return error(int(head), rest or None)
    status = getattr(response, "status_code", None)
    return ConnectionFailed(f"the broker refused the WebSocket upgrade (HTTP {status})",
                            code=80004)


def _text(data: bytes) -> str | bytes:
    try:
        return data.decode()
    except UnicodeDecodeError:  # the protocol checks UTF-8; be safe anyway (40004 then)
        return data


#: Bytes read from the socket at a time. The messages of one read wait together for an
#: ``async for`` subscriber (which runs between reads); reads much larger than this keep
#: so many young objects alive that the garbage collector costs more than the reads save.
READ_SIZE = 32 * 1024


class WebSocketLink(asyncio.BufferedProtocol):
    """A WebSocket to the broker. :meth:`open` connects and completes the handshake."""

    transport_name = "websocket"

    def __init__(
        self,
        url: str,
        on_frames: Callable[[list[str | bytes]], None],
        on_lost: Callable[[RtkitError], None],
        max_size: int | None,
        ssl: ssl_module.SSLContext | None = None,
        close_timeout: float = 1.0,
    ) -> None:
        self.url = url
        self._on_frames = on_frames
        self._on_lost = on_lost
        self._max_size = max_size
        self._ssl = ssl
        self._close_timeout = close_timeout
        self._transport: asyncio.Transport | None = None
        self._protocol: ClientProtocol | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._fragments: list[bytes] = []
        self._reader: wsframes.FrameReader | None = None  # once open
        self._read_view = memoryview(bytearray(READ_SIZE))
        self._error: RtkitError | None = None
        self._lost = False
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def open(self) -> bool:
        return self._protocol is not None and self._protocol.state is State.OPEN \
            and not self._lost

    async def connect(self) -> None:
        """Open the TCP (or TLS) connection and complete the WebSocket handshake.

        Raises :class:`~rtkit.ConnectionFailed` when either fails.
        """
        loop = asyncio.get_running_loop()
        try:
            uri = parse_uri(self.url)
        except InvalidURI as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {exc}") from exc
        context = self._ssl
        if uri.secure and context is None:
            context = ssl_module.create_default_context()
        self._protocol = ClientProtocol(uri, max_size=self._max_size)
        self._handshake = loop.create_future()
        try:
            await loop.create_connection(
                lambda: self, uri.host, uri.port, ssl=context if uri.secure else None,
                server_hostname=uri.host if uri.secure else None)
            await self._handshake
        except (OSError, InvalidHandshake, ssl_module.SSLError) as exc:
            err = refusal(exc) or ConnectionFailed(
                f"cannot connect to {self.url}: {exc}",
                # Connected, then the upgrade broke: the WebSocket itself does not get through.
                code=80004 if self._transport is not None else 80000)
            self.abort(err)
            raise err from exc
        except asyncio.CancelledError:
            self.abort(ConnectionFailed("connect cancelled"))
            raise

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) and self._protocol is not None
        self._transport = transport
        protocol = self._protocol
        protocol.send_request(protocol.connect())
        self._write_pending()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        assert protocol is not None
        self.bytes_in += len(data)
        if self._reader is not None:
            self._read_frames(self._reader, protocol, data)
            return
        protocol.receive_data(data)
        events = protocol.events_received()
        self._write_pending()
        received: list[str | bytes] = []
        for event in events:
            if isinstance(event, Frame):
                self._frame(event, received)
            elif isinstance(event, Response):
                self._handshake_done(protocol)
        if received:
            self._on_frames(received)
        if protocol.state is State.OPEN and not protocol.reader.buffer and not self._fragments:
            # Open, and nothing half-read: rtkit's reader takes over from here.
            self._reader = wsframes.FrameReader(masked=False,
                                                max_size=self._max_size or 1 << 62)
        self._closing(protocol)

    def _read_frames(self, reader: wsframes.FrameReader, protocol: ClientProtocol,
                     data: bytes) -> None:
        try:
            frames = reader.feed(data)
        except wsframes.FrameError as exc:  # the broker broke the framing: fail the link
            self._reader = None
            self._error = self._error or Disconnected(
                f"invalid WebSocket data from the broker ({exc.code}: {exc.reason})")
            protocol.fail(exc.code, exc.reason)
            self._write_pending()
            if self._transport is not None:
                self._transport.close()
            return
        received: list[str | bytes] = []
        for frame in frames:
            opcode = frame.opcode
            data = cast(bytes, frame.data)  # a reader made without decode_text: always bytes
            if opcode == wsframes.OP_TEXT:
                received.append(data.decode())  # (valid UTF-8: the reader checked)
            elif opcode == wsframes.OP_BINARY:
                received.append(data)  # not text: the core reports it (40004)
            else:  # ping, pong, close: the protocol object answers, as it came
                protocol.receive_data(wsframes.frame(opcode, data))
                protocol.events_received()
                self._write_pending()
                if opcode == wsframes.OP_CLOSE:
                    self._reader = None  # nothing follows a close
                    break
        if received:
            self._on_frames(received)
        self._closing(protocol)

    def _closing(self, protocol: ClientProtocol) -> None:
        if protocol.close_expected() and self._transport is not None:
            asyncio.get_running_loop().call_later(self._close_timeout, self._force_close)

    def _handshake_done(self, protocol: ClientProtocol) -> None:
        fut = self._handshake
        if fut is None or fut.done():
            return
        if protocol.handshake_exc is not None:
            exc = protocol.handshake_exc
            fut.set_exception(exc if isinstance(exc, InvalidHandshake)
                              else InvalidHandshake(str(exc)))
        else:
            fut.set_result(None)

    def _frame(self, frame: Frame, received: list[str | bytes]) -> None:
        opcode = frame.opcode
        data = bytes(frame.data)
        if opcode is Opcode.TEXT:
            if frame.fin:
                received.append(_text(data))
            else:
                self._fragments = [data]
        elif opcode is Opcode.CONT and self._fragments:
            self._fragments.append(data)
            if frame.fin:
                whole, self._fragments = b"".join(self._fragments), []
                received.append(_text(whole))
        elif opcode is Opcode.BINARY:
            received.append(data)  # not text: the core reports a malformed frame (40004)

    def eof_received(self) -> bool | None:
        if self._protocol is not None:
            self._protocol.receive_eof()
            self._write_pending()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        protocol = self._protocol
        if protocol is not None:
            protocol.receive_eof()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(OSError(f"connection closed during the handshake"
                                                  f"{': ' + str(exc) if exc else ''}"))
        self._finish(self._error or self._close_error(exc))

    def _close_error(self, exc: Exception | None) -> RtkitError:
        protocol = self._protocol
        rcvd = protocol.close_rcvd if protocol is not None else None
        if rcvd is not None:
            return error_from_close(rcvd.code, rcvd.reason)
        return Disconnected(f"connection lost{': ' + str(exc) if exc else ''}")

    def _finish(self, err: RtkitError) -> None:
        if not self._lost:
            self._lost = True
            self._on_lost(err)

    # ---------------------------------------------------------------- output

    def _write_pending(self) -> None:
        protocol, transport = self._protocol, self._transport
        if protocol is None or transport is None:
            return
        for data in protocol.data_to_send():
            if data:
                self.bytes_out += len(data)
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    def send(self, text: str) -> bool:
        """Write one text frame now; False if the link is not open."""
        protocol = self._protocol
        if protocol is None or protocol.state is not State.OPEN or self._lost:
            return False
        protocol.send_text(text.encode())
        self._write_pending()
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the transport closes after ``close_timeout``."""
        protocol = self._protocol
        if protocol is not None and protocol.state is State.OPEN:
            protocol.send_close(code, reason)
            self._write_pending()
        asyncio.get_running_loop().call_later(self._close_timeout, self._force_close)

    def _force_close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def abort(self, err: RtkitError) -> None:
        """End the link at once (no closing handshake), reporting ``err``."""
        self._error = self._error or err
        if self._transport is not None:
            self._transport.abort()
        elif not self._lost:
            self._lost = True  # never opened: nothing to report

    @property
    def write_buffer_size(self) -> int:
        t = self._transport
        return t.get_write_buffer_size() if t is not None else 0
