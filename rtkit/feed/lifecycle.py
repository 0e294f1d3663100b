"""A feed's connection state, observable: the transition table of :mod:`rtkit.core.states`
plus state listeners, ``async for`` over changes, waiting for a state, and error listeners."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from rtkit.core.states import ConnectionState, StateChange, StateMachine, Trigger
from rtkit.errors import RtkitError

log = logging.getLogger("rtkit.feed")
StateListener = Callable[[StateChange], Any]
ErrorListener = Callable[[RtkitError], Any]


def _remover(listeners: list[Any], callback: Any) -> Callable[[], None]:
    def remove() -> None:
        if callback in listeners:
            listeners.remove(callback)
    return remove


class Lifecycle:
    """State (times in :attr:`StateChange.at` are seconds since the epoch) and errors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.machine = StateMachine(time.time())
        self.last_error: RtkitError | None = None
        self._listeners: list[StateListener] = []
        self._error_listeners: list[ErrorListener] = []
        self._watchers: set[asyncio.Queue[StateChange]] = set()

    @property
    def state(self) -> ConnectionState:
        return self.machine.state

    def on_state_change(self, callback: StateListener) -> Callable[[], None]:
        self._listeners.append(callback)
        return _remover(self._listeners, callback)

    def on_error(self, callback: ErrorListener) -> Callable[[], None]:
        self._error_listeners.append(callback)
        return _remover(self._error_listeners, callback)

    async def changes(self) -> AsyncIterator[StateChange]:
        queue: asyncio.Queue[StateChange] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    async def wait_for(self, *states: ConnectionState, timeout: float) -> None:
        if self.state in states:
            return
        async with asyncio.timeout(timeout):
            async for change in self.changes():
                if change.current in states:
                    return

    def can(self, trigger: Trigger) -> bool:
        return self.machine.can(trigger)

    def transition(self, trigger: Trigger, reason: str, err: RtkitError | None = None
                   ) -> StateChange:
        change = self.machine.apply(trigger, reason, time.time(), err)
        log.info("%s: %s -> %s (%s)", self.name, change.previous, change.current, reason)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("state listener failed")
        for queue in self._watchers:
            queue.put_nowait(change)
        return change

    def report(self, err: RtkitError) -> None:
        self.last_error = err
        for listener in list(self._error_listeners):
            try:
                listener(err)
            except Exception:
                log.exception("error listener failed")
