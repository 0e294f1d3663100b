"""The HTTP half of a broker connection: HTTP/1.1 requests parsed by h11, answered whole or
as a long response, or upgraded to a WebSocket.

Every connection to the broker starts here (:class:`HttpExchange`, owned by its
:class:`~rtkit.aio.conn.Connection`). Requests are handled one at a time: a pipelined
request waits for the answer to the one before it, and at most :data:`TURN_FRAMES` of them
are handled before the other connections run. A request that is not a WebSocket upgrade goes
to the broker's HTTP handler (``rtkit.aio.httpapi``), which answers with
:meth:`HttpExchange.respond` (the connection is kept alive for the next request when the
client allows it, as the SSE transport's POSTs need) or turns the connection into a long
response with :meth:`HttpExchange.start_stream`. An upgrade is checked and answered here;
the WebSocket half is the connection's own (:meth:`Connection.upgraded`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import h11

from rtkit.core import wsframes as ws

if TYPE_CHECKING:
    from rtkit.aio.conn import Connection

#: A connection's turn: frames (or pipelined requests) handled before letting the other
#: connections run.
TURN_FRAMES = 64
#: Largest HTTP request head accepted (h11 answers 431 beyond it).
MAX_REQUEST_HEAD = 16 * 1024
#: Seconds an idle keep-alive connection waits for its next request (at least; see
#: :meth:`HttpExchange.keepalive_timeout`).
KEEPALIVE_IDLE = 30.0

#: Modes of a connection. STREAM: a long HTTP response (an event stream) is being written.
#: SSE and EVENTS are the modes of the session transports of ``rtkit.aio.ssesession``, REPLY
#: that of a REST publish answered later (``rtkit.aio.httpapi``; the broker's flush tells
#: its targets apart by ``mode``).
HTTP, WEBSOCKET, CLOSING, CLOSED, STREAM, SSE, EVENTS, REPLY = range(8)

JSON = "application/json"


class HttpExchange:
    """The HTTP/1.1 side of one connection, while it speaks HTTP."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._request: h11.Request | None = None
        self._body: list[bytes] = []
        self._head_only = False
        self._in_events = False

    def data(self, data: bytes) -> None:
        """Bytes received while the connection speaks HTTP."""
        h = self.h11
        if h is None:
            return
        h.receive_data(data)
        self.events()

    def events(self) -> None:
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
        conn = self.conn
        h = self.h11
        handled = 0
        while conn.mode == HTTP and h is not None and not conn.busy:
            if handled and (not conn.writable or handled >= TURN_FRAMES):
                # Pipelined requests: the next ones wait until the answers so far have
                # drained (memory stays bounded), or for their turn (the others run).
                conn.set_reading(False)
                if conn.writable:
                    conn.turn_pause = asyncio.get_running_loop().call_soon(self.next_turn)
                return
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                self.respond(exc.error_status_hint, _error_json(40000, "bad HTTP request"),
                             close=True, content_type=JSON)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
                self._head_only = event.method == b"HEAD"
                conn.arm_timer(conn.broker.config.auth_timeout)  # the body comes in time
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
                conn.close_transport()
                return

    def next_turn(self) -> None:
        """The pipelined requests' turn (or their answers drained): go on with them."""
        conn = self.conn
        conn.turn_pause = None
        if conn.mode == HTTP and not conn.busy:
            conn.set_reading(True)
            self.events()

    def max_body(self) -> int:
        """Largest request body accepted: a frame, or a batch of frames of at most that."""
        return self.conn.broker.config.max_frame_size + 64

    def _upgrade_or_handle(self) -> None:
        conn = self.conn
        request, self._request = self._request, None
        assert request is not None
        body, self._body = b"".join(self._body), []
        conn.cancel_timer()
        if _is_upgrade(request):
            self._upgrade(request)
        else:
            conn.busy = True
            conn.broker.http_request(conn, request, body)

    def _upgrade(self, request: h11.Request) -> None:
        conn = self.conn
        headers = _headers(request)
        key = headers.get("sec-websocket-key")
        if headers.get("sec-websocket-version") != "13" or not ws.valid_key(key):
            self.respond(400, b"a WebSocket upgrade needs Sec-WebSocket-Version: 13 and a "
                              b"valid Sec-WebSocket-Key\n",
                         [("Sec-WebSocket-Version", "13")], close=True)
            return
        err = conn.broker.admit(conn, headers.get("origin"))
        if err is not None:
            return
        assert key is not None and conn.transport is not None and self.h11 is not None
        trailing = self.h11.trailing_data[0]
        self.h11 = None
        conn.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + ws.accept_key(key).encode() + b"\r\n\r\n")
        conn.upgraded(bytes(trailing))

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None,
                content_type: str = "text/plain; charset=utf-8", close: bool = False) -> None:
        """See :meth:`Connection.respond`."""
        conn = self.conn
        transport = conn.transport
        if transport is None or transport.is_closing() or conn.mode != HTTP:
            return
        h = self.h11
        conn.busy = False
        head = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                *(headers or ())]
        if not close and h is not None and h.our_state is h11.SEND_RESPONSE \
                and h.their_state is h11.DONE:
            try:
                data = h.send(h11.Response(status_code=status, headers=head,
                                           reason=_REASONS.get(status, "")))
                if body and not self._head_only:
                    data += h.send(h11.Data(data=body))
                data += h.send(h11.EndOfMessage())
            except h11.LocalProtocolError:
                pass
            else:
                conn.last_write = time.monotonic()
                transport.write(data)
                if _cycle_done(h):
                    h.start_next_cycle()
                    conn.set_reading(True)
                    conn.arm_timer(self.keepalive_timeout())
                    self.events()  # a request already received (pipelined)
                    return
                conn.mode = CLOSED
                conn.close_transport()
                return
        reason = _REASONS.get(status, "")
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in head),
                 "Connection: close"]
        transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        conn.mode = CLOSED
        conn.close_transport()

    def keepalive_timeout(self) -> float:
        """See :meth:`Connection.keepalive_timeout`."""
        c = self.conn.broker.config
        return max(KEEPALIVE_IDLE, 2 * c.heartbeat_interval, c.auth_timeout)

    def start_stream(self, owner: Any, headers: list[tuple[str, str]],
                     status: int = 200) -> None:
        """See :meth:`Connection.start_stream`."""
        conn = self.conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        conn.busy = False
        self.h11 = None  # no further requests on this connection
        conn.mode = STREAM
        conn.owner = owner
        conn.cancel_timer()
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
                 *(f"{k}: {v}" for k, v in headers), "Connection: close"]
        conn.last_write = time.monotonic()
        transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
        conn.set_reading(True)


def _error_json(code: int, message: str) -> bytes:
    return b'{"error":{"code":%d,"message":"%s"}}\n' % (code, message.encode())


def _cycle_done(conn: h11.Connection) -> bool:
    """Both sides finished the request and response: the connection can be reused."""
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


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
