"""ClusterView: the nodes of a cluster, their connections and message rates, and where a set
of clients is connected, updating live.

It reads only public objects: ``server.stats()["cluster"]`` of any running node (each node
sees the whole cluster through the backplane) and, for clients, ``client.current_url`` and
``client.state``. :func:`cluster_rows` is the view-model, testable without a browser.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import bqplot as bq
import ipywidgets as w
import numpy as np

from rtkit.widgets.base import TABLE_CSS, LiveWidget

COLUMNS = ["node", "url", "status", "connections", "your clients", "publishes/s",
           "messages in/s"]


def cluster_rows(stats: dict[str, Any], clients: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """One row per node from a node's ``stats()["cluster"]``: its id, URL, status (``alive``;
    ``silent`` when its record is older than half the node timeout, compared with the
    freshest; ``this node`` for the reporting one), connections, how many of ``clients``
    are connected to it, and its publish and delivery rates (messages a second)."""
    nodes = stats.get("nodes", [])
    freshest = max((n.get("seen_ms") or 0 for n in nodes), default=0)
    half = float(stats.get("node_timeout", 15.0)) * 500
    by_url: dict[str, int] = {}
    for c in clients:
        if getattr(c.state, "value", c.state) == "connected":
            by_url[c.current_url] = by_url.get(c.current_url, 0) + 1
    rows = []
    for n in nodes:
        silent = freshest - (n.get("seen_ms") or 0) > half
        rows.append({
            "node": n["node"], "url": n.get("url") or "",
            "status": "silent" if silent else "alive",
            "connections": int(n.get("connections", 0)),
            "your clients": by_url.get(n.get("url") or "", 0),
            "publishes/s": round(float(n.get("publish_rate", 0.0)), 1),
            "messages in/s": round(float(n.get("receive_rate", 0.0)), 1),
        })
    return rows


class ClusterView(LiveWidget):
    """The cluster seen from ``servers`` (the first one still running answers; pass every
    node you started so the view survives one being stopped): a table of nodes and a bar
    chart of where ``clients`` are connected."""

    def __init__(self, servers: Any, clients: Sequence[Any] = (), rate: float = 2.0) -> None:
        self.servers = list(servers) if isinstance(servers, list | tuple) else [servers]
        self.clients = list(clients)
        self.headline = w.HTML()
        self.table = w.HTML()
        self.x_scale = bq.OrdinalScale()
        self.y_scale = bq.LinearScale(min=0.0, max=max(1.0, float(len(self.clients))))
        self.bars = bq.Bars(x=np.array([], dtype=str), y=np.zeros(0),
                            scales={"x": self.x_scale, "y": self.y_scale}, colors=["#0d6efd"])
        self.figure = bq.Figure(
            marks=[self.bars], animation_duration=0, title="your clients, by node",
            axes=[bq.Axis(scale=self.x_scale, label="node"),
                  bq.Axis(scale=self.y_scale, side="left", label="clients",
                          tick_format="d")],
            layout={"height": "220px", "width": "100%"})
        self.rows: list[dict[str, Any]] = []
        super().__init__([self.headline, self.table, self.figure], rate=rate)
        self.add_class("rtkit-cluster-view")
        self.refresh()

    def tick(self) -> None:
        self.changed()  # the counters change on the nodes: look again at the bounded rate

    def _stats(self) -> dict[str, Any] | None:
        for server in self.servers:
            if getattr(server, "running", False):
                try:
                    stats: dict[str, Any] = server.stats()
                except RuntimeError:  # stopped meanwhile
                    continue
                return stats.get("cluster")
        return None

    def render(self) -> None:
        cluster = self._stats()
        if cluster is None:
            self.headline.value = "<i>no running node with a backplane</i>"
            return
        self.rows = rows = cluster_rows(cluster, self.clients)
        gaps, epochs = cluster.get("backplane_gaps", 0), cluster.get("backplane_epochs", 0)
        self.headline.value = (
            f"<b>{len(rows)}</b> nodes on {html.escape(str(cluster.get('backplane')))} · "
            f"seen from node <code>{html.escape(str(cluster.get('node')))}</code> · "
            f"gaps repaired there: {gaps} · history lost: {epochs}")
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in COLUMNS) + "</tr>"
            for r in rows)
        head = "".join(f"<th>{c}</th>" for c in COLUMNS)
        self.table.value = (f'{TABLE_CSS}<table class="rtkit-table rtkit-cluster">'
                            f"<tr>{head}</tr>{body}</table>")
        with self.figure.hold_sync():
            self.bars.x = np.array([r["node"] for r in rows], dtype=str)
            self.bars.y = np.array([r["your clients"] for r in rows], dtype=float)
