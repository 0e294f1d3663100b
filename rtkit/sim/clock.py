"""A virtual clock and an event queue: simulated time jumps from one event to the next."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

Action = Callable[[], None]


class Clock:
    """Runs scheduled actions in time order (ties in scheduling order), instantly.

    ``now`` is virtual seconds since the start of the simulation.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Action]] = []
        self._seq = itertools.count()
        self.events = 0

    def at(self, when: float, action: Action) -> None:
        """Run ``action`` at virtual time ``when`` (now, if ``when`` is in the past)."""
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), action))

    def after(self, delay: float, action: Action) -> None:
        self.at(self.now + max(0.0, delay), action)

    def run_until(self, when: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run every event up to virtual time ``when``; returns early (True) as soon as
        ``stop()`` is true, checked after each event."""
        queue = self._queue
        while queue and queue[0][0] <= when:
            at, _, action = heapq.heappop(queue)
            self.now = at
            self.events += 1
            action()
            if stop is not None and stop():
                return True
        self.now = max(self.now, when)
        return False

    @property
    def pending(self) -> int:
        return len(self._queue)
