"""ClusterView without a browser: its view-model, then live on two nodes of a real Redis."""

from __future__ import annotations

from types import SimpleNamespace

import rtkit
from rtkit.widgets import ClusterView
from rtkit.widgets.cluster import cluster_rows
from tests.conftest import eventually, within

KEY = "root:" + "w" * 40


def test_rows_count_clients_per_node_and_mark_silent_nodes() -> None:
    stats = {"node_timeout": 10.0, "nodes": [
        {"node": "a1", "url": "ws://a", "connections": 4, "seen_ms": 100_000,
         "publish_rate": 12.34, "receive_rate": 99.0},
        {"node": "b2", "url": "ws://b", "connections": 1, "seen_ms": 94_000},
    ]}
    connected = SimpleNamespace(value="connected")
    clients = [SimpleNamespace(current_url="ws://a", state=connected),
               SimpleNamespace(current_url="ws://a", state=connected),
               SimpleNamespace(current_url="ws://b", state=SimpleNamespace(value="connecting"))]
    rows = cluster_rows(stats, clients)
    assert [(r["node"], r["status"], r["connections"], r["your clients"]) for r in rows] == [
        ("a1", "alive", 4, 2), ("b2", "silent", 1, 0)]
    assert rows[0]["publishes/s"] == 12.3 and rows[0]["messages in/s"] == 99.0
    assert cluster_rows({}, clients) == []


async def test_the_view_follows_clients_moving_off_a_stopped_node(redis_url: str) -> None:
    options = {"heartbeat_interval": 0.5, "node_timeout": 1.5}
    a = rtkit.serve(backplane=redis_url, root_key=KEY, **options)
    b = rtkit.serve(backplane=redis_url, root_key=KEY, **options)
    clients = [rtkit.Client(url, fallback_urls=[other], key=KEY,
                            backoff=rtkit.Backoff(base=0.1, cap=0.3))
               for url, other in ((a.url, b.url), (b.url, a.url), (b.url, a.url))]
    view = ClusterView([a, b], clients)
    try:
        for c in clients:
            await within(c.connect())

        def counts() -> dict[str, int]:
            view.refresh()
            return {r["url"]: r["your clients"] for r in view.rows}

        await eventually(lambda: counts() == {a.url: 1, b.url: 2}, what="both nodes listed")
        assert "2</b> nodes" in view.headline.value and "rtkit-cluster" in view.table.value
        assert list(view.bars.y) == [counts()[r["url"]] for r in view.rows]
        b.stop()  # its clients go to a
        await eventually(lambda: counts().get(a.url) == 3, timeout=10,
                         what="the clients of b on a")
        a.stop()
        view.refresh()
        assert "no running node" in view.headline.value
    finally:
        view.close()
        for c in clients:
            await c.close()
        a.stop()
        b.stop()
