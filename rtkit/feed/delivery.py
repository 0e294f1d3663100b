"""What becomes of each frame an :class:`rtkit.Feed` reads.

The frame goes through the feed's :class:`~rtkit.core.feed.FeedCore`; the records that come
out are pushed to every subscription, gaps go to the gap listeners and to ``resync`` (its
records delivered in turn), bad frames are logged and reported, and the supervisor's
watchdog hears of the link and of the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from rtkit.core import sse
from rtkit.core.feed import BadFrame, FeedCore, FeedRecord
from rtkit.core.sequence import Duplicate, Gap
from rtkit.errors import ContinuityLost, LimitExceeded
from rtkit.feed.lifecycle import Lifecycle
from rtkit.feed.subscription import FeedSubscription
from rtkit.feed.supervisor import Supervisor

log = logging.getLogger("rtkit.feed")
GapCallback = Callable[[Gap], Any]
Resync = Callable[[Gap], Iterable[Any] | Awaitable[Iterable[Any] | None] | None]


class Delivery:
    """Records, gaps and bad frames of one feed, to its subscriptions and listeners."""

    def __init__(self, name: str, core: FeedCore, life: Lifecycle, supervisor: Supervisor,
                 resync: Resync | None, max_frame_size: int) -> None:
        self.name = name
        self.core = core
        self.life = life
        self.supervisor = supervisor
        self.resync = resync
        self.max_frame_size = max_frame_size
        self.subs: list[FeedSubscription] = []
        self.gap_listeners: list[GapCallback] = []
        self.tasks: set[asyncio.Task[Any]] = set()  # resyncs running
        self.resyncs = 0

    def on_frame(self, payload: str | bytes, name: str, event_id: str | None) -> None:
        """One frame (a WebSocket message, an SSE event's data) from the current link."""
        out = self.core.receive(payload, time.time(), name, event_id)
        data = False
        for item in out:
            if type(item) is FeedRecord:
                data = True
                for sub in self.subs:
                    sub.push(item)
            elif type(item) is Duplicate:
                data = True
            elif type(item) is Gap:
                self._report_gap(item)
            elif type(item) is BadFrame:
                self._bad(item)
        if data:
            self.supervisor.got_data(time.monotonic())
        else:
            self.supervisor.heard(time.monotonic())

    def oversized(self, item: sse.Oversized) -> None:
        """An SSE line or event over ``max_frame_size``: a bad frame."""
        self._bad(self.core.bad(item.head, LimitExceeded(
            f"SSE {item.what} of {item.size} bytes is over max_frame_size "
            f"({self.max_frame_size})", code=42902), time.time(), item.size))

    def _bad(self, frame: BadFrame) -> None:
        log.warning("%s: bad frame of %d bytes: %s", self.name, frame.size, frame.error)
        self.life.report(frame.error)

    def on_gap(self, callback: GapCallback) -> Callable[[], None]:
        self.gap_listeners.append(callback)
        return lambda: self.gap_listeners.remove(callback) \
            if callback in self.gap_listeners else None

    def _report_gap(self, gap: Gap) -> None:
        log.warning("%s: gap: %s", self.name, gap)
        for listener in list(self.gap_listeners):
            try:
                listener(gap)
            except Exception:
                log.exception("gap listener failed")
        if self.resync is not None:
            self._spawn(self._run_resync(gap))

    async def _run_resync(self, gap: Gap) -> None:
        assert self.resync is not None
        try:
            result = self.resync(gap)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # the user's function: report it, keep the feed going
            log.exception("resync failed")
            self.life.report(ContinuityLost(f"resync after gap ({gap}) failed: "
                                            f"{type(exc).__name__}: {exc}"))
            return
        self.resyncs += 1
        for value in result or ():
            record = self.core.record(value, time.time(), name="resync")
            for sub in self.subs:
                sub.push(record)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop_resyncs(self) -> None:
        """Cancel the resyncs running (but the one calling, if any) and wait for them."""
        tasks = [t for t in self.tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close_subscriptions(self) -> None:
        """End every subscription's iteration."""
        for sub in list(self.subs):
            sub.close()
