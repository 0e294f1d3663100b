"""Producer: a background data source (a simulated ticker, sensor, room...) that runs until you
stop it, with a Stop / Start button."""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ipywidgets as w

from rtkit.widgets.base import LiveWidget, error_html

log = logging.getLogger("rtkit.widgets")


class Producer(LiveWidget):
    """Runs ``source()``, an async function that publishes in a loop, in the background.

    It starts at once (``start=False``: on the button) and runs until stopped: by its Stop
    button, :meth:`stop`, closing the widget, re-running its cell or shutting down the
    kernel. So a notebook run with *Run All* keeps its plots moving while you read. If the
    source fails, the widget shows the error in one line (never a traceback) and stops;
    Start runs it again.
    """

    def __init__(self, source: Callable[[], Awaitable[Any]], name: str | None = None, *,
                 start: bool = True, rate: float = 2.0) -> None:
        self.source = source
        self.name: str = name or str(getattr(source, "__name__", "producer"))
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.error: BaseException | None = None
        self.label = w.HTML()
        self.button = w.Button(description="Stop", icon="stop")
        self.button.on_click(lambda _: self.stop() if self.active else self.start())
        self._feed: asyncio.Task[Any] | None = None
        super().__init__([w.HBox([self.button, self.label])], rate=rate)
        self.add_class("rtkit-producer")
        if start:
            self.start()
        self.refresh()

    @property
    def active(self) -> bool:
        """Whether the source is running."""
        task = self._feed
        return task is not None and not task.done() and not task.cancelling()

    def start(self) -> None:
        """Run the source (again), if it is not running."""
        if self.active or self.closed or self._loop is None:
            if self._loop is None:
                log.warning("no running event loop: the producer %s cannot run", self.name)
            return
        self.restart()
        self.error, self.started_at, self.stopped_at = None, time.time(), None
        self._feed = self._loop.create_task(self._run())
        self.refresh()

    async def _run(self) -> None:
        try:
            await self.source()
        except Exception as exc:  # shown in the widget; cancellation passes through
            log.warning("producer %s failed: %s", self.name, exc)
            self.error = exc
        self.stopped_at = time.time()
        self.refresh()

    def stop(self) -> None:
        """Stop the source (and the redraws), showing how long it ran."""
        if self.active:
            assert self._feed is not None
            self._feed.cancel()
            self.stopped_at = time.time()
        if not self.closed:
            self.refresh()
        super().stop()

    def tick(self) -> None:
        self.changed()  # the running time moves

    def render(self) -> None:
        name = f"<b>{html.escape(self.name)}</b>"
        if self.active and self.started_at is not None:
            self.button.description, self.button.icon = "Stop", "stop"
            self.label.value = (f'<span class="rtkit-producer-running">{name} running for '
                                f"{time.time() - self.started_at:.0f} s</span>")
            return
        self.button.description, self.button.icon = "Start", "play"
        if self.error is not None:
            self.label.value = f"{name} stopped: {error_html(self.error)}"
        elif self.started_at is None:
            self.label.value = f"{name} not started"
        else:
            ran = (self.stopped_at or time.time()) - self.started_at
            self.label.value = f'<span class="rtkit-producer-stopped">{name} stopped after ' \
                               f"{ran:.0f} s</span>"
