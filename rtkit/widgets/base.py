"""What every rtkit widget shares: redraws at a bounded rate, and clean shutdown.

Never redraw per message: Jupyter Server drops kernel output above 1,000 messages/s, and a
widget that silently misses updates is a bug. Widgets keep the latest data, mark themselves
dirty, and a loop redraws at most ``rate`` times per second (default 20), batched with
``hold_sync``. Closing the widget (or re-running its cell) stops that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ipywidgets as w

from rtkit import _rerun
from rtkit.errors import RtkitError

log = logging.getLogger("rtkit.widgets")

COLORS = {
    "initialized": "#6c757d", "connecting": "#0d6efd", "connected": "#198754",
    "disconnected": "#fd7e14", "suspended": "#dc3545", "closing": "#6c757d",
    "closed": "#343a40", "failed": "#842029",
}


class RedrawGate:
    """Decides when to redraw: only when dirty, and at most ``rate`` times per second."""

    def __init__(self, rate: float = 20.0) -> None:
        if not 0 < rate <= 60:
            raise ValueError("rate must be between 0 and 60 redraws per second")
        self.interval = 1.0 / rate
        self.dirty = False
        self.last = float("-inf")
        self.redraws = 0

    def mark(self) -> None:
        self.dirty = True

    def due(self, now: float) -> bool:
        """True when a redraw should happen at ``now`` (and records it)."""
        if not self.dirty or now - self.last < self.interval:
            return False
        self.dirty = False
        self.last = now
        self.redraws += 1
        return True


#: Readable tables in every widget: room between columns, small header text, no wrapping
#: of short cells (scoped to rtkit's own tables).
TABLE_CSS = (
    "<style>.rtkit-table{border-collapse:collapse;font-size:12px}"
    ".rtkit-table th,.rtkit-table td{padding:2px 10px 2px 0;text-align:left;"
    "vertical-align:top;white-space:nowrap}"
    ".rtkit-table th{font-weight:600;color:#555;border-bottom:1px solid #ccc}"
    ".rtkit-table td.rtkit-wrap{white-space:normal}</style>")


def scroll_box(inner: str, max_height: str) -> str:
    """``inner`` in a box of bounded height that scrolls (so a growing table never pushes
    the widgets below it off the screen)."""
    return (f'<div class="rtkit-scroll" style="max-height:{max_height};overflow-y:auto">'
            f"{inner}</div>")


def clock(at: float) -> str:
    """Local wall-clock time with milliseconds: ``14:03:07.215``."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def badge(state: str) -> str:
    color = COLORS.get(state, "#6c757d")
    return (f'<span class="rtkit-badge rtkit-state-{state}" style="background:{color};'
            f'color:white;padding:2px 10px;border-radius:10px;font-weight:600">{state}</span>')


def error_html(err: BaseException) -> str:
    if isinstance(err, RtkitError):
        text = f"[{err.code}] {err.message}"
    else:
        text = f"{type(err).__name__}: {err}"
    return f'<span class="rtkit-error" style="color:#b02a37">{html.escape(text)}</span>'


def ok_html(text: str) -> str:
    return f'<span class="rtkit-ok" style="color:#146c43">{html.escape(text)}</span>'


class LiveWidget(w.VBox):  # type: ignore[misc]
    """A VBox that redraws itself at a bounded rate while open."""

    # class defaults: close() also works on a widget whose __init__ raised (bad arguments)
    _closed = False
    _task: asyncio.Task[None] | None = None
    _cleanups: list[Callable[[], Any]] = []  # noqa: RUF012 - replaced per instance

    def __init__(self, children: list[Any], rate: float = 20.0, **kwargs: Any) -> None:
        super().__init__(children=children, **kwargs)
        self.gate = RedrawGate(rate)
        self._closed = False
        self._cleanups: list[Callable[[], Any]] = []
        self._task: asyncio.Task[None] | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # no loop (a plain script): call refresh() to redraw
        if self._loop is not None:
            self._task = self._loop.create_task(self._redraw_forever())
            self.add_class("rtkit-live")  # the browser tests look for live widgets
        _rerun.replace_previous("widget", self, LiveWidget.close)

    # subclasses implement render(); it must be cheap and idempotent
    def render(self) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """Called on every loop turn; override to mark dirty on a clock (countdowns)."""

    def changed(self) -> None:
        """Data changed: redraw soon (at the bounded rate)."""
        self.gate.mark()

    def refresh(self) -> None:
        """Redraw now, whatever the rate (for scripts, tests and the end of a burst)."""
        self.gate.dirty = False
        self.gate.redraws += 1
        self._safe_render()

    def _safe_render(self) -> None:
        try:
            self.render()
        except Exception:
            log.exception("%s failed to redraw", type(self).__name__)

    async def _redraw_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(self.gate.interval)
            self.tick()
            if self.gate.due(loop.time()):
                self._safe_render()

    def on_cleanup(self, fn: Callable[[], Any]) -> None:
        self._cleanups.append(fn)

    def run(self, coro: Awaitable[Any], done: Callable[[Any], None] | None = None,
            failed: Callable[[BaseException], None] | None = None) -> asyncio.Task[Any] | None:
        """Run a coroutine for a button, reporting its result or error (never a traceback)."""
        if self._loop is None:
            log.warning("no running event loop: %s cannot run", type(self).__name__)
            if asyncio.iscoroutine(coro):
                coro.close()  # never started: close it so Python does not warn
            return None

        async def wrapper() -> Any:
            try:
                result = await coro
            except Exception as exc:
                if failed is not None:
                    failed(exc)
                else:
                    log.warning("%s: %s", type(self).__name__, exc)
                return None
            if done is not None:
                done(result)
            return result

        return self._loop.create_task(wrapper())

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> bool:
        """Whether the redraw loop is still going."""
        task = self._task
        return task is not None and not task.done() and not task.cancelling()

    def follow(self, client: Any) -> None:
        """Stop background work (after a last redraw) once ``client`` is closed."""
        def on_change(change: Any) -> None:
            if change.current.value == "closed":
                self.refresh()
                self.stop()
        self.on_cleanup(client.on_state_change(on_change))

    def restart(self) -> None:
        """Start redrawing again after :meth:`stop` (e.g. the client connects again)."""
        if not self.running and not self._closed and self._loop is not None:
            self._task = self._loop.create_task(self._redraw_forever())
            self.remove_class("rtkit-stopped")
            self.add_class("rtkit-live")

    def stop(self) -> None:
        """Stop redrawing and unsubscribe, but keep showing the last state."""
        if self._task is not None:
            self._task.cancel()
        if not self._closed:
            self.remove_class("rtkit-live")
            self.add_class("rtkit-stopped")
        cleanups, self._cleanups = self._cleanups, []
        for fn in cleanups:
            with contextlib.suppress(Exception):
                fn()

    def close(self) -> None:
        """Stop, then close the widget views."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        super().close()
