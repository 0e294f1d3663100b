"""The broker's plain-HTTP side (everything that is not a WebSocket upgrade): the SSE
transport (``GET /v1/connect``, ``POST /v1/send``), the REST interface (``/channels/...``,
``/health``) and the 426 that tells a WebSocket client whose ``Upgrade`` header was stripped
on the way what happened.

A thin driver: requests are routed and answered by :mod:`rtkit.core.rest`; the SSE
transport's sessions and the channel event streams are :mod:`rtkit.aio.ssesession` objects.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING

import h11

from rtkit.aio.conn import REPLY, Connection
from rtkit.aio.conn_http import _headers
from rtkit.aio.ssesession import (
    KEEPALIVE,
    KEEPALIVE_COMMENT,
    PADDING,
    STREAM_HEADERS,
    ChannelEvents,
    SseSession,
)
from rtkit.core.rest import (
    Later,
    MethodNotAllowed,
    Reply,
    RestApi,
    RestCaller,
    error_reply,
    http_status,
    json_reply,
    publish_reply,
    route,
    split_target,
)
from rtkit.errors import ProtocolError, RtkitError, error

if TYPE_CHECKING:
    from rtkit.aio.broker import Broker

log = logging.getLogger("rtkit.broker")
UPGRADE_REQUIRED = (b"this is an rtkit broker: connect with a WebSocket (Upgrade: websocket), "
                    b"or use the SSE transport or the REST interface (docs/protocol.md)\n")


class HttpApi:
    """Routes the broker's plain HTTP requests and keeps its SSE sessions and event streams."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.rest = RestApi(broker.core)
        self.stream_ids = itertools.count(1)
        self.sse: dict[str, SseSession] = {}
        self.events: set[ChannelEvents] = set()
        self._admitted: set[object] = set()

    # ---------------------------------------------------------------- requests

    def handle(self, conn: Connection, request: h11.Request, body: bytes) -> None:
        method = request.method.decode("ascii", "replace")
        headers = _headers(request)
        try:
            segments, params = split_target(request.target.decode("latin-1"))
            if "sec-websocket-key" in headers or (segments in ([], [""]) and method == "GET"):
                # A WebSocket request whose Upgrade header was lost on the way (or a browser
                # at the root): 426, which rtkit's client reads as a refused upgrade.
                conn.respond(426, UPGRADE_REQUIRED, [("Upgrade", "websocket")])
                return
            r = route(method, segments)
            now = time.monotonic()
            if r.kind == "health":
                self._reply(conn, json_reply({"status": "ok", **self.broker.counts()}))
            elif r.kind == "connect":
                self._connect(conn, headers)
            elif r.kind == "send":
                self._send(conn, headers, body)
            else:
                self._rest(conn, r.kind, r.channel or "", params, headers, body, now)
        except MethodNotAllowed as exc:
            reply = error_reply(exc, 405)
            self._reply(conn, Reply(405, reply.body, (("Allow", ", ".join(exc.allowed)),)))
        except RtkitError as exc:
            self._reply(conn, error_reply(exc))

    def answered(self, conn: Connection, text: str) -> None:
        """The broker's ``ack``/``nack`` of a REST publish, handed to the backplane by a
        node of a cluster (see :class:`PendingReply`)."""
        self._reply(conn, publish_reply(json.loads(text)))

    def _reply(self, conn: Connection, reply: Reply) -> None:
        conn.respond(reply.status, reply.body, list(reply.headers), reply.content_type)

    def _rest(self, conn: Connection, kind: str, channel: str, params: dict[str, str],
              headers: dict[str, str], body: bytes, now: float) -> None:
        rest = self.rest
        caller = rest.caller(headers, now)
        reply: Reply | None
        if kind == "publish":
            if self.broker.backplane is not None:  # a node of a cluster answers later
                caller.transport = PendingReply(self, conn)
            reply = rest.publish(caller, channel, body, now)
            self.broker.schedule_flush()
        elif kind == "history":
            reply = rest.history(caller, channel, params, now, self._later(conn))
        elif kind == "presence":
            reply = rest.presence(caller, channel, self._later(conn))
        else:
            self._events(conn, caller, channel, headers, now)
            return
        if reply is not None:
            self._reply(conn, reply)
        else:
            self.broker.schedule_flush()  # (what the backplane must do for it)

    def _later(self, conn: Connection) -> Later:
        """Reply to ``conn``'s request when its answer is ready (on a node of a cluster,
        after the backplane's), from the event loop rather than from inside the core."""
        loop = asyncio.get_running_loop()

        def later(reply: Reply) -> None:
            loop.call_soon(self._reply, conn, reply)

        return later

    # ---------------------------------------------------------------- the SSE transport

    def _stream_key(self, headers: dict[str, str]) -> SseSession | None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        stream_id, _, secret = key.strip().partition(".")
        sse = self.sse.get(stream_id)
        return sse if sse is not None and secret and sse.matches(secret) else None

    def _connect(self, conn: Connection, headers: dict[str, str]) -> None:
        """A new session's event stream, or (with its stream key) the re-opened stream of a
        live one, continuing after ``Last-Event-ID``."""
        if "authorization" in headers:
            sse = self._stream_key(headers)
            last = _event_id(headers.get("last-event-id"))
            if sse is None or not sse.attach(conn, last):
                conn.respond(404, b"40400 unknown or expired stream: connect afresh and "
                                  b"resume the connection\n", close=True)
            return
        if self.broker.admit(conn, headers.get("origin")) is not None:
            return  # refused (answered)
        conn.admitted = False  # the session holds the admission, beyond this connection
        sse = SseSession(self.broker, conn.address)
        self.sse[sse.id] = sse
        self._admitted.add(sse)
        sse.attach(conn, None)

    def _send(self, conn: Connection, headers: dict[str, str], body: bytes) -> None:
        sse = self._stream_key(headers)
        if sse is None:
            if "authorization" not in headers:
                raise error(40106, "send the stream key: Authorization: Bearer <stream key>")
            raise error(40400, "unknown or expired stream")
        seq = _event_id(headers.get("rtkit-seq"), "Rtkit-Seq")
        ack = _event_id(headers.get("last-event-id"))
        sse.post(conn, seq, ack, body)

    def sse_ended(self, sse: SseSession) -> None:
        self.sse.pop(sse.id, None)
        self._release(sse, sse.address)

    # ---------------------------------------------------------------- channel streams

    def _events(self, conn: Connection, caller: RestCaller, channel: str,
                headers: dict[str, str], now: float) -> None:
        broker = self.broker
        err = broker.core.gate.admit(conn.address, now, headers.get("origin"))
        if err is not None:
            self._reply(conn, error_reply(err, http_status(err.code)))
            return
        ev = ChannelEvents(broker, conn)
        self._admitted.add(ev)
        self.events.add(ev)
        try:
            ev.session = self.rest.open_events(caller, channel,
                                               headers.get("last-event-id"), ev, now)
        except RtkitError:
            ev.stream = None
            ev.end()
            raise
        conn.start_stream(ev, STREAM_HEADERS)
        conn.write(PADDING)
        if ev.session.streams:
            broker.streaming.add(ev)
        broker.schedule_flush()

    def events_ended(self, ev: ChannelEvents) -> None:
        self.events.discard(ev)
        self._release(ev, ev.address)

    def _release(self, owner: object, address: str | None) -> None:
        if owner in self._admitted:
            self._admitted.discard(owner)
            self.broker.core.gate.release(address)

    # ---------------------------------------------------------------- time

    def sweep(self, now: float, hb: float) -> None:
        """End SSE sessions whose stream stayed away or whose client went silent."""
        for sse in list(self.sse.values()):
            sse.check(now, hb)

    def keepalive_interval(self) -> float:
        return min(KEEPALIVE, self.broker.config.heartbeat_interval)

    def keep_alive(self, now: float) -> None:
        """A comment on every stream quiet for half the keep-alive interval (so none is
        quiet for a whole one)."""
        quiet = self.keepalive_interval() / 2
        owners: list[SseSession | ChannelEvents] = [*self.sse.values(), *self.events]
        for owner in owners:
            stream = owner.stream
            if stream is not None and now - stream.last_write >= quiet:
                stream.write(KEEPALIVE_COMMENT)

    def stop(self) -> None:
        owners: list[SseSession | ChannelEvents] = [*self.sse.values(), *self.events]
        for owner in owners:
            owner.abort()


def _event_id(value: str | None, name: str = "Last-Event-ID") -> int | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 18:
        raise ProtocolError(f"{name} must be an integer", code=40003)
    return int(value)



class PendingReply:
    """The transport of a REST publish's caller: on a node of a cluster the publish is
    answered by the backplane, later; the broker's flush hands the ``ack`` or ``nack`` sent
    to it here, and it becomes the HTTP response."""

    mode = REPLY
    __slots__ = ("api", "conn")

    def __init__(self, api: HttpApi, conn: Connection) -> None:
        self.api = api
        self.conn = conn

    def answer(self, text: str) -> None:
        asyncio.get_running_loop().call_soon(self.api.answered, self.conn, text)
