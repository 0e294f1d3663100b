"""An asyncio service in a background thread with its own event loop.

The embedded broker and the fault proxy both live this way: a notebook cell that blocks the
kernel's loop cannot stall them, and plain calls from any thread reach them safely.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs ``start()`` in a new thread's loop, then waits until :meth:`stop` to run
    ``stop()`` there. :meth:`call` runs a plain function on that loop and returns its result."""

    def __init__(self, name: str, start: Callable[[], Awaitable[Any]],
                 stop: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> None:
        self.loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[asyncio.Event] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            stopped = asyncio.Event()
            try:
                self.loop.run_until_complete(start())
            except BaseException as exc:  # e.g. the port is taken: tell the caller
                started.set_exception(exc)
                self.loop.close()
                return
            started.set_result(stopped)
            try:
                self.loop.run_until_complete(stopped.wait())
                self.loop.run_until_complete(stop())
            finally:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()
        self._stopped = started.result(timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn()`` on the service's loop (thread-safe) and return what it returns."""
        if not self.thread.is_alive():
            raise RuntimeError(f"{self.thread.name} is stopped")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Run the service's ``stop()`` and end the thread. Safe to call twice."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
            self.thread.join(timeout)
