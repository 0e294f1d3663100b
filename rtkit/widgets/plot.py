"""LivePlot: numeric fields of a channel's messages, streaming over a sliding time window.

bqplot, because it updates incrementally (about 0.5 ms and one comm message per redraw of a
1,000-point line here) and keeps every point across a page reload; plotly's FigureWidget
cost about 4x more per update and showed its initial data again after a reload.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

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
    a function of the message. Each series keeps at most ``max_points`` points and draws at
    most ``max_drawn`` of them (evenly spaced, always the latest), however fast the stream.

    ``y_axes="separate"`` gives each series its own y scale and axis (in the series' colour,
    alternating left and right): use it when the values differ in scale (a price of 100 and
    one of 50 would each look flat on a shared axis). ``anchor="latest"`` ends the x axis at
    the latest message instead of now, so a burst stays on screen after it ends.
    ``marker="circle"`` marks each point (for slow, irregular streams).
    """

    def __init__(self, channel: Channel, fields: Sequence[str] | Mapping[str, Getter] = ("value",),
                 window: float = 30.0, max_points: int = 2000, rate: float = 20.0,
                 title: str | None = None, event: str | None = None,
                 y_axes: Literal["shared", "separate"] = "shared",
                 anchor: Literal["now", "latest"] = "now", marker: str | None = None,
                 max_drawn: int = 1000) -> None:
        if y_axes not in ("shared", "separate"):
            raise ValueError('y_axes must be "shared" or "separate"')
        if anchor not in ("now", "latest"):
            raise ValueError('anchor must be "now" or "latest"')
        if window <= 0:
            raise ValueError("window must be a positive number of seconds")
        if max_drawn < 2:
            raise ValueError("max_drawn must be at least 2")
        self.max_drawn = max_drawn
        self.channel = channel
        self.window = window
        self.event = event
        self.anchor = anchor
        getters: dict[str, Getter] = (
            dict(fields) if isinstance(fields, Mapping) else {f: field_getter(f) for f in fields})
        if not getters:
            raise ValueError("give at least one field to plot")
        self.getters = getters
        self.series: dict[str, deque[tuple[float, float]]] = {
            label: deque(maxlen=max_points) for label in getters}
        self.skipped = 0  # messages whose field was missing or not a number
        self.x_scale = bq.LinearScale(min=-window, max=0.0)
        shared = bq.LinearScale()
        self.y_scales: dict[str, Any] = {
            label: shared if y_axes == "shared" else bq.LinearScale() for label in getters}
        self.y_scale = shared if y_axes == "shared" else next(iter(self.y_scales.values()))
        colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(getters)}
        self.marks = {
            label: bq.Lines(x=np.zeros(0), y=np.zeros(0),
                            scales={"x": self.x_scale, "y": self.y_scales[label]},
                            colors=[colors[label]], labels=[label], display_legend=True,
                            **({"marker": marker, "marker_size": 24} if marker else {}))
            for label in getters}
        x_label = "seconds ago" if anchor == "now" else "seconds before the latest message"
        axes = [bq.Axis(scale=self.x_scale, label=x_label)]
        if y_axes == "shared":
            axes.append(bq.Axis(scale=shared, side="left", label=", ".join(getters)))
        else:
            for i, label in enumerate(getters):
                left = i % 2 == 0
                axes.append(bq.Axis(scale=self.y_scales[label], label=label, color=colors[label],
                                    label_color=colors[label], grid_lines="none" if i else "solid",
                                    side="left" if left else "right",
                                    label_offset="3.5em" if left else "4em"))
        margin = {"top": 50, "bottom": 50, "left": 70, "right": 70 if y_axes == "separate"
                  and len(getters) > 1 else 20}
        self.figure = bq.Figure(marks=list(self.marks.values()), axes=axes,
                                title=title or f"{channel.name}", fig_margin=margin,
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

    def end(self) -> float:
        """Where the x axis ends (as a time): now, or the latest point with anchor "latest"."""
        if self.anchor == "now":
            return time.time()
        latest = [points[-1][0] for points in self.series.values() if points]
        return max(latest) if latest else time.time()

    def points(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """What the next redraw shows: per series, x (seconds before the end) and y."""
        end = self.end()
        out = {}
        for label, points in self.series.items():
            while points and points[0][0] < end - self.window:
                points.popleft()
            arr = np.array(points, dtype=float).reshape(-1, 2)
            if len(arr) > self.max_drawn:  # evenly spaced, first and last included
                arr = arr[np.linspace(0, len(arr) - 1, self.max_drawn).astype(int)]
            out[label] = (arr[:, 0] - end, arr[:, 1])
        return out

    def tick(self) -> None:
        if self.anchor == "now" and any(self.series.values()):
            self.changed()  # time passes: the window slides even without new messages

    def render(self) -> None:
        data = self.points()
        with self.figure.hold_sync():
            for label, (x, y) in data.items():
                mark = self.marks[label]
                mark.x, mark.y = x, y
            for scale in {id(s): s for s in self.y_scales.values()}.values():
                ys = [y for label, (_, y) in data.items()
                      if self.y_scales[label] is scale and len(y)]
                if ys:
                    low = min(float(y.min()) for y in ys)
                    high = max(float(y.max()) for y in ys)
                    pad = (high - low) * 0.05 or 1.0
                    scale.min, scale.max = low - pad, high + pad
