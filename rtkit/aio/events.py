"""Observing a client: state changes (callbacks, ``async for``, waiting) and errors."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from rtkit.core.client import ClientCore
from rtkit.core.states import ConnectionState, StateChange
from rtkit.errors import RtkitError

log = logging.getLogger("rtkit.client")
StateListener = Callable[[StateChange], Any]
ErrorListener = Callable[[RtkitError], Any]


class Observable:
    """State-change and error notification for :class:`rtkit.Client`."""

    _core: ClientCore
    last_error: RtkitError | None

    def __init__(self) -> None:
        self._listeners: list[StateListener] = []
        self._error_listeners: list[ErrorListener] = []
        self._watchers: set[asyncio.Queue[StateChange]] = set()

    @property
    def state(self) -> ConnectionState:
        return self._core.state

    @property
    def state_history(self) -> list[StateChange]:
        """Every state change so far (bounded), oldest first.

        ``at`` is wall-clock time (``time.time()``), for display and DataFrames; the core
        records changes on the monotonic clock, and the gaps between them are kept exact."""
        return [self._wall(c) for c in self._core.machine.history]

    def _wall(self, change: StateChange) -> StateChange:
        """``change`` with ``at`` moved from the core's monotonic clock to wall-clock time."""
        return dataclasses.replace(change, at=change.at + self._core.credentials.wall_offset)

    def on_state_change(self, callback: StateListener) -> Callable[[], None]:
        """Call ``callback(change)`` on every state change; returns a function to stop."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def on_error(self, callback: ErrorListener) -> Callable[[], None]:
        """Call ``callback(error)`` for errors that no call raises (renewal, broker, link)."""
        self._error_listeners.append(callback)
        return lambda: self._error_listeners.remove(callback) \
            if callback in self._error_listeners else None

    async def state_changes(self) -> AsyncIterator[StateChange]:
        """Iterate over state changes as they happen: ``async for change in ...``."""
        queue: asyncio.Queue[StateChange] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    async def wait_for_state(self, *states: ConnectionState, timeout: float = 10.0) -> None:
        """Wait until the state is one of ``states`` (raises TimeoutError after ``timeout``)."""
        if self.state in states:
            return
        async with asyncio.timeout(timeout):
            async for change in self.state_changes():
                if change.current in states:
                    return

    def _notify(self, change: StateChange) -> None:
        change = self._wall(change)
        log.info("%s -> %s (%s)", change.previous, change.current, change.reason)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("state listener failed")
        for queue in self._watchers:
            queue.put_nowait(change)

    def _report_error(self, err: RtkitError) -> None:
        self.last_error = err
        for listener in list(self._error_listeners):
            try:
                listener(err)
            except Exception:
                log.exception("error listener failed")
