"""The fault-injection proxy's asyncio driver: a TCP relay between clients and a broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from dataclasses import dataclass, field

from rtkit.core.faults import FaultPlan, Pipe, ResponseBuffer, is_websocket_upgrade, strip_upgrade

log = logging.getLogger("rtkit.chaos")
FORBIDDEN = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 29\r\n"
             b"Connection: close\r\n\r\nWebSocket blocked by rtkit.\r\n")
_ids = itertools.count(1)


@dataclass
class ConnStats:
    """Counters of one proxied connection."""

    id: int
    opened: float
    closed: float | None = None
    bytes_up: int = 0  # client -> broker
    bytes_down: int = 0  # broker -> client
    chunks: int = 0
    #: open, closed, dropped, refused, blocked, idle-killed, upstream-failed
    outcome: str = "open"


@dataclass
class Relay:
    stats: ConnStats
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Holds back responses (a buffering proxy), when the plan said so at accept time.
    buffer: ResponseBuffer | None = None
    last_active: float = 0.0  # monotonic time of the last byte either way


class ProxyServer:
    """Relays TCP between ``listen`` and ``target``, applying :class:`FaultPlan`."""

    def __init__(self, target_host: str, target_port: int, seed: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.plan = FaultPlan()
        self.rng = random.Random(seed)
        self.relays: dict[int, Relay] = {}
        self.history: list[ConnStats] = []
        self.totals = {"connections": 0, "refused": 0, "dropped": 0, "blocked": 0,
                       "stripped": 0, "idle_killed": 0}
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.host, self.port = "", 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, host, port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._watch = asyncio.get_running_loop().create_task(self._watch_idle())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self.drop_all(outcome="closed")
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def drop_all(self, outcome: str = "dropped") -> int:
        """Reset every proxied connection now; returns how many."""
        relays = list(self.relays.values())
        for relay in relays:
            self._end(relay, outcome)
        if outcome == "dropped":
            self.totals["dropped"] += len(relays)
        return len(relays)

    def _end(self, relay: Relay, outcome: str) -> None:
        if relay.stats.closed is None:
            relay.stats.closed = time.time()
            relay.stats.outcome = outcome
        for writer in relay.writers:
            writer.transport.abort()
        for task in relay.tasks:
            task.cancel()
        self.relays.pop(relay.stats.id, None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        stats = ConnStats(next(_ids), time.time())
        self.history.append(stats)
        del self.history[:-1000]
        self.totals["connections"] += 1
        if self.plan.refusing(time.monotonic()):
            stats.outcome, stats.closed = "refused", time.time()
            self.totals["refused"] += 1
            writer.transport.abort()
            return
        relay = Relay(stats, [writer], last_active=time.monotonic())
        if self.plan.buffering is not None:
            mode, size = self.plan.buffering
            relay.buffer = ResponseBuffer(mode, size, self.plan.buffering_honors_header)
        self.relays[stats.id] = relay
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._end(relay, "upstream-failed")
            return
        relay.writers.append(up_writer)
        loop = asyncio.get_running_loop()
        relay.tasks = [
            loop.create_task(self._pump(relay, reader, up_writer, upstream=True)),
            loop.create_task(self._pump(relay, up_reader, writer, upstream=False)),
        ]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*relay.tasks, return_exceptions=True)
        if relay.stats.closed is None:
            self._end(relay, "closed")

    async def _pump(self, relay: Relay, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, upstream: bool) -> None:
        """Read chunks and release each at its scheduled time (order kept)."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=64)
        sender = asyncio.get_running_loop().create_task(self._send(queue, writer, relay))
        pipe, plan, first = Pipe(), self.plan, upstream
        try:
            while True:
                await self._wait_blackhole()
                data = await reader.read(65536)
                if not data:
                    if not upstream and relay.buffer is not None:
                        tail = relay.buffer.end()
                        if tail:
                            await queue.put((time.monotonic(), tail))
                    break
                relay.last_active = time.monotonic()
                if first:
                    first = False
                    if plan.block_websocket and is_websocket_upgrade(data):
                        self.totals["blocked"] += 1
                        relay.writers[0].write(FORBIDDEN)
                        with contextlib.suppress(Exception):
                            await relay.writers[0].drain()
                        self._end(relay, "blocked")
                        return
                    if plan.strip_upgrade and is_websocket_upgrade(data):
                        self.totals["stripped"] += 1
                        data = strip_upgrade(data)
                if upstream:
                    relay.stats.bytes_up += len(data)
                else:
                    relay.stats.bytes_down += len(data)
                    if relay.buffer is not None:
                        data = relay.buffer.feed(data)
                        if not data:
                            continue
                relay.stats.chunks += 1
                await queue.put((pipe.schedule(len(data), time.monotonic(), plan, self.rng), data))
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                queue.put_nowait(None)  # let the sender finish what it holds
            except asyncio.QueueFull:
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        self._end(relay, "closed")

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes] | None],
                    writer: asyncio.StreamWriter, relay: Relay) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            release, data = item
            delay = release - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._wait_blackhole()
            writer.write(data)
            relay.last_active = time.monotonic()
            await writer.drain()

    async def _watch_idle(self) -> None:
        """Reset connections idle for longer than the plan's ``idle_timeout``."""
        while True:
            timeout = self.plan.idle_timeout
            await asyncio.sleep(0.25 if timeout is None else min(0.25, timeout / 5))
            if timeout is None:
                continue
            now = time.monotonic()
            for relay in list(self.relays.values()):
                if now - relay.last_active > timeout:
                    self.totals["idle_killed"] += 1
                    self._end(relay, "idle-killed")

    async def _wait_blackhole(self) -> None:
        while True:
            remaining = self.plan.blackhole_until - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)
