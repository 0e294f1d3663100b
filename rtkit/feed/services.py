"""The asyncio side of the replay servers: a paced source of records, broadcast to the
connected clients over WebSockets (``websockets``) or Server-Sent Events (HTTP/1.1 with h11),
with faults on demand. An :class:`Emulation` (see :mod:`rtkit.feed.emulations`) says what
an emulated feed sends; :mod:`rtkit.feed.replay` runs a :class:`Service` in its own thread.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from rtkit.core import sse

log = logging.getLogger("rtkit.feed.replay")
MAX_BUFFER = 4 * 1024 * 1024  # a client further behind than this is cut off
_ids = itertools.count(1)


@dataclass(eq=False)
class Peer:
    """One connected client: how to send it a frame, and what it asked for."""

    kind: str  # "ws" or "sse"
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    ws: ServerConnection | None = None
    writer: asyncio.StreamWriter | None = None
    conn: h11.Connection | None = None
    wants: set[str] = field(default_factory=set)  # products, collections... (per emulation)
    id: int = field(default_factory=lambda: next(_ids))
    sent: int = 0

    def send(self, frame: str | bytes) -> None:
        """Queue ``frame`` without waiting; a client too far behind is cut off."""
        if self.ws is not None:
            transport = self.ws.transport
            if transport is None or transport.get_write_buffer_size() > MAX_BUFFER:
                self.abort()
                return
            broadcast([self.ws], frame)
        elif self.writer is not None and self.conn is not None:
            if self.writer.transport.is_closing():
                return
            if self.writer.transport.get_write_buffer_size() > MAX_BUFFER:
                self.abort()
                return
            data = frame.encode() if isinstance(frame, str) else frame
            self.writer.write(self.conn.send(h11.Data(data=data)))
        self.sent += 1

    def abort(self) -> None:
        transport = self.ws.transport if self.ws is not None else (
            self.writer.transport if self.writer is not None else None)
        if transport is not None:
            transport.abort()


class Emulation(abc.ABC):
    """What one emulated feed sends and how it answers its clients."""

    kind = "ws"  # or "sse"
    path = "/"  # where the stream is served

    @abc.abstractmethod
    def produce(self, now: float) -> Any:
        """The next record, stamped ``now`` (seconds since the epoch)."""

    def key(self, record: Any) -> Hashable:
        """Which stream a record belongs to (for skips and repeats)."""
        return None

    def position(self, record: Any) -> Any:
        """Where a record sits in the history (an offset, a cursor), for resuming."""
        return None

    def frame(self, record: Any) -> str | bytes:
        """The record as sent (compact JSON text by default)."""
        return json.dumps(record, separators=(",", ":"))

    def interested(self, peer: Peer, record: Any) -> bool:
        """Whether ``peer`` gets ``record`` (its subscription, its filters)."""
        return True

    def opened(self, service: Service, peer: Peer) -> None:
        """A client connected: replay history here (nothing else runs meanwhile)."""
        return

    def received(self, service: Service, peer: Peer, message: str | bytes) -> None:
        """A WebSocket client sent ``message``."""
        return

    def http(self, path: str, query: dict[str, list[str]]) -> tuple[int, str] | None:
        """A plain HTTP GET beside the stream: (status, JSON body), or None for 404."""
        return None


class Service:
    """Paces an :class:`Emulation`'s records at ``rate`` per second and sends each to the
    interested clients; keeps the latest ``history`` for resuming clients."""

    def __init__(self, emulation: Emulation, rate: float, history: int = 1000,
                 keepalive: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 records per second")
        if keepalive is not None and keepalive <= 0:
            raise ValueError("keepalive must be > 0 seconds (or None)")
        self.keepalive = keepalive
        self.emulation = emulation
        self.kind = emulation.kind
        self.path = emulation.path
        self.rate = rate
        self.paused = False
        self.peers: dict[int, Peer] = {}
        #: The latest records sent: (position, key, frame, record), oldest first.
        self.history: deque[tuple[Any, Hashable, str | bytes, Any]] = deque(maxlen=history)
        self.totals = {"connections": 0, "produced": 0, "skipped": 0, "repeated": 0,
                       "garbage": 0, "dropped": 0}
        self.messages: list[Any] = []  # what clients sent (subscriptions...), the latest 1,000
        self._skips: list[list[Any]] = []  # [key or None, how many more to skip]
        self._last: dict[Hashable, tuple[Any, str | bytes]] = {}
        self._server: Server | asyncio.Server | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._sse_transports: set[asyncio.WriteTransport] = set()  # every SSE connection
        self.host, self.port = "", 0

    # ---------------------------------------------------------------- running

    async def start(self, host: str, port: int) -> None:
        if self.kind == "ws":
            server = await serve(self._ws_handler, host, port, process_request=self._plain_http,
                                 ping_interval=None, compression=None, max_size=1024 * 1024)
            self._server = server
        else:
            self._server = await asyncio.start_server(self._sse_handler, host, port)
        assert self._server.sockets
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._pump = asyncio.get_running_loop().create_task(self._run())
        if self.kind == "sse" and self.keepalive is not None:
            self._pinger = asyncio.get_running_loop().create_task(self._keep_alive())

    async def stop(self) -> None:
        for task in (self._pump, self._pinger):
            if task is not None:
                task.cancel()
        if self._server is not None:
            self._server.close()
        self.drop_all(count=False)
        # End SSE handlers by closing their connections, not by cancelling them: Python
        # 3.11's start_server calls exception() on a cancelled handler task and logs a
        # spurious "Exception in callback" traceback (printed under a notebook's cell).
        for transport in list(self._sse_transports):
            transport.abort()
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += 1 / self.rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            if self.paused:
                due = loop.time()
                continue
            now = time.time()
            late = loop.time() - due
            for _ in range(1 + min(int(late * self.rate), 1000)):  # catch up after a stall
                record = self.emulation.produce(now)
                if record is not None:
                    self.emit(record)
            if late > 1.0:
                due = loop.time()

    async def _keep_alive(self) -> None:
        """SSE comments every ``keepalive`` seconds, paused or not (pings flow, data may not)."""
        assert self.keepalive is not None
        comment = sse.encode_comment("keepalive")
        while True:
            await asyncio.sleep(self.keepalive)
            for peer in list(self.peers.values()):
                peer.send(comment)

    def emit(self, record: Any) -> None:
        """Send one record to every interested client (unless a skip swallows it)."""
        self.totals["produced"] += 1
        emulation = self.emulation
        key = emulation.key(record)
        for skip in self._skips:
            if skip[0] is None or skip[0] == key:
                skip[1] -= 1
                if skip[1] <= 0:
                    self._skips.remove(skip)
                self.totals["skipped"] += 1
                return
        data = emulation.frame(record)
        self.history.append((emulation.position(record), key, data, record))
        self._last[key] = self._last[None] = (record, data)
        for peer in list(self.peers.values()):
            if emulation.interested(peer, record):
                peer.send(data)

    # ---------------------------------------------------------------- faults

    def skip(self, n: int, key: Hashable = None) -> None:
        self._skips.append([key, n])

    def repeat(self, key: Hashable = None) -> bool:
        last = self._last.get(key)
        if last is None:
            return False
        record, data = last
        self.totals["repeated"] += 1
        for peer in list(self.peers.values()):
            if self.emulation.interested(peer, record):
                peer.send(data)
        return True

    def garbage(self, payload: str) -> None:
        self.totals["garbage"] += 1
        data: str | bytes = sse.encode(payload) if self.kind == "sse" else payload
        for peer in list(self.peers.values()):
            peer.send(data)

    def drop_all(self, count: bool = True) -> int:
        peers = list(self.peers.values())
        for peer in peers:
            peer.abort()
        if count:
            self.totals["dropped"] += len(peers)
        return len(peers)

    def stats(self) -> dict[str, Any]:
        return {**self.totals, "open": len(self.peers), "messages": len(self.messages),
                "sent": sum(p.sent for p in self.peers.values())}

    def note(self, message: Any) -> None:
        """Remember what a client sent (a subscription...) for :meth:`stats` and tests."""
        self.messages.append(message)
        del self.messages[:-1000]

    # ---------------------------------------------------------------- WebSocket

    def _plain_http(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if "upgrade" in request.headers.get("Connection", "").lower():
            if parts.path != self.path and self.path != "/":
                return connection.respond(404, f"no stream at {parts.path}\n")
            return None
        answer = self.emulation.http(parts.path, parse_qs(parts.query))
        if answer is None:
            return connection.respond(404, f"nothing at {parts.path}\n")
        status, body = answer
        response = connection.respond(status, body)
        response.headers["Content-Type"] = "application/json"
        return response

    async def _ws_handler(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        assert task is not None and ws.request is not None
        self._handlers.add(task)
        parts = urlsplit(ws.request.path)
        peer = Peer("ws", parts.path, parse_qs(parts.query), _lower(ws.request.headers), ws=ws)
        self.totals["connections"] += 1
        self.emulation.opened(self, peer)
        self.peers[peer.id] = peer
        try:
            async for message in ws:
                self.emulation.received(self, peer, message)
        except ConnectionClosed:
            pass
        finally:
            self.peers.pop(peer.id, None)
            self._handlers.discard(task)

    # ---------------------------------------------------------------- Server-Sent Events

    async def _sse_handler(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._sse_transports.add(writer.transport)
        conn = h11.Connection(h11.SERVER)
        peer: Peer | None = None
        try:
            request = await _read_request(conn, reader)
            if request is None:
                return
            parts = urlsplit(request.target.decode("latin-1"))
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in request.headers}
            if parts.path != self.path:
                answer = self.emulation.http(parts.path, parse_qs(parts.query))
                status, body = answer if answer is not None else (404, '{"error":"not found"}')
                writer.write(_plain(conn, status, body))
                await writer.drain()
                return
            writer.write(conn.send(h11.Response(status_code=200, headers=[
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])))
            peer = Peer("sse", parts.path, parse_qs(parts.query), headers, writer=writer,
                        conn=conn)
            self.totals["connections"] += 1
            self.emulation.opened(self, peer)
            self.peers[peer.id] = peer
            while await reader.read(65536):  # until the client goes away
                pass
        except (OSError, h11.ProtocolError):
            pass
        finally:
            if peer is not None:
                self.peers.pop(peer.id, None)
            writer.transport.abort()
            self._sse_transports.discard(writer.transport)
            self._handlers.discard(task)


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader
                        ) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None


def _plain(conn: h11.Connection, status: int, body: str) -> bytes:
    data = body.encode()
    return (conn.send(h11.Response(status_code=status, headers=[
        ("Content-Type", "application/json"), ("Content-Length", str(len(data))),
        ("Connection", "close")])) + conn.send(h11.Data(data=data))
        + conn.send(h11.EndOfMessage()))


def _lower(headers: Headers | Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
