"""MessageLog: a live table of the latest messages of one or more channels."""

from __future__ import annotations

import html
import json
from collections import deque
from typing import Any

import ipywidgets as w

from rtkit.aio.channel import Channel
from rtkit.aio.subscription import Subscription
from rtkit.core.frames import Message
from rtkit.data import MessageRecorder
from rtkit.widgets.base import TABLE_CSS, LiveWidget


def short(data: Any, limit: int = 80) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MessageLog(LiveWidget):
    """The latest ``rows`` messages, newest first: serial, channel, name, data, publisher and
    latency (broker timestamp to arrival here). Redraws at most ``rate`` times a second."""

    def __init__(self, *channels: Channel, rows: int = 15, rate: float = 20.0) -> None:
        if not channels:
            raise ValueError("give at least one channel")
        self.channels = channels
        self.recorder = MessageRecorder(window=rows)
        self.recorder.listeners.append(lambda *_: self.changed())
        self.table = w.HTML()
        self.counter = w.HTML()
        self._subs: list[Subscription] = []
        super().__init__([self.counter, self.table], rate=rate)
        self.add_class("rtkit-message-log")
        self.follow(channels[0].client)
        self.refresh()

    async def start(self) -> MessageLog:
        """Subscribe to the channels (``await MessageLog(ch).start()``)."""
        for ch in self.channels:
            self._subs.append(await ch.subscribe(self.recorder))
        for sub in self._subs:
            self.on_cleanup(sub.close)
        return self

    @property
    def rows(self) -> deque[tuple[Message, float]]:
        return self.recorder.rows

    def render(self) -> None:
        body = "".join(
            f"<tr><td>{m.serial}</td><td>{html.escape(m.channel)}</td>"
            f"<td>{html.escape(m.name)}</td><td><code>{html.escape(short(m.data))}</code></td>"
            f"<td>{html.escape(m.client_id or '')}</td>"
            f"<td>{max(0.0, t * 1000 - m.timestamp):.1f}</td></tr>"
            for m, t in reversed(self.recorder.rows))
        self.table.value = TABLE_CSS + (
            '<table class="rtkit-table rtkit-messages"><tr><th>serial</th><th>channel</th>'
            "<th>name</th><th>data</th><th>publisher</th><th>latency ms</th></tr>"
            + body + "</table>")
        self.counter.value = f"{self.recorder.count} messages received"
