"""One TCP connection to the broker: an HTTP/1.1 request (parsed by h11), then, after a
WebSocket upgrade, WebSocket frames (``rtkit.core.wsframes``) handed to the broker's core.

A plain :class:`asyncio.Protocol`, not a coroutine per connection: bytes received are parsed
in one loop; frames go to :class:`~rtkit.core.broker.BrokerCore` a bounded *turn* at a time
(:data:`TURN_FRAMES`), after which reading pauses until the other connections have run (a
flooder, one whose requests were refused for the rate, waits :data:`FLOOD_PAUSE`). What the
core sends is queued per connection by the broker and written once per event-loop
iteration, one ``write`` for everything this connection gets (see ``rtkit.aio.broker``).

Requests that are not a WebSocket upgrade go to the broker's HTTP handler
(``rtkit.aio.httpapi``): it answers with :meth:`Connection.respond` (the connection is kept
alive for the next request when the client allows it, as the SSE transport's POSTs need), or
turns the connection into a long response with :meth:`Connection.start_stream` (an event
stream: the bytes queued in ``out`` by the broker's flush are written as they come).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import h11

from rtkit.core import wsframes as ws
from rtkit.core.session import Session

if TYPE_CHECKING:
    from rtkit.aio.broker import Broker

log = logging.getLogger("rtkit.broker")

#: A connection's turn: frames handled before letting the other connections run.
TURN_FRAMES = 64
#: After a turn with a request refused for the rate, the connection's next turn waits this
#: long: a flood is read at most TURN_FRAMES per pause (then TCP slows the sender down).
FLOOD_PAUSE = 0.01
#: Seconds to wait for the peer's close frame after sending ours.
CLOSE_TIMEOUT = 2.0
#: Largest HTTP request head accepted (h11 answers 431 beyond it).
MAX_REQUEST_HEAD = 16 * 1024

#: Seconds an idle keep-alive connection waits for its next request (at least; see
#: :meth:`Connection.keepalive_timeout`).
KEEPALIVE_IDLE = 30.0

#: Modes of a connection. STREAM: a long HTTP response (an event stream) is being written.
#: SSE and EVENTS are the modes of the session transports of ``rtkit.aio.ssesession``, REPLY
#: that of a REST publish answered later (``rtkit.aio.httpapi``; the broker's flush tells
#: its targets apart by ``mode``).
HTTP, WEBSOCKET, CLOSING, CLOSED, STREAM, SSE, EVENTS, REPLY = range(8)


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
        self._http: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._request: h11.Request | None = None
        self._body: list[bytes] = []
        self._reader: ws.FrameReader | None = None
        self._inbox: deque[ws.Message] = deque()
        self._turn_pause: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        #: What a STREAM connection carries (an SSE session's or a channel's event stream):
        #: told when the connection drains or is lost.
        self.owner: Any = None
        #: A request is being handled (a POST whose frames wait for a replay): the next one
        #: is read only after the response.
        self.busy = False
        self.last_write = 0.0
        self._head_only = False
        self._in_events = False

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
            self._http_data(data)
        # STREAM: the client has nothing more to say on a stream's connection; ignored.

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.mode = CLOSED
        for handle in (self._timer, self._turn_pause):
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
        elif self.mode == HTTP and not self.busy and self._turn_pause is None:
            self._next_http_turn()  # answers drained: the pipelined requests go on

    # ---------------------------------------------------------------- HTTP

    def _http_data(self, data: bytes) -> None:
        conn = self._http
        if conn is None:
            return
        conn.receive_data(data)
        self._http_events()

    def _http_events(self) -> None:
        """Handle the requests received, one at a time (a pipelined request waits for the
        answer to the one before it). Not re-entered: an answer given while handling a
        request lets this loop go on to the next one."""
        if self._in_events:
            return
        self._in_events = True
        try:
            self._next_requests()
        finally:
            self._in_events = False

    def _next_requests(self) -> None:
        conn = self._http
        handled = 0
        while self.mode == HTTP and conn is not None and not self.busy:
            if handled and (not self.writable or handled >= TURN_FRAMES):
                # Pipelined requests: the next ones wait until the answers so far have
                # drained (memory stays bounded), or for their turn (the others run).
                self._set_reading(False)
                if self.writable:
                    self._turn_pause = asyncio.get_running_loop().call_soon(
                        self._next_http_turn)
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.respond(exc.error_status_hint, _error_json(40000, "bad HTTP request"),
                             close=True, content_type=JSON)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
                self._head_only = event.method == b"HEAD"
                self._arm_timer(self.broker.config.auth_timeout)  # the body comes in time
            elif isinstance(event, h11.Data):
                self._body.append(bytes(event.data))
                if sum(map(len, self._body)) > self.max_body():
                    self.respond(413, _error_json(42902, "request body too large"),
                                 close=True, content_type=JSON)
                    return
            elif isinstance(event, h11.EndOfMessage):
                handled += 1
                self._upgrade_or_handle()
            elif isinstance(event, h11.ConnectionClosed):
                self.close_transport()
                return

    def _next_http_turn(self) -> None:
        self._turn_pause = None
        if self.mode == HTTP and not self.busy:
            self._set_reading(True)
            self._http_events()

    def max_body(self) -> int:
        """Largest request body accepted: a frame, or a batch of frames of at most that."""
        return self.broker.config.max_frame_size + 64

    def _upgrade_or_handle(self) -> None:
        request, self._request = self._request, None
        assert request is not None
        body, self._body = b"".join(self._body), []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if _is_upgrade(request):
            self._upgrade(request)
        else:
            self.busy = True
            self.broker.http_request(self, request, body)

    def _upgrade(self, request: h11.Request) -> None:
        headers = _headers(request)
        key = headers.get("sec-websocket-key")
        if headers.get("sec-websocket-version") != "13" or not ws.valid_key(key):
            self.respond(400, b"a WebSocket upgrade needs Sec-WebSocket-Version: 13 and a "
                              b"valid Sec-WebSocket-Key\n",
                         [("Sec-WebSocket-Version", "13")], close=True)
            return
        err = self.broker.admit(self, headers.get("origin"))
        if err is not None:
            return
        assert key is not None and self.transport is not None and self._http is not None
        trailing = self._http.trailing_data[0]
        self._http = None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + ws.accept_key(key).encode() + b"\r\n\r\n")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.mode = WEBSOCKET
        self._reader = ws.FrameReader(masked=True, max_size=self.broker.config.max_frame_size,
                                      decode_text=True)
        self.session = self.broker.open_session(self)
        if trailing:
            self._frames(bytes(trailing))

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None,
                content_type: str = "text/plain; charset=utf-8", close: bool = False) -> None:
        """Answer the request with a whole response. The connection stays open for the next
        request when the client allows it (HTTP/1.1 keep-alive) and ``close`` is false."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.mode != HTTP:
            return
        conn = self._http
        self.busy = False
        head = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                *(headers or ())]
        if not close and conn is not None and conn.our_state is h11.SEND_RESPONSE \
                and conn.their_state is h11.DONE:
            try:
                data = conn.send(h11.Response(status_code=status, headers=head,
                                              reason=_REASONS.get(status, "")))
                if body and not self._head_only:
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
            except h11.LocalProtocolError:
                pass
            else:
                self.last_write = time.monotonic()
                transport.write(data)
                if _cycle_done(conn):
                    conn.start_next_cycle()
                    self._set_reading(True)
                    self._arm_timer(self.keepalive_timeout())
                    self._http_events()  # a request already received (pipelined)
                    return
                self.mode = CLOSED
                self.close_transport()
                return
        reason = _REASONS.get(status, "")
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in head),
                 "Connection: close"]
        transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        self.mode = CLOSED
        self.close_transport()

    def keepalive_timeout(self) -> float:
        """How long an idle keep-alive connection waits for its next request: at least
        :data:`KEEPALIVE_IDLE`, and two heartbeat intervals (an SSE client posts at least a
        heartbeat every interval)."""
        c = self.broker.config
        return max(KEEPALIVE_IDLE, 2 * c.heartbeat_interval, c.auth_timeout)

    def start_stream(self, owner: Any, headers: list[tuple[str, str]],
                     status: int = 200) -> None:
        """Answer with a long response (no length: it ends when the connection closes) whose
        body is written as the broker flushes ``out``; ``owner`` is told when the connection
        drains (``drained()``) and when it is lost (``stream_lost(conn)``)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.busy = False
        self._http = None  # no further requests on this connection
        self.mode = STREAM
        self.owner = owner
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
                 *(f"{k}: {v}" for k, v in headers), "Connection: close"]
        self.last_write = time.monotonic()
        transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
        self._set_reading(True)

    def pause(self) -> None:
        """Stop reading this connection's socket (a request is waiting for its turn)."""
        self._set_reading(False)

    def _arm_timer(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._request_timeout)

    # ---------------------------------------------------------------- WebSocket frames

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
        if self._turn_pause is None and not self._streaming():
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
            self._set_reading(False)
            broker.streaming.add(self)
        elif inbox:
            # The end of this connection's turn; a flooder waits a little longer.
            self._set_reading(False)
            loop = asyncio.get_running_loop()
            if s.rate_limited != refused_before:
                self._turn_pause = loop.call_later(FLOOD_PAUSE, self._next_turn)
            else:
                self._turn_pause = loop.call_soon(self._next_turn)
        else:
            self._set_reading(True)

    def _next_turn(self) -> None:
        self._turn_pause = None
        if self.mode == WEBSOCKET:
            self._handle_inbox()

    def streams_done(self) -> None:
        """The session's replays are written: read its next frames."""
        if self.mode == WEBSOCKET and self._turn_pause is None:
            self._handle_inbox()

    def _streaming(self) -> bool:
        return self.session is not None and bool(self.session.streams)

    def _set_reading(self, on: bool) -> None:
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
        self._set_reading(True)  # the peer's close frame must be read
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


JSON = "application/json"


def _error_json(code: int, message: str) -> bytes:
    return b'{"error":{"code":%d,"message":"%s"}}\n' % (code, message.encode())


def _cycle_done(conn: h11.Connection) -> bool:
    """Both sides finished the request and response: the connection can be reused."""
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


def _control(msg: ws.Message) -> bytes:
    data = msg.data
    return data if isinstance(data, bytes) else data.encode()


def _is_upgrade(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


def _headers(request: h11.Request) -> dict[str, str]:
    """Lowercase names; a repeated header's values joined by ", " (so a repeated
    Sec-WebSocket-Key or -Version is invalid, as it must be)."""
    out: dict[str, str] = {}
    for name, value in request.headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 426: "Upgrade Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable",
}
