"""``rtkit.chaos.proxy()``: the fault-injection proxy in its own thread, driven by plain calls
from a notebook cell, a widget or a test."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlparse

import pandas as pd

from rtkit import _rerun
from rtkit._thread import LoopThread
from rtkit.chaos.proxy import ProxyServer
from rtkit.data import utc_ns

T = TypeVar("T")


class FaultProxy:
    """A running proxy. Point clients at :attr:`url` instead of the broker's URL."""

    def __init__(self, server: ProxyServer, runner: LoopThread) -> None:
        self._server = server
        self._runner = runner

    @property
    def url(self) -> str:
        return f"ws://{self._server.host}:{self._server.port}"

    @property
    def port(self) -> int:
        return int(self._server.port)

    @property
    def running(self) -> bool:
        return self._runner.alive

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's loop and return its result."""
        return self._runner.call(fn)

    # ---------------------------------------------------------------- faults

    def drop_all(self) -> int:
        """Reset every connection through the proxy now; returns how many were dropped."""
        return self._call(self._server.drop_all)

    def blackhole(self, seconds: float) -> None:
        """For ``seconds``: forward nothing and close nothing (like a silent, dead route)."""
        self._call(lambda: self._server.plan.blackhole(seconds, time.monotonic()))

    def refuse(self, seconds: float) -> None:
        """For ``seconds``: reset new connections at once."""
        self._call(lambda: self._server.plan.refuse(seconds, time.monotonic()))

    def set_latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        """Delay every chunk by ``ms`` (+/- ``jitter_ms``), each way; order is kept."""
        if ms < 0 or jitter_ms < 0:
            raise ValueError("latency and jitter must be >= 0")

        def apply() -> None:
            self._server.plan.latency, self._server.plan.jitter = ms / 1000, jitter_ms / 1000
        self._call(apply)

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Limit each direction of each connection (None: unlimited)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bandwidth must be > 0 bytes/s (or None)")

        def apply() -> None:
            self._server.plan.bandwidth = bytes_per_second
        self._call(apply)

    def block_websockets(self, block: bool = True) -> None:
        """Answer WebSocket upgrade requests with 403 (as some corporate proxies do); plain
        HTTP (the SSE transport, REST) is still relayed."""
        def apply() -> None:
            self._server.plan.block_websocket = block
        self._call(apply)

    def strip_upgrade(self, strip: bool = True) -> None:
        """Forward WebSocket upgrade requests without their ``Upgrade`` header (as proxies
        that do not know WebSockets do): the broker answers 426, the client falls back."""
        def apply() -> None:
            self._server.plan.strip_upgrade = strip
        self._call(apply)

    def buffer_responses(self, size: int | None = 8192, honor_header: bool = True) -> None:
        """Hold each HTTP response of connections opened from now on until ``size`` bytes
        have gathered or it ends, again and again, as nginx's proxy buffering does; a
        response with ``X-Accel-Buffering: no`` passes at once when ``honor_header``. None
        stops buffering (for new connections)."""
        self._set_buffering(None if size is None else ("all", size), honor_header)

    def hold_response_start(self, size: int | None = 2048) -> None:
        """Hold the first ``size`` bytes of each HTTP response of connections opened from
        now on (some proxies and antivirus filters): an event stream gets through only if
        it starts with that much (rtkit's begins with a 2 KB padding comment)."""
        self._set_buffering(None if size is None else ("start", size), False)

    def _set_buffering(self, mode: tuple[str, int] | None, honor_header: bool) -> None:
        if mode is not None and mode[1] < 1:
            raise ValueError("size must be >= 1 byte")

        def apply() -> None:
            self._server.plan.buffering = mode
            self._server.plan.buffering_honors_header = honor_header
        self._call(apply)

    def kill_idle(self, seconds: float | None = 60.0) -> None:
        """Reset connections with no bytes either way for ``seconds`` (many proxies and
        load balancers cut idle HTTP connections after about a minute); None stops it."""
        if seconds is not None and seconds <= 0:
            raise ValueError("seconds must be > 0 (or None)")

        def apply() -> None:
            self._server.plan.idle_timeout = seconds
        self._call(apply)

    def heal(self) -> None:
        """Remove every fault (open connections are kept)."""
        self._call(self._server.plan.heal)

    # ---------------------------------------------------------------- observing

    def faults(self) -> dict[str, object]:
        """The faults in force now."""
        return self._call(lambda: self._server.plan.describe(time.monotonic()))

    def stats(self) -> dict[str, Any]:
        """Totals: connections, refused, dropped, blocked, stripped (upgrades forwarded
        without Upgrade), idle_killed, open, bytes each way."""
        def collect() -> dict[str, Any]:
            s = self._server
            return {**s.totals, "open": len(s.relays),
                    "bytes_up": sum(c.bytes_up for c in s.history),
                    "bytes_down": sum(c.bytes_down for c in s.history)}
        return self._call(collect)

    def connections(self) -> pd.DataFrame:
        """One row per connection (the latest 1,000): bytes, chunks, outcome, times."""
        rows = self._call(lambda: [asdict(c) for c in self._server.history])
        frame = pd.DataFrame(rows, columns=["id", "opened", "closed", "bytes_up", "bytes_down",
                                            "chunks", "outcome"])
        for col in ("opened", "closed"):
            frame[col] = utc_ns(frame[col].astype("float64"), "s")
        return frame.set_index("id")

    # ---------------------------------------------------------------- lifecycle

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and stop the proxy. Safe to call twice."""
        self._runner.stop(timeout)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        host, port = self._server.target
        return f"<rtkit.chaos.FaultProxy {self.url} -> {host}:{port}>"


def proxy(target: Any, host: str = "127.0.0.1", port: int = 0,
          seed: int | None = None) -> FaultProxy:
    """Start a fault-injection proxy in front of ``target`` (a :class:`rtkit.Server`, a
    ``ws://host:port`` URL or a ``(host, port)`` pair) and return once it listens.
    ``seed`` makes jitter reproducible."""
    if isinstance(target, tuple):
        target_host, target_port = target
    else:
        url = urlparse(getattr(target, "url", target))
        if url.hostname is None or url.port is None:
            raise ValueError(f"cannot proxy {target!r}: give a ws://host:port URL")
        target_host, target_port = url.hostname, url.port
    server = ProxyServer(target_host, int(target_port), seed)
    handle = FaultProxy(server, LoopThread("rtkit-fault-proxy",
                                           lambda: server.start(host, port), server.stop))
    _rerun.replace_previous("proxy", handle, FaultProxy.stop)
    return handle
