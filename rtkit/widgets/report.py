"""DeliveryReport: the delivery audit as counters, a table and a chart, updating live."""

from __future__ import annotations

import time
from collections import deque

import bqplot as bq
import ipywidgets as w
import numpy as np

from rtkit.chaos.audit import DeliveryAudit
from rtkit.widgets.base import TABLE_CSS, LiveWidget

#: The counters shown on top, and their colour when they are not zero.
HEADLINE = [("delivered", "#198754"), ("pending", "#fd7e14"), ("lost", "#dc3545"),
            ("duplicates_seen", "#dc3545"), ("out_of_order", "#dc3545"),
            ("continuity_lost", "#dc3545")]
TROUBLE = ["pending", "lost"]


class DeliveryReport(LiveWidget):
    """The totals of a :class:`~rtkit.chaos.DeliveryAudit` (delivered, pending, lost,
    duplicates, out of order, continuity losses), one row per subscriber, and a chart of
    *pending* and *lost* over the last ``window`` seconds: during an outage pending rises,
    after the resume it falls back to zero; lost only ever counts messages that can no
    longer arrive."""

    def __init__(self, audit: DeliveryAudit, rate: float = 4.0, window: float = 60.0) -> None:
        self.audit = audit
        self.window = window
        self.headline = w.HTML()
        self.table = w.HTML()
        self.samples: deque[tuple[float, int, int]] = deque()
        self.x_scale = bq.LinearScale(min=-window, max=0.0)
        self.y_scale = bq.LinearScale(min=0.0, max=10.0)
        self.lines = bq.Lines(x=np.zeros(0), y=np.zeros((2, 0)),
                              scales={"x": self.x_scale, "y": self.y_scale},
                              colors=["#fd7e14", "#dc3545"], labels=TROUBLE,
                              display_legend=True)
        self.figure = bq.Figure(marks=[self.lines],
                                axes=[bq.Axis(scale=self.x_scale, label="seconds ago"),
                                      bq.Axis(scale=self.y_scale, side="left",
                                              label="messages")],
                                title="pending and lost", animation_duration=0,
                                legend_location="top-left",
                                layout={"height": "220px", "width": "100%"})
        self._last_table = ""
        super().__init__([self.headline, self.table, self.figure], rate=rate)
        self.add_class("rtkit-delivery-report")
        self.refresh()

    def tick(self) -> None:
        self.changed()

    def render(self) -> None:
        now = time.time()
        totals = self.audit.totals()
        self.headline.value = " · ".join(
            f'<span class="rtkit-count-{key}" style="font-size:1.2em;'
            f'color:{color if totals[key] else "#212529"}"><b>{totals[key]:,}</b> '
            f"{key.replace('_', ' ')}</span>" for key, color in HEADLINE) + (
            " · <i>audit closed</i>" if self.audit.closed else "")
        table = TABLE_CSS + self.audit.report().rename(columns=lambda c: c.replace("_", " ")) \
            .to_html(index=False, classes="rtkit-table rtkit-audit", border=0)
        if table != self._last_table:
            self._last_table = self.table.value = table
        self.samples.append((now, totals["pending"], totals["lost"]))
        while self.samples and self.samples[0][0] < now - self.window:
            self.samples.popleft()
        data = np.array(self.samples, dtype=float).reshape(-1, 3)
        with self.figure.hold_sync():
            self.lines.x = data[:, 0] - now
            self.lines.y = data[:, 1:].T
            self.y_scale.max = max(10.0, float(data[:, 1:].max(initial=0)) * 1.1)
