"""A feed's subscriptions: callbacks (sync or async) and ``async for``."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

from rtkit.core.feed import FeedRecord
from rtkit.errors import LimitExceeded

if TYPE_CHECKING:
    from rtkit.feed.feed import Feed

log = logging.getLogger("rtkit.feed")
RecordCallback = Callable[[FeedRecord], Any]


class FeedSubscription:
    """Records of a feed (optionally of one SSE ``event`` type) for a callback or
    ``async for``. It is registered as soon as it is made: ``feed.subscribe(cb)`` and
    ``await feed.subscribe(cb)`` (as with a channel) both work.

    Sync callbacks run as each record arrives; async callbacks run one at a time, in order.
    Without a callback, iterate. At most ``buffer`` records wait; past that the oldest are
    dropped, counted in ``dropped`` and reported by the iterator as
    :class:`~rtkit.LimitExceeded` (42907), never silently. Iteration ends when the feed or
    the subscription is closed.
    """

    def __init__(self, feed: Feed, callback: RecordCallback | None, event: str | None,
                 buffer: int) -> None:
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self.feed = feed
        self.callback = callback
        self.event = event
        self.delivered = 0
        self.dropped = 0
        self._is_async = callback is not None and inspect.iscoroutinefunction(callback)
        self._direct = callback is not None and not self._is_async
        self._queue: deque[FeedRecord] = deque()
        self._buffer = buffer
        self._ready = asyncio.Event()
        self._closed = False
        self._unreported_drops = 0
        self._worker: asyncio.Task[None] | None = None
        if self._is_async:
            self._worker = asyncio.get_running_loop().create_task(self._run_async_callback())

    @property
    def active(self) -> bool:
        return not self._closed

    def push(self, record: FeedRecord) -> None:
        """Deliver one record (called by the feed)."""
        if self._closed or (self.event is not None and record.name != self.event):
            return
        self.delivered += 1
        if self._direct:
            try:
                self.callback(record)  # type: ignore[misc]
            except Exception:
                log.exception("feed callback failed on %s", record.id)
            return
        if len(self._queue) >= self._buffer:
            self._queue.popleft()
            self.dropped += 1
            self._unreported_drops += 1
        self._queue.append(record)
        self._ready.set()

    async def _run_async_callback(self) -> None:
        assert self.callback is not None
        while True:
            try:
                record = await self.get()
            except LimitExceeded as exc:
                log.warning("%s", exc)
                continue
            except StopAsyncIteration:
                return
            try:
                await self.callback(record)
            except Exception:
                log.exception("feed callback failed on %s", record.id)

    async def get(self, timeout: float | None = None) -> FeedRecord:
        """The next record (raises :class:`StopAsyncIteration` once closed)."""
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            if timeout is None:
                await self._ready.wait()
            else:
                await asyncio.wait_for(self._ready.wait(), timeout)
        if self._unreported_drops:
            count, self._unreported_drops = self._unreported_drops, 0
            raise LimitExceeded(f"subscription buffer overflow: {count} records dropped",
                                code=42907)
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[FeedRecord]:
        return self

    async def __anext__(self) -> FeedRecord:
        return await self.get()

    def __await__(self) -> Generator[Any, None, FeedSubscription]:
        """``await feed.subscribe(cb)`` gives the subscription itself (already active)."""
        return self._self().__await__()

    async def _self(self) -> FeedSubscription:
        return self

    def close(self) -> None:
        """Stop delivering to this subscription now (records already queued can still be
        read; then iteration ends)."""
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        if self._worker is not None and not self._queue:
            self._worker.cancel()
        self.feed._forget(self)

    async def unsubscribe(self) -> None:
        """The same as :meth:`close` (awaitable, as a channel subscription's is)."""
        self.close()

    def __repr__(self) -> str:
        state = "active" if self.active else "closed"
        return f"<FeedSubscription {self.feed.name} {state} delivered={self.delivered}>"
