"""ConnectionPanel: a client's state as a badge, its transport, its timeline, heartbeat RTT
and controls."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from rtkit.aio.client import Client
from rtkit.core.states import StateChange
from rtkit.errors import RtkitError
from rtkit.widgets.base import (
    TABLE_CSS,
    LiveWidget,
    badge,
    clock,
    error_html,
    ok_html,
    scroll_box,
)


@dataclass(frozen=True)
class TimelineRow:
    at: float
    state: str
    previous: str
    reason: str
    lasted: float  # how long the state before this one lasted (s)
    code: int | None
    transport: str | None = None  # of the link the change is about ("websocket", "sse")


def timeline(history: list[StateChange], limit: int = 12) -> list[TimelineRow]:
    """The latest ``limit`` transitions, newest first, with the time spent in each state."""
    rows = []
    for i, change in enumerate(history):
        lasted = change.at - history[i - 1].at if i else 0.0
        rows.append(TimelineRow(change.at, change.current.value, change.previous.value,
                                change.reason, lasted, change.error.code if change.error
                                else None, change.transport))
    return rows[::-1][:limit]


class ConnectionPanel(LiveWidget):
    """Shows ``client``'s state (coloured badge) and transport (WebSocket or SSE), its
    transitions with reasons, transports and how long each state lasted, the heartbeat
    round-trip, and Connect / Close / Reconnect buttons.

    The timeline keeps the latest ``rows`` transitions in a box ``height`` high that scrolls,
    so a long outage never pushes the widgets below off the screen. The round-trip time is
    measured once on each connection (a ``ping``) and then by every heartbeat.
    """

    def __init__(self, client: Client, rows: int = 12, rate: float = 10.0,
                 height: str = "9.5em") -> None:
        self.client = client
        self.rows = rows
        self.height = height
        self.badge = w.HTML()
        self.info = w.HTML()
        self.table = w.HTML()
        self.status = w.HTML()
        self.connect_button = w.Button(description="Connect", icon="plug")
        self.close_button = w.Button(description="Close", icon="times")
        self.reconnect_button = w.Button(description="Reconnect", icon="refresh")
        self.connect_button.on_click(lambda _: self.act("connect"))
        self.close_button.on_click(lambda _: self.act("close"))
        self.reconnect_button.on_click(lambda _: self.act("reconnect"))
        buttons = w.HBox([self.connect_button, self.close_button, self.reconnect_button])
        super().__init__([w.HBox([self.badge, self.info]), buttons, self.status, self.table],
                         rate=rate)
        self.add_class("rtkit-connection-panel")
        self._pinged: str | None = None  # the connection whose RTT we measured
        self.on_cleanup(client.on_state_change(lambda _: self.changed()))
        self.follow(client)
        self._last_second = 0
        self.refresh()

    def act(self, action: str) -> Any:
        """What the buttons do (also callable from code and tests)."""
        self.status.value = f"{action}..."
        if not self.running:  # stopped when the client closed: follow it again
            self.restart()
            self.follow(self.client)
        coro = getattr(self.client, action)()
        return self.run(coro, done=lambda _: self._done(action), failed=self._failed)

    def _done(self, action: str) -> None:
        self.status.value = ok_html(f"{action}: done")
        self.changed()

    def _failed(self, exc: BaseException) -> None:
        self.status.value = error_html(exc)
        self.changed()

    def _measure_rtt(self) -> None:
        """Ping once per connection, so the RTT shows at once rather than after the first
        heartbeat (which may be many seconds away)."""
        c = self.client
        if c.state.value != "connected" or c.connection_id == self._pinged:
            return
        self._pinged = c.connection_id
        self.run(c.ping(), done=lambda _: self.changed(), failed=self._ping_failed)

    def _ping_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, RtkitError):  # a dropped link: the next connection pings
            self.status.value = error_html(exc)

    def tick(self) -> None:
        self._measure_rtt()
        second = int(time.time())
        if second != self._last_second:  # durations and RTT move on their own
            self._last_second = second
            self.changed()

    def render(self) -> None:
        c = self.client
        state = c.state.value
        self.badge.value = badge(state)
        rtt = f"{c.last_rtt * 1000:.1f} ms" if c.last_rtt is not None else "–"
        since = time.time() - c.state_history[-1].at if c.state_history else 0.0
        transport = getattr(c, "transport", None)  # (a Feed has none)
        over = (f' · over <b class="rtkit-transport">{html.escape(transport)}</b>'
                if isinstance(transport, str) else "")
        self.info.value = (
            f'<span style="margin-left:1em">for {since:.1f} s{over} · connection '
            f"<code>{html.escape(c.connection_id or '–')}</code> · client "
            f"<code>{html.escape(c.client_id or '–')}</code> · heartbeat RTT {rtt}"
            f" · queued publishes {c.queued_publishes}</span>")
        body = "".join(
            f"<tr><td>{clock(r.at)}</td><td>{r.previous} → {badge(r.state)}</td>"
            f"<td>{r.transport or ''}</td><td>{r.lasted:.2f} s</td><td>{r.code or ''}</td>"
            f'<td class="rtkit-wrap">{html.escape(r.reason)}</td></tr>'
            for r in timeline(c.state_history, self.rows))
        self.table.value = TABLE_CSS + scroll_box(
            '<table class="rtkit-table rtkit-timeline"><tr><th>time</th><th>transition</th>'
            '<th>transport</th>'
            '<th title="how long the previous state lasted">after</th><th>code</th>'
            "<th>reason</th></tr>" + body + "</table>", self.height)
