"""The broker's asyncio driver: WebSocket I/O and timers around :class:`BrokerCore`.

Received frames go to the core as they arrive, a bounded turn at a time: after
:data:`TURN_FRAMES` frames or :data:`TURN_SECONDS` of one connection the driver yields to the
event loop, so a client that pipelines thousands of frames cannot starve the others, while a
fast publisher's messages still reach subscribers in batches.
What the core wants sent is flushed once per event-loop iteration (``call_soon``), so every
message published in that iteration reaches a subscriber in one ``message`` frame, encoded
once for all subscribers of the channel. Each item of a flush is written on its own: one that
fails is logged and skipped, never taking the others with it.

Memory is bounded where it is queued: after each write, a connection whose outbound buffer
exceeds ``max_outbound_buffer`` is aborted at once (a slow consumer, 42903); replays and long
answers are written a budget at a time, each after the connection's buffer has drained.
New connections are admitted at the handshake (:class:`~rtkit.core.gate.ConnectionGate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl as ssl_module
import time
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from rtkit.core.broker import BrokerConfig, BrokerCore, Disconnect, Send, Session
from rtkit.core.tokens import ApiKey, KeyStore

log = logging.getLogger("rtkit.broker")

#: HTTP status of a connection refused at the handshake, by error code.
_HTTP_STATUS = {40301: http.HTTPStatus.FORBIDDEN, 42911: http.HTTPStatus.SERVICE_UNAVAILABLE,
                42912: http.HTTPStatus.TOO_MANY_REQUESTS}
#: Frames received but not yet handled, per connection (then the socket stops being read).
INBOUND_QUEUE = 8
#: A connection's turn: frames handled before letting the other connections run.
TURN_FRAMES, TURN_SECONDS = 64, 0.002
#: After a turn with a request refused for the rate, the connection's next turn waits this
#: long: a flood is read at most TURN_FRAMES per pause (then TCP slows the sender down).
FLOOD_PAUSE = 0.01
#: Bytes of replay or long answer written per round, before waiting for the buffer to drain.
STREAM_ROUND = 64 * 1024
_NO_HEADERS = Headers()


class Broker:
    """An rtkit broker running in the current event loop (see :func:`rtkit.serve` for a thread)."""

    def __init__(
        self, config: BrokerConfig | None = None, root_key: ApiKey | None = None
    ) -> None:
        self.config = config or BrokerConfig()
        self.root_key = root_key or ApiKey.generate("root")
        self.keys = KeyStore([self.root_key])
        self.core = BrokerCore(self.config, self.keys)
        self._server: WsServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self._tls = False
        self.outbound_peak = 0  # the largest outbound buffer seen after a write (bytes)
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
        hb = self.config.heartbeat_interval
        self._tls = ssl is not None
        self.core.wall_offset = time.time() - time.monotonic()
        self._server = await serve(
            self._handle,
            host,
            port,
            ssl=ssl,
            process_request=self._admit,
            max_size=self.config.max_frame_size,
            max_queue=INBOUND_QUEUE,
            # Transport-level pings find dead clients (half-open links) on the broker side.
            ping_interval=hb,
            ping_timeout=hb * 2,
            open_timeout=self.config.auth_timeout,
            close_timeout=2.0,
            compression=None,
        )
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = sock[0], sock[1]
        self._ticker = asyncio.create_task(self._tick_forever())
        log.info("rtkit broker listening on %s", self.url)

    async def stop(self) -> None:
        """Say goodbye to every client (``closed`` with 50001), then stop listening."""
        if self._server is None:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.core.shutdown()
        self._flush()
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        self._server = None

    # ---------------------------------------------------------------- admission

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a handshake over the connection limits, attempt rate or allowed origins."""
        address = _address(connection)
        err = self.core.gate.admit(address, time.monotonic(), request.headers.get("Origin"))
        if err is not None:
            log.info("refused a connection from %s: %s", address, err)
            return connection.respond(_HTTP_STATUS.get(err.code, http.HTTPStatus.FORBIDDEN),
                                      f"{err.code} {err.message}\n")
        gate = self.core.gate
        connection.connection_lost_waiter.add_done_callback(lambda _: gate.release(address))
        return None

    # ---------------------------------------------------------------- per connection

    async def _handle(self, ws: ServerConnection) -> None:
        # The handshake's headers are not needed any more: thousands of idle connections
        # should not keep them. (The request object stays: websockets refers to it.)
        if ws.request is not None:
            ws.request.headers = _NO_HEADERS
        ws.response = None
        core = self.core
        session = core.open_session(time.monotonic(), ws)
        session.flow_control = True
        frames, turn_ends, refused = 0, 0.0, session.rate_limited
        try:
            async for data in ws:
                now = time.monotonic()
                if not frames:
                    turn_ends = now + TURN_SECONDS
                core.receive(session, data, now)
                self._schedule_flush()
                frames += 1
                if session.streams:
                    await self._stream(session, ws)
                    frames = 0
                elif frames >= TURN_FRAMES or now > turn_ends:
                    # The end of this connection's turn; a flooder waits a little longer.
                    flooding = session.rate_limited != refused
                    await asyncio.sleep(FLOOD_PAUSE if flooding else 0)
                    frames, refused = 0, session.rate_limited
        except ConnectionClosed:
            pass
        except Exception:  # never let one connection take the broker down
            log.exception("error while serving %s", session.connection_id)
        finally:
            core.session_lost(session, time.monotonic())
            self._schedule_flush()

    async def _stream(self, session: Session, ws: ServerConnection) -> None:
        """Write the session's replays and long answers a round at a time, each once its
        outbound buffer has drained. Its next frames are read only afterwards."""
        while session.streams and not session.closed:
            await asyncio.sleep(0)  # let the scheduled flush write what is queued
            try:
                await ws.drain()
            except OSError:  # the connection was lost while draining: nothing more to send
                return
            if session.closed:
                break
            self.core.pump(session, STREAM_ROUND)
            self._schedule_flush()

    # ---------------------------------------------------------------- output

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        for item in self.core.take_output():
            # Plain code, nothing awaited: no cancellation can arrive here. Whatever one item
            # raises (it should not), the others are still sent.
            try:
                if isinstance(item, Send):
                    self._write(item)
                elif isinstance(item, Disconnect):
                    self._disconnect(item)
            except Exception:
                log.exception("could not send to %d connection(s); skipped",
                              len(getattr(item, "targets", ())))
        if self.core.outbox.items:  # a slow consumer was dropped while writing
            self._schedule_flush()

    def _write(self, item: Send) -> None:
        data = item.text.encode()
        limit = self.config.max_outbound_buffer
        for s in item.targets:
            ws: ServerConnection | None = s.transport
            if ws is None or ws.protocol.state is not State.OPEN or ws.transport.is_closing():
                continue
            ws.protocol.send_text(data)
            ws.send_data()
            buffered = ws.transport.get_write_buffer_size()
            if buffered > self.outbound_peak:
                self.outbound_peak = buffered
            if buffered > limit:
                log.warning("disconnecting slow consumer %s (%d bytes unsent)",
                            s.connection_id, buffered)
                ws.transport.abort()
                self.core.overflowed(s)

    def _disconnect(self, item: Disconnect) -> None:
        ws: ServerConnection | None = item.session.transport
        if ws is None:
            return
        if item.abort:
            ws.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(ws.close(item.close_code, item.reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # ---------------------------------------------------------------- timers

    async def _tick_forever(self) -> None:
        period = max(0.01, min(0.05, self.config.heartbeat_interval / 4))
        while True:
            await asyncio.sleep(period)
            self.core.wall_offset = time.time() - time.monotonic()
            try:
                self.core.tick(time.monotonic())
            except Exception:  # a bug in one timer must not stop the others for good
                log.exception("broker tick failed")
            self._flush()

    def revoke_key(self, key_id: str) -> int:
        """Refuse ``key_id`` and its tokens from now on and end their live sessions (40108)."""
        hit = self.core.revoke_key(key_id, time.monotonic())
        self._flush()
        return hit

    def expire_tokens(self, client_id: str | None = None) -> int:
        """End the authorization of ``client_id``'s connections now (see
        :meth:`BrokerCore.expire_tokens`)."""
        hit = self.core.expire_tokens(client_id, time.monotonic())
        self._flush()
        return hit

    def stats(self) -> dict[str, Any]:
        """Counters, and each bounded resource against its limit (``resources``)."""
        core = self.core
        buffers = [_buffered(s) for s in core.sessions.values()]
        resources = core.resources()
        resources["outbound_buffer_bytes"] = {"used": max(buffers, default=0),
                                              "limit": self.config.max_outbound_buffer}
        ledger = core.registry.ledger
        return {
            "connections": len(core.sessions),
            "channels": len(core.channels),
            **core.stats,
            "refused_connections": core.gate.refused,
            "evicted": ledger.evicted,
            "evicted_early": ledger.evicted_early,
            "outbound_peak": self.outbound_peak,
            "resources": resources,
        }


def _address(ws: ServerConnection) -> str | None:
    peer = ws.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _buffered(s: Session) -> int:
    ws: ServerConnection | None = s.transport
    if ws is None or ws.transport is None:
        return 0
    return int(ws.transport.get_write_buffer_size())
