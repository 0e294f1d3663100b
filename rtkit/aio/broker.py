"""The broker's asyncio driver: one listening socket, connections (``rtkit.aio.conn``) and
timers around :class:`~rtkit.core.broker.BrokerCore`.

WebSockets and plain HTTP share the port: each connection starts as an HTTP/1.1 request
(h11); an upgrade becomes a WebSocket with rtkit's own framing (``rtkit.core.wsframes``),
anything else goes to :class:`~rtkit.aio.httpapi.HttpApi`: the SSE transport (its sessions
are session transports like a WebSocket connection, see ``rtkit.aio.ssesession``) and the
REST interface.

Output: what the core wants sent is flushed once per event-loop iteration (``call_soon``).
Every message published in that iteration reaches a subscriber in one ``message`` frame,
encoded and framed once for all subscribers of the channel (once as a WebSocket frame, once
as an SSE event with one id for all SSE targets), and everything one connection gets in a
flush leaves in one ``write``. Each item of a flush is handled on its own: one that
fails is logged and skipped, never taking the others with it.

Memory is bounded where it is queued: after each flush, a connection whose outbound buffer
exceeds ``max_outbound_buffer`` is aborted at once (a slow consumer, 42903); replays and long
answers are written :data:`STREAM_ROUND` bytes at a time, each once the connection's buffer
has drained below asyncio's low-water mark. New connections are admitted at the upgrade
(:class:`~rtkit.core.gate.ConnectionGate`); a dead peer is found by WebSocket pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import ssl as ssl_module
import time
from typing import TYPE_CHECKING, Any

import h11

from rtkit.aio.conn import EVENTS, HTTP, REPLY, SSE, WEBSOCKET, Connection
from rtkit.aio.httpapi import HttpApi
from rtkit.aio.ssesession import event_bytes
from rtkit.core.backplane import NodeView
from rtkit.core.broker import BrokerConfig, BrokerCore, Disconnect, Send, Session
from rtkit.core.tokens import ApiKey, KeyStore
from rtkit.core.wsframes import OP_PING, frame
from rtkit.errors import RtkitError

if TYPE_CHECKING:
    from rtkit.aio.backplane import RedisBackplane

log = logging.getLogger("rtkit.broker")

#: HTTP status of a connection refused at the upgrade, by error code.
_HTTP_STATUS = {40301: 403, 42911: 503, 42912: 429}
#: Bytes of replay or long answer written per round, before waiting for the buffer to drain.
STREAM_ROUND = 64 * 1024
_PING = frame(OP_PING, b"rtkit")


class Broker:
    """An rtkit broker running in the current event loop (see :func:`rtkit.serve` for a thread)."""

    def __init__(
        self, config: BrokerConfig | None = None, root_key: ApiKey | None = None,
        backplane: str | None = None,
    ) -> None:
        """``backplane``: a Redis URL (``redis://host:port/db``) shared with the other
        nodes of a cluster; None (the default) keeps every channel in this process."""
        self.config = config or BrokerConfig()
        self.root_key = root_key or ApiKey.generate("root")
        self.keys = KeyStore([self.root_key])
        self.node: NodeView | None = None
        self.backplane: RedisBackplane | None = None
        if backplane is not None:
            self.node = NodeView(secrets.token_hex(4), self.config.node_timeout)
        # Connection keys signed alike on every node that shares the root key.
        secret = None if backplane is None else hashlib.sha256(
            b"rtkit connection keys\0" + self.root_key.value.encode()).digest()
        self.core = BrokerCore(self.config, self.keys, node=self.node, cluster_secret=secret)
        if backplane is not None:
            from rtkit.aio.backplane import RedisBackplane  # (redis is imported only here)

            self.backplane = RedisBackplane(backplane, self)
        self.connections: set[Connection] = set()
        #: Connections whose session has replays or long answers left to write.
        self.streaming: set[Any] = set()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._all_gone: asyncio.Event | None = None  # while stopping
        self._tls = False
        self.outbound_peak = 0  # the largest outbound buffer seen after a write (bytes)
        self.http = HttpApi(self)
        self._event_id = 0  # SSE event ids: one sequence for the whole broker
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        """``ws://host:port``, or ``wss://`` when serving TLS."""
        return f"{'wss' if self._tls else 'ws'}://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    ssl: ssl_module.SSLContext | None = None) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`url`), over TLS when
        given an ``ssl`` server context (the URL is then ``wss://``)."""
        self._tls = ssl is not None
        self.core.wall_offset = time.time() - time.monotonic()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, ssl=ssl,
            ssl_handshake_timeout=self.config.auth_timeout if ssl is not None else None,
        )
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = sock[0], sock[1]
        if self.backplane is not None:
            try:
                await self.backplane.start()
            except ConnectionError:
                self._server.close()
                self._server = None
                raise
        self._ticker = asyncio.create_task(self._tick_forever())
        log.info("rtkit broker listening on %s", self.url)

    async def stop(self) -> None:
        """Say goodbye to every client (``closed`` with 50001), then stop listening."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.core.shutdown()
        self._flush()
        self.http.stop()
        # Closing handshakes get a moment; then whatever is left is dropped.
        for conn in list(self.connections):
            if conn.mode == HTTP:
                conn.abort()
        self._all_gone = asyncio.Event()
        if not self.connections:
            self._all_gone.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_gone.wait(), 1.0)
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)  # let connection_lost run
        if self.backplane is not None:
            self._flush()  # (the members that left)
            await self.backplane.stop()
        await server.wait_closed()

    async def crash(self) -> None:
        """Stop at once, without a goodbye, as if the process had died: connections are
        aborted (clients see a broken link), nothing is flushed, and a backplane is left
        without being told (the other nodes find out after ``node_timeout``)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if self.backplane is not None:
            await self.backplane.crash()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.core.outbox.take()
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)
        self.core.outbox.take()

    # ---------------------------------------------------------------- connections

    def admit(self, conn: Connection, origin: str | None) -> RtkitError | None:
        """Refuse an upgrade over the connection limits, attempt rate or allowed origins
        (answered here with an HTTP error whose body starts with the rtkit code)."""
        err = self.core.gate.admit(conn.address, time.monotonic(), origin)
        if err is not None:
            log.info("refused a connection from %s: %s", conn.address, err)
            conn.respond(_HTTP_STATUS.get(err.code, 403), f"{err.code} {err.message}\n".encode(),
                         close=True)
            return err
        conn.admitted = True
        return None

    def open_session(self, conn: Any) -> Session:
        session = self.core.open_session(time.monotonic(), conn)
        session.flow_control = True
        return session

    def connection_lost(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if conn.owner is not None:
            conn.owner.stream_lost(conn)
        if not self.connections and self._all_gone is not None:
            self._all_gone.set()
        self.streaming.discard(conn)
        if conn.admitted:
            conn.admitted = False
            self.core.gate.release(conn.address)
        if conn.session is not None:
            self.core.session_lost(conn.session, time.monotonic())
            self.schedule_flush()

    def http_request(self, conn: Connection, request: h11.Request, body: bytes) -> None:
        """A plain HTTP request (not an upgrade): the SSE transport, REST, /health."""
        self.http.handle(conn, request, body)

    def session_ended(self, session: Session) -> None:
        """A session transport other than a WebSocket connection has ended."""
        self.streaming.discard(session.transport)
        self.core.session_lost(session, time.monotonic())
        self.schedule_flush()

    # ---------------------------------------------------------------- output

    def schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        touched: list[Any] = []
        if self.node is not None and self.backplane is not None:
            self.backplane.perform(self.node.take())
        for item in self.core.take_output():
            # Plain code, nothing awaited: no cancellation can arrive here. Whatever one item
            # raises (it should not), the others are still sent.
            try:
                if type(item) is Send:
                    data = _text_frame(item.text.encode())
                    # The SSE event and a channel stream's events: built once if needed.
                    sse: bytes | None = None
                    events: bytes | None = None
                    seq = 0
                    for s in item.targets:
                        conn: Any = s.transport
                        if conn is None:
                            continue
                        mode = conn.mode
                        if mode == WEBSOCKET:
                            if not conn.out:
                                touched.append(conn)
                            conn.out.append(data)
                        elif mode == SSE:
                            if sse is None:
                                self._event_id = seq = self._event_id + 1
                                sse = event_bytes(seq, item.text)
                            if not conn.out:
                                touched.append(conn)
                            conn.queue(seq, sse)
                        elif mode == EVENTS:
                            if events is None:
                                events = conn.encode(item.text)
                            if not conn.out:
                                touched.append(conn)
                            conn.queue(events)
                        elif mode == REPLY:
                            conn.answer(item.text)
                elif isinstance(item, Disconnect):
                    self._disconnect(item)
            except Exception:
                log.exception("could not send to %d connection(s); skipped",
                              len(getattr(item, "targets", ())))
        limit = self.config.max_outbound_buffer
        for conn in touched:
            conn.flush_out()
            buffered = conn.buffered()
            if buffered > self.outbound_peak:
                self.outbound_peak = buffered
            if (buffered > limit or conn.overflowed) and conn.session is not None:
                log.warning("disconnecting slow consumer %s (%d bytes unsent)",
                            conn.session.connection_id, buffered)
                session = conn.session
                self.core.overflowed(session)  # (before: an SSE session ends at once)
                conn.abort()
        if self.streaming:
            self._pump_streams()
        if self.core.outbox.items or self.core.ops.dirty or (
                self.node is not None and self.node.effects):
            self.schedule_flush()

    def _pump_streams(self) -> None:
        for conn in list(self.streaming):
            s = conn.session
            if s is None or s.closed or not s.streams:
                self.streaming.discard(conn)
                conn.streams_done()
            elif conn.writable:
                self.core.pump(s, STREAM_ROUND)

    def pump(self, conn: Any) -> None:
        """``conn`` drained: write its next round of replays (at the next flush)."""
        self.streaming.add(conn)
        self.schedule_flush()

    def _disconnect(self, item: Disconnect) -> None:
        conn: Any = item.session.transport
        if conn is None:
            return
        if item.abort:
            conn.abort()
        else:
            conn.close(item.close_code, item.reason)

    # ---------------------------------------------------------------- timers

    async def _tick_forever(self) -> None:
        hb = self.config.heartbeat_interval
        period = max(0.01, min(0.05, hb / 4))
        next_sweep = time.monotonic() + hb / 2
        keepalive = self.http.keepalive_interval() / 2
        next_keepalive = time.monotonic() + keepalive
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self.core.wall_offset = time.time() - now
            try:
                self.core.tick(now)
                if now >= next_sweep:
                    next_sweep = now + hb / 2
                    self._sweep(now, hb)
                    self.http.sweep(now, hb)
                if now >= next_keepalive:
                    next_keepalive = now + keepalive
                    self.http.keep_alive(now)
            except Exception:  # a bug in one timer must not stop the others for good
                log.exception("broker tick failed")
            self._flush()

    def _sweep(self, now: float, hb: float) -> None:
        """Ping WebSockets silent for a heartbeat interval; drop those silent for three (a
        half-open link: the peer vanished without closing)."""
        for conn in list(self.connections):
            if conn.mode != WEBSOCKET:
                continue
            idle = now - conn.last_rx
            if idle > 3 * hb:
                log.info("no answer from %s for %.1f s: dropping it", conn.address, idle)
                conn.abort()
            elif idle > hb and not conn.pinged:
                conn.pinged = True
                conn.flush_out()
                conn.send_control(_PING)

    def add_key(self, key: ApiKey) -> None:
        """Accept ``key`` (and the tokens it signs); in a cluster, on every node."""
        self.keys.add(key)
        if self.backplane is not None:
            self.backplane.share_key(key)

    def revoke_key(self, key_id: str) -> int:
        """Refuse ``key_id`` and its tokens from now on and end their live sessions (40108);
        in a cluster, on every node. Returns how many sessions ended here."""
        hit = self.apply_revocation(key_id)
        if self.backplane is not None:
            self.backplane.share_revocation(key_id)
        return hit

    def apply_revocation(self, key_id: str) -> int:
        """Revoke ``key_id`` here (a revocation made on this node or heard from another)."""
        hit = self.core.revoke_key(key_id, time.monotonic())
        self._flush()
        return hit

    def expire_tokens(self, client_id: str | None = None) -> int:
        """End the authorization of ``client_id``'s connections now (see
        :meth:`BrokerCore.expire_tokens`)."""
        hit = self.core.expire_tokens(client_id, time.monotonic())
        self._flush()
        return hit

    def counts(self) -> dict[str, int]:
        return {"connections": len(self.core.sessions), "channels": len(self.core.channels)}

    def stats(self) -> dict[str, Any]:
        """Counters, and each bounded resource against its limit (``resources``)."""
        core = self.core
        resources = core.resources()
        resources["outbound_buffer_bytes"] = {
            "used": max((c.buffered() for c in self.connections), default=0),
            "limit": self.config.max_outbound_buffer}
        ledger = core.registry.ledger
        out = {
            **self.counts(),
            "sse_sessions": len(self.http.sse),
            "event_streams": len(self.http.events),
            **core.stats,
            "refused_connections": core.gate.refused,
            "evicted": ledger.evicted,
            "evicted_early": ledger.evicted_early,
            "outbound_peak": self.outbound_peak,
            "pending_requests": sum(1 for c in self.connections if c.mode == HTTP),
            "resources": resources,
        }
        if self.backplane is not None:
            out["cluster"] = cluster = self.backplane.describe()
            out["nodes"] = cluster["nodes"]  # (the cluster's nodes, at the top too)
        return out


def _text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload
