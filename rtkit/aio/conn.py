"""One TCP connection to the broker: an HTTP/1.1 request (parsed by h11, see
``rtkit.aio.conn_http``), then, after a WebSocket upgrade, WebSocket frames
(``rtkit.core.wsframes``) handed to the broker's core.

A plain :class:`asyncio.Protocol`, not a coroutine per connection: bytes received are parsed
in one loop; frames go to :class:`~rtkit.core.broker.BrokerCore` a bounded *turn* at a time
(:data:`TURN_FRAMES`), after which reading pauses until the other connections have run (a
flooder, one whose requests were refused for the rate, waits :data:`FLOOD_PAUSE`). What the
core sends is queued per connection by the broker and written once per event-loop
iteration, one ``write`` for everything this connection gets (see ``rtkit.aio.broker``).

This module is the protocol and the WebSocket half; the HTTP half is a helper each
connection owns (:class:`~rtkit.aio.conn_http.HttpExchange`). Requests that are not a
WebSocket upgrade go to the broker's HTTP handler (``rtkit.aio.httpapi``): it answers with
:meth:`Connection.respond` (the connection is kept alive for the next request when the client
allows it, as the SSE transport's POSTs need), or turns the connection into a long response
with :meth:`Connection.start_stream` (an event stream: the bytes queued in ``out`` by the
broker's flush are written as they come).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from rtkit.aio.conn_http import (
    CLOSED,
    CLOSING,
    EVENTS,
    HTTP,
    JSON,
    KEEPALIVE_IDLE,
    MAX_REQUEST_HEAD,
    REPLY,
    SSE,
    STREAM,
    TURN_FRAMES,
    WEBSOCKET,
    HttpExchange,
    _headers,
)
from rtkit.core import wsframes as ws
from rtkit.core.session import Session

if TYPE_CHECKING:
    from rtkit.aio.broker import Broker

__all__ = [
    "CLOSED", "CLOSE_TIMEOUT", "CLOSING", "EVENTS", "FLOOD_PAUSE", "HTTP", "JSON",
    "KEEPALIVE_IDLE", "MAX_REQUEST_HEAD", "REPLY", "SSE", "STREAM", "TURN_FRAMES", "WEBSOCKET",
    "Connection", "_headers",
]

log = logging.getLogger("rtkit.broker")

#: After a turn with a request refused for the rate, the connection's next turn waits this
#: long: a flood is read at most TURN_FRAMES per pause (then TCP slows the sender down).
FLOOD_PAUSE = 0.01
#: Seconds to wait for the peer's close frame after sending ours.
CLOSE_TIMEOUT = 2.0


class Connection(asyncio.Protocol):
    """The broker's side of one connection. ``session`` exists once upgraded."""

    #: Set by SSE transports that pass the outbound limit while queuing; a WebSocket's
    #: buffer is checked after each flush (one check per connection, not per frame).
    overflowed = False

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.address: str | None = None
        self.mode = HTTP
        self.session: Session | None = None
        self.out: list[bytes] = []  # frames queued by the current flush
        self.last_rx = 0.0
        self.pinged = False
        self.admitted = False
        self.writable = True
        self.http = HttpExchange(self)
        self._reader: ws.FrameReader | None = None
        self._inbox: deque[ws.Message] = deque()
        #: Set while the connection waits for its next turn.
        self.turn_pause: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        #: What a STREAM connection carries (an SSE session's or a channel's event stream):
        #: told when the connection drains or is lost.
        self.owner: Any = None
        #: A request is being handled (a POST whose frames wait for a replay): the next one
        #: is read only after the response.
        self.busy = False
        self.last_write = 0.0

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        loop = asyncio.get_running_loop()
        self.last_rx = time.monotonic()
        # The request (and, for a WebSocket, the upgrade) must come in time.
        self._timer = loop.call_later(self.broker.config.auth_timeout, self._request_timeout)
        self.broker.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.pinged = False
        if self.mode == WEBSOCKET:
            self._frames(data)
        elif self.mode == CLOSING:
            self._closing_frames(data)
        elif self.mode == HTTP:
            self.http.data(data)
        # STREAM: the client has nothing more to say on a stream's connection; ignored.

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.mode = CLOSED
        for handle in (self._timer, self.turn_pause):
            if handle is not None:
                handle.cancel()
        self._inbox.clear()
        self.broker.connection_lost(self)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.session is not None and self.session.streams:
            self.broker.pump(self)
        elif self.owner is not None:
            self.owner.drained()
        elif self.mode == HTTP and not self.busy and self.turn_pause is None:
            self.http.next_turn()  # answers drained: the pipelined requests go on

    # ---------------------------------------------------------------- HTTP

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None,
                content_type: str = "text/plain; charset=utf-8", close: bool = False) -> None:
        """Answer the request with a whole response. The connection stays open for the next
        request when the client allows it (HTTP/1.1 keep-alive) and ``close`` is false."""
        self.http.respond(status, body, headers, content_type, close)

    def start_stream(self, owner: Any, headers: list[tuple[str, str]],
                     status: int = 200) -> None:
        """Answer with a long response (no length: it ends when the connection closes) whose
        body is written as the broker flushes ``out``; ``owner`` is told when the connection
        drains (``drained()``) and when it is lost (``stream_lost(conn)``)."""
        self.http.start_stream(owner, headers, status)

    def keepalive_timeout(self) -> float:
        """How long an idle keep-alive connection waits for its next request: at least
        :data:`KEEPALIVE_IDLE`, and two heartbeat intervals (an SSE client posts at least a
        heartbeat every interval)."""
        return self.http.keepalive_timeout()

    def max_body(self) -> int:
        """Largest request body accepted: a frame, or a batch of frames of at most that."""
        return self.http.max_body()

    def pause(self) -> None:
        """Stop reading this connection's socket (a request is waiting for its turn)."""
        self.set_reading(False)

    def arm_timer(self, seconds: float) -> None:
        """Give the request (or the next one) ``seconds`` to come, else drop the connection."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._request_timeout)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---------------------------------------------------------------- WebSocket frames

    def upgraded(self, trailing: bytes) -> None:
        """The upgrade is answered (101): WebSocket frames from now on, starting with
        ``trailing`` (what came after the request)."""
        self.cancel_timer()
        self.mode = WEBSOCKET
        self._reader = ws.FrameReader(masked=True, max_size=self.broker.config.max_frame_size,
                                      decode_text=True)
        self.session = self.broker.open_session(self)
        if trailing:
            self._frames(trailing)

    def _frames(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        try:
            self._inbox.extend(reader.feed(data))
        except ws.FrameError as exc:
            log.info("closing %s: %s", self.address, exc.reason)
            self._handle_inbox()  # what came before the violation still counts
            self.close(exc.code, exc.reason)
            return
        if self.turn_pause is None and not self._streaming():
            self._handle_inbox()

    def _closing_frames(self, data: bytes) -> None:
        """Our close frame is sent: only the peer's close frame matters now."""
        assert self._reader is not None
        try:
            frames = self._reader.feed(data)
        except ws.FrameError:
            self.close_transport()
            return
        if any(m.opcode == ws.OP_CLOSE for m in frames):
            self.close_transport()

    def _handle_inbox(self) -> None:
        """Hand frames to the core: a turn's worth, then pause reading until the others ran."""
        inbox, s, broker = self._inbox, self.session, self.broker
        if s is None:
            return
        core, now = broker.core, time.monotonic()
        refused_before = s.rate_limited
        handled = 0
        while inbox and handled < TURN_FRAMES and self.mode != CLOSED:
            msg = inbox.popleft()
            op = msg.opcode
            if op == ws.OP_TEXT or op == ws.OP_BINARY:
                if self.mode == WEBSOCKET:
                    core.receive(s, msg.data, now)
                    handled += 1
                    if s.streams:
                        break  # a replay is written first; the next frames wait for it
            elif op == ws.OP_PING:
                self.flush_out()
                self.send_control(ws.frame(ws.OP_PONG, _control(msg)))
            elif op == ws.OP_CLOSE:
                self._peer_closed(_control(msg))
                return
        broker.schedule_flush()
        if self.mode != WEBSOCKET:
            return
        if s.streams:
            self.set_reading(False)
            broker.streaming.add(self)
        elif inbox:
            # The end of this connection's turn; a flooder waits a little longer.
            self.set_reading(False)
            loop = asyncio.get_running_loop()
            if s.rate_limited != refused_before:
                self.turn_pause = loop.call_later(FLOOD_PAUSE, self._next_turn)
            else:
                self.turn_pause = loop.call_soon(self._next_turn)
        else:
            self.set_reading(True)

    def _next_turn(self) -> None:
        self.turn_pause = None
        if self.mode == WEBSOCKET:
            self._handle_inbox()

    def streams_done(self) -> None:
        """The session's replays are written: read its next frames."""
        if self.mode == WEBSOCKET and self.turn_pause is None:
            self._handle_inbox()

    def _streaming(self) -> bool:
        return self.session is not None and bool(self.session.streams)

    def set_reading(self, on: bool) -> None:
        """Read the socket (``on``) or pause reading it."""
        if self.transport is None or on != self._reading_paused:
            return
        self._reading_paused = not on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def _peer_closed(self, payload: bytes) -> None:
        try:
            code, _ = ws.parse_close(payload)
        except ws.FrameError:
            code = ws.PROTOCOL_ERROR
        if self.mode == WEBSOCKET:  # the peer starts the closing handshake: answer it
            self.flush_out()
            self.send_control(ws.close_frame(1000 if code == 1005 else code))
        self.mode = CLOSING
        self.close_transport()

    # ---------------------------------------------------------------- output

    def flush_out(self) -> None:
        """Write the frames queued for this connection (one write)."""
        out = self.out
        if not out:
            return
        self.out = []
        transport = self.transport
        if transport is None or transport.is_closing() or self.mode == CLOSED:
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    def write(self, data: bytes) -> None:
        """Write ``data`` now (a STREAM's bytes)."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and self.mode == STREAM:
            self.last_write = time.monotonic()
            transport.write(data)

    def send_control(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: our close frame, then wait for the peer's (at most
        :data:`CLOSE_TIMEOUT`)."""
        if self.mode != WEBSOCKET:
            if self.mode in (HTTP, STREAM):
                self.close_transport()
            return
        self.flush_out()
        self.send_control(ws.close_frame(code, reason))
        self.mode = CLOSING
        self.set_reading(True)  # the peer's close frame must be read
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    def close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.out = []
        if self.transport is not None:
            self.transport.abort()

    def buffered(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _request_timeout(self) -> None:
        self._timer = None
        if self.mode == HTTP and not self.busy:
            log.debug("no complete request from %s in time", self.address)
            self.abort()



def _control(msg: ws.Message) -> bytes:
    data = msg.data
    return data if isinstance(data, bytes) else data.encode()
