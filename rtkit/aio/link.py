"""One WebSocket link of a client: opening, reading, liveness, closing.

A :class:`Link` lives for one connection attempt. Its ``lost`` future resolves with the
error that ended it (closed by the broker, silent for too long, aborted on purpose); the
client's supervisor then decides whether and when to try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from rtkit.core import client as cc
from rtkit.core import frames as fr
from rtkit.errors import ConnectionClosed as RtConnectionClosed
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


class Link:
    """A WebSocket to the broker, its reader task and its liveness watchdog."""

    def __init__(
        self,
        url: str,
        core: cc.ClientCore,
        on_event: Callable[[cc.Event], None],
        open_timeout: float,
        max_size: int,
        grace: float | None,
        fail_pending: Callable[[RtkitError], None],
        on_rtt: Callable[[float], None] | None = None,
    ) -> None:
        self.url = url
        self._core = core
        self._on_event = on_event
        self._open_timeout = open_timeout
        self._max_size = max_size
        self._grace = grace
        self._fail_pending = fail_pending
        self._on_rtt = on_rtt
        self.ws: ClientConnection | None = None
        self.lost: asyncio.Future[RtkitError] = asyncio.get_running_loop().create_future()
        self._close_error: RtkitError | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._pings: dict[fr.Ref, float] = {}

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.lost.done()

    async def open(self) -> None:
        try:
            self.ws = await ws_connect(
                self.url,
                open_timeout=self._open_timeout,
                max_size=self._max_size,
                ping_interval=None,  # liveness comes from the broker's heartbeats
                close_timeout=1.0,
                compression=None,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {exc}") from exc
        self._core.liveness.heard(time.time())
        self._reader = asyncio.get_running_loop().create_task(self._read(self.ws))

    def start_watchdog(self) -> None:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def close_error(self, exc: ConnectionClosed) -> RtkitError:
        if self._close_error is not None:
            return self._close_error
        rcvd = exc.rcvd
        return error_from_close(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")

    def abort(self, err: RtkitError) -> None:
        """End the link at once (no closing handshake), reporting ``err``."""
        self._close_error = self._close_error or err
        if self.ws is not None and self.ws.transport is not None:
            self.ws.transport.abort()

    async def close(self) -> None:
        tasks = [t for t in (self._watchdog, self._reader) if t is not None]
        ws = self.ws
        if ws is not None:
            if self.lost.done():
                if ws.transport is not None:
                    ws.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if not self.lost.done():
            self.lost.set_result(RtConnectionClosed("connection closed"))

    async def _read(self, ws: ClientConnection) -> None:
        core, on_event = self._core, self._on_event
        try:
            async for data in ws:
                for event in core.receive(data, time.time()):
                    if isinstance(event, cc.BrokerError) and event.fatal:
                        self._close_error = event.error
                    elif isinstance(event, cc.BrokerClosed):
                        self._close_error = event.error or RtConnectionClosed(
                            "closed by the broker")
                    elif isinstance(event, cc.Reply) and event.ref in self._pings:
                        rtt = time.perf_counter() - self._pings.pop(event.ref)
                        if self._on_rtt is not None:
                            self._on_rtt(rtt)
                    on_event(event)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("client reader failed")
        err = self._close_error or error_from_close(ws.close_code, ws.close_reason or "")
        self._fail_pending(err)
        if not self.lost.done():
            self.lost.set_result(err)

    async def _watch(self) -> None:
        """Drop the link after a heartbeat interval (plus grace) of silence; measure RTT."""
        session = self._core.session
        assert session is not None and self.ws is not None
        ws, liveness = self.ws, self._core.liveness
        interval = session.heartbeat_interval
        grace = self._grace if self._grace is not None else max(0.1, interval / 2)
        liveness.interval, liveness.grace = interval, grace
        period = min(interval / 4, 1.0)
        next_ping = time.time() + interval
        last_tick = time.time()
        while not self.lost.done():
            await asyncio.sleep(period)
            now = time.time()
            late = now - last_tick > period + grace
            last_tick = now
            if late:
                # Our own loop was blocked (a busy notebook cell): heartbeats may be waiting
                # unread in the socket. Let the reader catch up before judging the link.
                continue
            if liveness.is_dead(now):
                silent = now - liveness.last_heard
                self.abort(Disconnected(f"no heartbeat from the broker for {silent:.2f} s"))
                return
            if now >= next_ping:
                next_ping = now + interval
                ref, text = self._core.request(fr.Heartbeat)
                self._pings[ref] = time.perf_counter()
                if len(self._pings) > 16:  # replies lost: stop waiting for the oldest
                    oldest = next(iter(self._pings))
                    del self._pings[oldest]
                    self._core.forget(oldest)
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(text)
