"""``dashboard()``: the main widgets of a client laid out together."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as w

from rtkit.aio.client import Client
from rtkit.chaos.handle import FaultProxy
from rtkit.widgets.base import LiveWidget
from rtkit.widgets.connection import ConnectionPanel
from rtkit.widgets.faults import FaultPanel
from rtkit.widgets.messages import MessageLog
from rtkit.widgets.plot import LivePlot
from rtkit.widgets.publisher import Publisher
from rtkit.widgets.token import TokenInspector


class Dashboard(w.VBox):  # type: ignore[misc]
    """A connection panel, a publisher, a message log and, when asked for, a live plot, a
    token inspector and a fault panel. ``close()`` stops them all."""

    def __init__(self, parts: dict[str, LiveWidget]) -> None:
        self.parts = parts
        rows: list[Any] = [w.HBox([parts["connection"], parts["publisher"]])]
        rows += [parts[k] for k in ("log", "plot", "token", "faults") if k in parts]
        super().__init__(rows)
        self.add_class("rtkit-dashboard")

    def close(self) -> None:
        for part in self.parts.values():
            part.close()
        super().close()


async def dashboard(client: Client, channel: str = "demo", *,
                    fields: Sequence[str] | None = None, proxy: FaultProxy | None = None,
                    server: Any = None, rows: int = 10) -> Dashboard:
    """Lay out the main widgets for ``client`` on ``channel``: ``fields`` adds a live plot
    of those data keys; ``proxy`` a fault panel; a token client gets a token inspector."""
    ch = client.channel(channel)
    parts: dict[str, LiveWidget] = {
        "connection": ConnectionPanel(client),
        "publisher": Publisher(client, channel=channel),
        "log": await MessageLog(ch, rows=rows).start(),
    }
    if fields:
        parts["plot"] = await LivePlot(ch, list(fields)).start()
    if client.token_source is not None:
        parts["token"] = TokenInspector(client, server=server)
    if proxy is not None:
        parts["faults"] = FaultPanel(proxy)
    return Dashboard(parts)
