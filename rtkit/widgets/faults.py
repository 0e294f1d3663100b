"""FaultPanel: break the link on purpose, from buttons, and watch the proxy's counters."""

from __future__ import annotations

import html

import ipywidgets as w

from rtkit.chaos.handle import FaultProxy
from rtkit.widgets.base import LiveWidget, error_html, ok_html

BANDWIDTHS = [("unlimited", 0), ("1 MB/s", 1_000_000), ("100 KB/s", 100_000),
              ("10 KB/s", 10_000), ("1 KB/s", 1_000)]


class FaultPanel(LiveWidget):
    """Controls for a :func:`rtkit.chaos.proxy`: drop now, blackhole N s, refuse N s,
    latency and jitter, bandwidth, block WebSocket, heal; with live counters."""

    def __init__(self, proxy: FaultProxy, rate: float = 4.0) -> None:
        self.proxy = proxy
        self.drop_button = w.Button(description="Drop now", icon="bolt", button_style="danger")
        self.blackhole_seconds = w.BoundedFloatText(value=3.0, min=0.1, max=600,
                                                    description="seconds")
        self.blackhole_button = w.Button(description="Blackhole", icon="circle")
        self.refuse_seconds = w.BoundedFloatText(value=2.0, min=0.1, max=600,
                                                 description="seconds")
        self.refuse_button = w.Button(description="Refuse", icon="ban")
        self.latency = w.IntSlider(value=0, min=0, max=1000, step=10, description="latency ms")
        self.jitter = w.IntSlider(value=0, min=0, max=500, step=5, description="jitter ms")
        self.bandwidth = w.Dropdown(options=BANDWIDTHS, value=0, description="bandwidth")
        self.block = w.ToggleButton(value=False, description="Block WebSocket", icon="shield")
        self.heal_button = w.Button(description="Heal", icon="medkit", button_style="success")
        self.counters = w.HTML()
        self.status = w.HTML()
        self.drop_button.on_click(lambda _: self._do("drop", lambda: self.proxy.drop_all()))
        self.blackhole_button.on_click(lambda _: self._do(
            "blackhole", lambda: self.proxy.blackhole(self.blackhole_seconds.value)))
        self.refuse_button.on_click(lambda _: self._do(
            "refuse", lambda: self.proxy.refuse(self.refuse_seconds.value)))
        self.latency.observe(lambda _: self._latency(), names="value")
        self.jitter.observe(lambda _: self._latency(), names="value")
        self.bandwidth.observe(lambda ch: self._do(
            "bandwidth", lambda: self.proxy.set_bandwidth(ch["new"] or None)), names="value")
        self._following = False  # True while the toggle follows a block made in code
        self.block.observe(self._block_changed, names="value")
        self.heal_button.on_click(lambda _: self.heal())
        super().__init__([
            w.HBox([self.drop_button, self.heal_button, self.block]),
            w.HBox([self.blackhole_button, self.blackhole_seconds]),
            w.HBox([self.refuse_button, self.refuse_seconds]),
            w.HBox([self.latency, self.jitter]), self.bandwidth, self.counters, self.status,
        ], rate=rate)
        self.add_class("rtkit-fault-panel")
        for button in (self.drop_button, self.heal_button, self.block, self.blackhole_button,
                       self.refuse_button):
            button.layout.width = "auto"  # never cut a label, even in a narrow column
        self.refresh()

    def _do(self, what: str, action: object) -> None:
        try:
            result = action()  # type: ignore[operator]
        except Exception as exc:
            self.status.value = error_html(exc)
        else:
            extra = f": {result} connection(s)" if isinstance(result, int) else ""
            self.status.value = ok_html(f"{what}{extra}")
        self.refresh()  # show the effect of a click at once

    def _block_changed(self, change: dict[str, object]) -> None:
        if not self._following:
            self._do("block", lambda: self.proxy.block_websockets(bool(change["new"])))

    def _latency(self) -> None:
        self._do("latency", lambda: self.proxy.set_latency(self.latency.value, self.jitter.value))

    def heal(self) -> None:
        self._do("heal", self.proxy.heal)
        with self.hold_sync():
            self.latency.value = self.jitter.value = 0
            self.bandwidth.value = 0
            self.block.value = False

    def tick(self) -> None:
        self.changed()

    def render(self) -> None:
        if not self.proxy.running:
            self.counters.value = "<i>proxy stopped</i>"
            return
        s, f = self.proxy.stats(), self.proxy.faults()
        if self.block.value != f["block_websocket"]:  # blocked or unblocked in code
            self._following = True
            try:
                self.block.value = bool(f["block_websocket"])
            finally:
                self._following = False
        active = [k for k in ("blackhole_s", "refuse_s") if f[k]]
        faults = ", ".join(f"{k[:-2]} {f[k]:.1f} s left" for k in active) or "no timed fault"
        self.counters.value = (
            f'<div class="rtkit-proxy-counters">open {s["open"]} · connections '
            f'{s["connections"]} · dropped {s["dropped"]} · refused {s["refused"]} · blocked '
            f'{s["blocked"]} · bytes up {s["bytes_up"]:,} / down {s["bytes_down"]:,}'
            f"<br>{html.escape(faults)}</div>")
