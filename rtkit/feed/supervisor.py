"""A feed's connections, one after another: open a link, subscribe, watch it, and when it
ends wait a backoff delay and try again, for ever unless told otherwise. The policy's
arithmetic is :mod:`rtkit.core.watch`; one connection is a :mod:`rtkit.feed.links` object.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from rtkit.core.states import ConnectionState, Trigger
from rtkit.core.watch import FeedWatch, RetryPolicy
from rtkit.errors import ConnectionFailed, Disconnected, RtkitError
from rtkit.feed.links import GiveUp, Link, SSELink, WebSocketLink

if TYPE_CHECKING:
    from rtkit.feed.feed import Feed

log = logging.getLogger("rtkit.feed")
S = ConnectionState


def encode(obj: Any) -> str | bytes:
    """A message as sent: str as text, bytes as binary, anything else as compact JSON."""
    if isinstance(obj, str | bytes):
        return obj
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    return json.dumps(obj, separators=(",", ":"))


class Supervisor:
    """Keeps ``feed`` connected: the retry loop, the current link and its watchdog."""

    def __init__(self, feed: Feed, retry: RetryPolicy,
                 watch: tuple[float | None, float, float | None]) -> None:
        self.feed = feed
        self.retry = retry
        self._watch_args = watch
        self.watch = FeedWatch(*watch)  # (checks the values now)
        self.link: Link | None = None
        self.connections = 0
        self.subscriptions_sent = 0
        self._had_data = False
        self._last_rtt: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._retry_now = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def last_rtt(self) -> float | None:
        link = self.link
        if link is not None and link.last_rtt is not None:
            return link.last_rtt
        return self._last_rtt

    def start(self) -> None:
        """Start connecting (a fresh start: ``max_retries`` counts again)."""
        self.retry.succeeded()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def retry_now(self) -> None:
        """Stop waiting: the next attempt starts at once."""
        self._retry_now.set()

    def got_data(self, now: float) -> None:
        """A record arrived (``now`` from the monotonic clock)."""
        self.watch.got_data(now)
        if not self._had_data:  # this connection works: the backoff starts over next time
            self._had_data = True
            self.retry.succeeded()

    def heard(self, now: float | None = None) -> None:
        self.watch.heard(time.monotonic() if now is None else now)

    async def stop(self) -> None:
        for task in (self._task, self._watchdog_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watchdog_task = None
        await self._drop_link()

    # ---------------------------------------------------------------- the loop

    async def _run(self) -> None:
        life = self.feed._life
        down_since: float | None = None
        while True:
            try:
                link = await self._open()
            except GiveUp as stop:
                await self._drop_link()
                self.feed._fail(stop.error)
                return
            except (RtkitError, Exception) as exc:
                await self._drop_link()
                if not isinstance(exc, RtkitError):  # a bug: say so, keep trying
                    log.exception("%s: connecting failed unexpectedly", self.feed.name)
                    exc = ConnectionFailed(f"{type(exc).__name__}: {exc}")
                life.report(exc)
                life.transition(Trigger.TRANSPORT_LOST, f"connect failed: {exc.message}", exc)
            else:
                down_since = None
                err = await link.lost
                await self._drop_link()
                life.report(err)
                life.transition(Trigger.TRANSPORT_LOST, err.message, err)
            if down_since is None:
                down_since = time.monotonic()
            delay = self.retry.delay()
            if delay is None:
                self.feed._fail(ConnectionFailed(
                    f"gave up after {self.retry.attempt} failed attempts (max_retries)"))
                return
            await self._wait_before_retry(delay, down_since)
            life.transition(Trigger.RETRY, f"retry #{self.retry.attempt} after {delay:.2f} s")

    async def _wait_before_retry(self, delay: float, down_since: float) -> None:
        life, suspend_after = self.feed._life, self.feed.suspend_after
        deadline = time.monotonic() + delay
        suspend_at = down_since + suspend_after
        while True:
            now = time.monotonic()
            if life.state is S.DISCONNECTED and now >= suspend_at:
                life.transition(Trigger.TTL_EXPIRED,
                                f"disconnected for more than {suspend_after:g} s")
            wait = deadline - now
            if life.state is S.DISCONNECTED:
                wait = min(wait, suspend_at - now)
            if now >= deadline:
                return
            try:
                await asyncio.wait_for(self._retry_now.wait(), max(wait, 0.0))
                return
            except TimeoutError:
                continue

    async def _open(self) -> Link:
        feed = self.feed
        self._retry_now.clear()
        url = feed.url() if callable(feed.url) else feed.url
        link: Link
        if feed.kind == "ws":
            link = WebSocketLink(url, feed._delivery.on_frame, self.heard, headers=feed.headers,
                                 ssl=feed.ssl, open_timeout=feed.connect_timeout,
                                 max_size=max(64 * 1024 * 1024, 4 * feed.max_frame_size))
        else:
            link = SSELink(url, feed._delivery.on_frame, self.heard, headers=feed.headers,
                           ssl=feed.ssl, open_timeout=feed.connect_timeout, parser=feed._parser,
                           on_retry=self._on_retry, on_oversized=feed._delivery.oversized)
        self.link = link
        self.watch = FeedWatch(*self._watch_args)
        self._had_data = False
        self.watch.start(time.monotonic())
        await link.open()
        self.connections += 1
        sent = await self._send_subscription(link)
        self._watchdog_task = asyncio.get_running_loop().create_task(
            self._watchdog(link, self.watch))
        detail = f", {sent} subscription message{'s' if sent != 1 else ''} sent" if sent else ""
        last_id = feed._parser.last_event_id
        resumed = f", resuming after event {last_id}" if feed.kind == "sse" and last_id else ""
        feed._life.transition(Trigger.CONNECTED, f"connected to {url}{detail}{resumed}")
        return link

    async def _send_subscription(self, link: Link) -> int:
        spec = self.feed._subscribe
        if spec is None:
            return 0
        if callable(spec):
            spec = spec()
            if inspect.isawaitable(spec):
                spec = await spec
        messages = list(spec) if isinstance(spec, list | tuple) else [spec]
        for message in messages:
            await link.send(encode(message))
            self.subscriptions_sent += 1
        return len(messages)

    def _on_retry(self, milliseconds: int) -> None:
        self.retry.server_retry = milliseconds / 1000

    async def _watchdog(self, link: Link, watch: FeedWatch) -> None:
        """Drop the link when it or its data goes silent; ping on WebSockets."""
        period = watch.period
        last_tick = time.monotonic()
        while not link.lost.done():
            await asyncio.sleep(period)
            now = time.monotonic()
            late = now - last_tick > 2 * period + 0.25
            last_tick = now
            if late:
                # Our own loop was blocked (a busy notebook cell): frames may be waiting
                # unread. Let the reader catch up before judging the link.
                continue
            why = watch.dead(now)
            if why is not None:
                link.abort(Disconnected(why))
                return
            if watch.ping_due(now):
                link.ping()

    async def _drop_link(self) -> None:
        link, self.link = self.link, None
        if self._watchdog_task is not None and self._watchdog_task is not asyncio.current_task():
            self._watchdog_task.cancel()
            self._watchdog_task = None
        if link is not None:
            self._last_rtt = link.last_rtt or self._last_rtt
            await link.close()
