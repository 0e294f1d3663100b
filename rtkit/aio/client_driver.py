"""The asyncio driver of one :class:`rtkit.Client`: it runs the client's sans-I/O core.

It feeds the :class:`~rtkit.core.client.ClientCore` the application's calls with ``now``
(:meth:`Driver.call`, :meth:`Driver.op`), performs the effects the core asks for (send a
frame, open or end a link through :class:`~rtkit.aio.client_links.Links`, call
``auth_callback``), wakes the core at its next deadline, and turns its events into futures,
state-change notifications and calls on the client's channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rtkit.aio.auth import AuthCallback, call_auth_callback
from rtkit.aio.client_links import Links
from rtkit.core import client_events as ev
from rtkit.core.states import ChannelState, ConnectionState
from rtkit.errors import ConnectionClosed, RtkitError

if TYPE_CHECKING:
    import ssl as ssl_module

    from rtkit.aio.channel import Channel
    from rtkit.aio.client import Client
    from rtkit.core.client import ClientCore

log = logging.getLogger("rtkit.client")
S = ConnectionState
T = TypeVar("T")


class Driver:
    """Runs ``core`` for ``client`` on the running asyncio loop."""

    def __init__(self, client: Client, core: ClientCore, channels: dict[str, Channel],
                 auth_callback: AuthCallback | None, wall_offset: Callable[[], float],
                 max_frame_size: int, ssl: ssl_module.SSLContext | None,
                 connect_timeout: float) -> None:
        self.client = client
        self.core = core
        self.channels = channels  # the client's, by name
        self.links = Links(core, self, max_frame_size, ssl, connect_timeout)
        self.futures: dict[int, asyncio.Future[Any]] = {}
        self._auth_callback = auth_callback
        self._wall_offset = wall_offset
        self.fetcher: asyncio.Task[None] | None = None
        self.dying: list[asyncio.Task[None]] = []  # cancelled on close, not yet awaited
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pumping = False

    def now(self) -> float:
        return time.monotonic()

    # ---------------------------------------------------------------- effects

    def pump(self) -> None:
        """Perform what the core asks, then wake it again at its next deadline."""
        self.perform()
        self.arm_timer()

    def perform(self) -> None:
        if self._pumping:
            return  # a callback called us: the loop below picks up what it added
        self._pumping = True
        try:
            while True:
                items = self.core.take()
                if not items:
                    break
                for item in items:
                    self._handle(item)
        finally:
            self._pumping = False

    def _handle(self, item: ev.Output) -> None:
        if isinstance(item, ev.Send):
            link = self.links.link
            if link is not None:
                link.send(item.text)
        elif isinstance(item, ev.Deliver):
            ch = self.channels.get(item.channel)
            if ch is not None:
                ch._deliver(item.messages, item.subs)
        elif isinstance(item, ev.OpDone):
            fut = self.futures.pop(item.op, None)
            if fut is not None and not fut.done():
                fut.set_result(item.value)
        elif isinstance(item, ev.OpFailed):
            fut = self.futures.pop(item.op, None)
            if fut is not None and not fut.done():
                fut.set_exception(item.error)
        elif isinstance(item, ev.StateChanged):
            if item.change.current is S.CLOSED:
                self.client._closed()
            self.client._notify(item.change)
        else:
            self._handle_rare(item)

    def _handle_rare(self, item: ev.Output) -> None:
        if isinstance(item, ev.OpenLink):
            self.links.open(item.url, item.transport)
        elif isinstance(item, ev.Probe):
            self.links.start_probe(item.url)
        elif isinstance(item, ev.AbortLink):
            self.links.abort(item.error)
        elif isinstance(item, ev.CloseLink):
            if self.links.link is not None:
                self.links.link.close(item.code, item.reason)
        elif isinstance(item, ev.FetchToken):
            self._fetch_token(item)
        elif isinstance(item, ev.Lost):
            ch = self.channels.get(item.loss.channel)
            if ch is not None:
                ch._report(item.loss)
        elif isinstance(item, ev.ChannelChanged):
            ch = self.channels.get(item.channel)
            if ch is not None and item.current is ChannelState.FAILED and item.error:
                ch._failed(item.error)
        elif isinstance(item, ev.PresenceChanged):
            ch = self.channels.get(item.channel)
            if ch is not None:
                ch.presence._apply(item.changes)
        elif isinstance(item, ev.Problem):
            self.client._report_error(item.error)
            log.debug("%s: %s", item.detail or "problem", item.error)

    def _fetch_token(self, item: ev.FetchToken) -> None:
        callback = self._auth_callback
        if callback is None:
            return

        async def fetch() -> None:
            try:
                token = await call_auth_callback(callback, item.timeout)
            except RtkitError as exc:
                self.core.token_failed(item.id, exc, self.now())
            else:
                self.core.token_obtained(item.id, token, self.now())
            self.pump()

        self.fetcher = asyncio.get_running_loop().create_task(fetch())

    # ---------------------------------------------------------------- time

    def arm_timer(self) -> None:
        at = self.core.next_deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            loop = self.loop or asyncio.get_running_loop()
            self.loop = loop
            # loop.time() is time.monotonic() for asyncio's loops: the core's clock.
            self._timer = loop.call_at(at, self.on_timer)

    def on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.set_wall_offset(self._wall_offset())
        self.core.timer(self.now())
        self.pump()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None

    # ---------------------------------------------------------------- operations

    def call(self, fn: Callable[[float], T]) -> T:
        """Run a core operation now and perform what it asks."""
        self.loop = self.loop or asyncio.get_running_loop()
        try:
            return fn(self.now())
        finally:
            self.pump()

    def future(self, op: int) -> asyncio.Future[Any]:
        """The future of operation ``op`` (create it before pumping the core's outputs)."""
        fut = self.futures.get(op)
        if fut is None:
            fut = self.futures[op] = asyncio.get_running_loop().create_future()
        return fut

    async def op(self, start: Callable[[float], int]) -> Any:
        """Start a core operation and wait for its outcome. If the wait is cancelled, the
        operation is withdrawn when it can still be (a publish not sent yet)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        try:
            op = start(self.now())
        except BaseException:
            self.pump()
            raise
        fut = self.future(op)  # before pumping: the outcome may already be there
        self.pump()
        try:
            return await fut
        except asyncio.CancelledError:
            self.futures.pop(op, None)
            self.core.withdraw(op, self.now())
            self.pump()
            raise

    # ---------------------------------------------------------------- stopping

    def stop(self) -> None:
        """End the tasks run for the core (opening, probing, fetching a token) and the
        link: the core reached ``closed``."""
        links = self.links
        for task in (links.opener, self.fetcher, links.probe):
            if task is not None and task is not asyncio.current_task() and not task.done():
                task.cancel()
                self.dying.append(task)
        links.opener = self.fetcher = links.probe = None
        if links.link is not None:
            links.link.abort(ConnectionClosed("closed"))
            links.forget()

    async def reap(self) -> None:
        """Wait for the tasks :meth:`stop` cancelled to end."""
        dying, self.dying = self.dying, []
        for task in dying:
            with contextlib.suppress(asyncio.CancelledError):
                await task
