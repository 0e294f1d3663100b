"""The broker's asyncio driver: WebSocket I/O and timers around :class:`BrokerCore`.

Received frames go to the core as they arrive; what the core wants sent is flushed once per
event-loop iteration (``call_soon``), so every message published in that iteration reaches a
subscriber in one ``message`` frame, encoded once for all subscribers of the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from rtkit.core.broker import BrokerConfig, BrokerCore, Disconnect, Send, Session
from rtkit.core.tokens import ApiKey, KeyStore

log = logging.getLogger("rtkit.broker")


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
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`url`)."""
        hb = self.config.heartbeat_interval
        self._server = await serve(
            self._handle,
            host,
            port,
            max_size=self.config.max_frame_size,
            # Transport-level pings find dead clients (half-open links) on the broker side.
            ping_interval=hb,
            ping_timeout=hb * 2,
            close_timeout=2.0,
            compression=None,
            max_queue=64,
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

    # ---------------------------------------------------------------- per connection

    async def _handle(self, ws: ServerConnection) -> None:
        core = self.core
        session = core.open_session(time.time(), ws)
        try:
            async for data in ws:
                core.receive(session, data, time.time())
                self._schedule_flush()
        except ConnectionClosed:
            pass
        except Exception:  # never let one connection take the broker down
            log.exception("error while serving %s", session.connection_id)
        finally:
            core.session_lost(session, time.time())
            self._schedule_flush()

    # ---------------------------------------------------------------- output

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        for item in self.core.take_output():
            if isinstance(item, Send):
                if len(item.targets) == 1:
                    broadcast((item.targets[0].transport,), item.text)
                else:
                    broadcast([s.transport for s in item.targets], item.text)
            elif isinstance(item, Disconnect):
                self._disconnect(item)

    def _disconnect(self, item: Disconnect) -> None:
        ws: ServerConnection | None = item.session.transport
        if ws is None:
            return
        task = asyncio.get_running_loop().create_task(ws.close(item.close_code, item.reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # ---------------------------------------------------------------- timers

    async def _tick_forever(self) -> None:
        period = max(0.01, min(0.05, self.config.heartbeat_interval / 4))
        limit = self.config.max_outbound_buffer
        while True:
            await asyncio.sleep(period)
            try:
                self.core.tick(time.time())
                for s in list(self.core.sessions.values()):
                    if _buffered(s) > limit:
                        log.warning("disconnecting slow consumer %s", s.connection_id)
                        self.core.overflowed(s)
                self._flush()
            except Exception:
                log.exception("broker tick failed")

    def stats(self) -> dict[str, Any]:
        """Counters: connections, channels, frames received, messages published."""
        return {
            "connections": len(self.core.sessions),
            "channels": len(self.core.channels),
            **self.core.stats,
        }


def _buffered(s: Session) -> int:
    ws: ServerConnection | None = s.transport
    if ws is None or ws.transport is None:
        return 0
    return int(ws.transport.get_write_buffer_size())
