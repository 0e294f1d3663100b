"""LivePlot: numeric fields of a channel's messages, streaming over a sliding time window.

bqplot, because it updates incrementally (about 0.5 ms and one comm message per redraw of a
1,000-point line here) and keeps every point across a page reload; plotly's FigureWidget
cost about 4x more per update and showed its initial data again after a reload.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import bqplot as bq
import numpy as np

from rtkit.aio.channel import Channel
from rtkit.aio.subscription import Subscription
from rtkit.core.frames import Message
from rtkit.data import numeric
from rtkit.widgets.base import LiveWidget

Getter = Callable[[Message], Any]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def field_getter(path: str) -> Getter:
    """``"price"`` or ``"sensor.temp"``: a getter for that (dotted) key of the message data."""
    keys = path.split(".")

    def get(msg: Message) -> Any:
        value = msg.data
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value
    return get


class LivePlot(LiveWidget):
    """Plot ``fields`` of ``channel``'s messages against time over the last ``window``
    seconds. ``fields`` is a list of data keys (dotted paths allowed) or a mapping of label to
    a function of the message. Each series keeps at most ``max_points`` points."""

    def __init__(self, channel: Channel, fields: Sequence[str] | Mapping[str, Getter] = ("value",),
                 window: float = 30.0, max_points: int = 2000, rate: float = 20.0,
                 title: str | None = None, event: str | None = None) -> None:
        self.channel = channel
        self.window = window
        self.event = event
        getters: dict[str, Getter] = (
            dict(fields) if isinstance(fields, Mapping) else {f: field_getter(f) for f in fields})
        if not getters:
            raise ValueError("give at least one field to plot")
        self.getters = getters
        self.series: dict[str, deque[tuple[float, float]]] = {
            label: deque(maxlen=max_points) for label in getters}
        self.skipped = 0  # messages whose field was missing or not a number
        self.x_scale = bq.LinearScale(min=-window, max=0.0)
        self.y_scale = bq.LinearScale()
        self.marks = {
            label: bq.Lines(x=np.zeros(0), y=np.zeros(0), scales={"x": self.x_scale,
                                                                   "y": self.y_scale},
                            colors=[PALETTE[i % len(PALETTE)]], labels=[label],
                            display_legend=True)
            for i, label in enumerate(getters)}
        axes = [bq.Axis(scale=self.x_scale, label="seconds ago"),
                bq.Axis(scale=self.y_scale, side="left", label=", ".join(getters))]
        self.figure = bq.Figure(marks=list(self.marks.values()), axes=axes,
                                title=title or f"{channel.name}",
                                legend_location="top-left", animation_duration=0,
                                layout={"height": "320px", "width": "100%"})
        self._sub: Subscription | None = None
        super().__init__([self.figure], rate=rate)
        self.add_class("rtkit-live-plot")
        self.follow(channel.client)

    async def start(self) -> LivePlot:
        """Subscribe to the channel (``await LivePlot(ch, ["price"]).start()``)."""
        self._sub = await self.channel.subscribe(self.add, event=self.event)
        self.on_cleanup(self._sub.close)
        return self

    def add(self, msg: Message) -> None:
        """Take one message (the subscription callback; cheap: no drawing here)."""
        t = msg.timestamp / 1000
        plotted = False
        for label, get in self.getters.items():
            value = numeric(get(msg))
            if value is not None:
                self.series[label].append((t, value))
                plotted = True
        if plotted:
            self.changed()
        else:
            self.skipped += 1

    def points(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """What the next redraw shows: per series, x (seconds ago) and y."""
        now = time.time()
        out = {}
        for label, points in self.series.items():
            while points and points[0][0] < now - self.window:
                points.popleft()
            arr = np.array(points, dtype=float).reshape(-1, 2)
            out[label] = (arr[:, 0] - now, arr[:, 1])
        return out

    def tick(self) -> None:
        if any(self.series.values()):
            self.changed()  # time passes: the window slides even without new messages

    def render(self) -> None:
        data = self.points()
        with self.figure.hold_sync():
            for label, (x, y) in data.items():
                mark = self.marks[label]
                mark.x, mark.y = x, y
            ys = [y for _, y in data.values() if len(y)]
            if ys:
                low, high = min(float(y.min()) for y in ys), max(float(y.max()) for y in ys)
                pad = (high - low) * 0.05 or 1.0
                self.y_scale.min, self.y_scale.max = low - pad, high + pad
