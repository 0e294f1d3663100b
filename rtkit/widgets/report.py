"""DeliveryReport: the delivery audit as a table and a bar chart, updating live."""

from __future__ import annotations

import bqplot as bq
import ipywidgets as w

from rtkit.chaos.audit import DeliveryAudit
from rtkit.widgets.base import LiveWidget

BARS = ["published", "delivered", "duplicates_dropped", "lost", "out_of_order",
        "continuity_lost"]


class DeliveryReport(LiveWidget):
    """Per subscriber: published, acked, delivered, duplicates dropped, lost, out of order,
    continuity lost (table), and the totals as bars (lost and reordered in red)."""

    def __init__(self, audit: DeliveryAudit, rate: float = 4.0) -> None:
        self.audit = audit
        self.table = w.HTML()
        x, y = bq.OrdinalScale(), bq.LinearScale(min=0.0)
        self.bars = bq.Bars(x=BARS, y=[0] * len(BARS), scales={"x": x, "y": y},
                            colors=["#0d6efd", "#198754", "#6c757d", "#dc3545", "#dc3545",
                                    "#fd7e14"], color_mode="element")
        self.figure = bq.Figure(marks=[self.bars], axes=[bq.Axis(scale=x),
                                bq.Axis(scale=y, side="left")],
                                title="delivery audit", animation_duration=0,
                                layout={"height": "260px", "width": "100%"})
        self._last: tuple[int, ...] = ()
        super().__init__([self.table, self.figure], rate=rate)
        self.add_class("rtkit-delivery-report")
        self.refresh()

    def tick(self) -> None:
        self.changed()

    def render(self) -> None:
        frame = self.audit.report()
        totals = self.audit.totals()
        values = tuple(totals[k] for k in BARS)
        if values == self._last and self.table.value:
            return
        self._last = values
        self.table.value = frame.to_html(index=False, classes="rtkit-audit", border=0)
        self.bars.y = list(values)
