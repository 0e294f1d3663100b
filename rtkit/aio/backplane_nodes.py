"""The node's record on the Redis backplane, and the cluster as this node sees it.

Part of the backplane driver (:class:`~rtkit.aio.backplane.RedisBackplane`): the record is
refreshed every ``node_timeout / 3`` with the node's counters; the same round removes the
nodes that stopped refreshing theirs (and their members), starts a position check of every
channel followed and pings the live feed. The records read give ``server.stats()["cluster"]``
(:meth:`NodeRecord.describe`), with each node's message rates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from rtkit.aio import redis_scripts as rs
from rtkit.aio.backplane_feed import ERRORS

if TYPE_CHECKING:
    from rtkit.aio.backplane import RedisBackplane

log = logging.getLogger("rtkit.backplane")


class NodeRecord:
    """This node's record in Redis, and the records of the others."""

    def __init__(self, backplane: RedisBackplane) -> None:
        self.backplane = backplane
        self.broker = backplane.broker
        self.node_id = backplane.node_id
        self.node_timeout = backplane.node_timeout
        self.started = time.time()
        self._registered = False
        #: The nodes seen at the last refresh: node -> record (``seen``, ``url``, counters).
        self.nodes: dict[str, dict[str, Any]] = {}
        self.rates: dict[str, dict[str, float]] = {}
        self._previous: tuple[int, dict[str, dict[str, Any]]] | None = None

    async def refresh_loop(self) -> None:
        bp = self.backplane
        period = self.node_timeout / 3
        while True:
            await asyncio.sleep(period * (0.9 + 0.2 * random.random()))
            try:
                await asyncio.wait_for(self.heartbeat(), self.node_timeout)
            except ERRORS as exc:
                bp.stats["backplane_errors"] += 1
                log.warning("could not refresh this node's record: %s", exc)
                continue
            bp.view.check()
            await bp.feed.check_alive(self.node_timeout)
            self.broker.schedule_flush()

    def _info(self) -> str:
        broker = self.broker
        stats = broker.core.stats
        return json.dumps({
            "url": broker.url, "connections": len(broker.core.sessions),
            "published": stats["published"], "received": stats.get("backplane_received", 0),
            "delivered_frames": stats["delivered_frames"], "started": self.started,
            "backplane_batches": self.backplane.stats["backplane_batches"],
        })

    async def heartbeat(self, remove: bool = False) -> None:
        """Refresh this node's record (or ``remove`` it, and its members) and read the
        others'."""
        bp = self.backplane
        result = await bp.call(
            "heartbeat", [rs.NODES, rs.NODE_INFO],
            [self.node_id, self._info(), int(self.node_timeout * 1000), rs.PREFIX,
             "1" if remove else "0"])
        if remove:
            return
        now_ms, was = int(result[0]), result[1] == 1
        rows: dict[str, dict[str, Any]] = {}
        for i in range(2, len(result) - 2, 3):
            try:
                info = json.loads(result[i + 2])
            except ValueError:
                info = {}
            rows[result[i].decode()] = {**info, "seen": int(float(result[i + 1]))}
        self._rates(now_ms, rows)
        self.nodes = rows
        bp.ops.nodes_seen(rows, now_ms, was_missing=self._registered and not was)
        self._registered = True
        self.broker.schedule_flush()

    def _rates(self, now_ms: int, rows: dict[str, dict[str, Any]]) -> None:
        """Messages a second per node, from the counters of two refreshes."""
        prev = self._previous
        self._previous = (now_ms, rows)
        if prev is None or now_ms <= prev[0]:
            return
        seconds = (now_ms - prev[0]) / 1000
        rates = {}
        for node, row in rows.items():
            old = prev[1].get(node)
            if old is None:
                continue
            rates[node] = {k: max(0.0, (row.get(k, 0) - old.get(k, 0)) / seconds)
                           for k in ("published", "received", "delivered_frames")}
        self.rates = rates

    def describe(self) -> dict[str, Any]:
        """The cluster as this node sees it (for ``server.stats()["cluster"]``)."""
        bp = self.backplane
        nodes = []
        for node, row in sorted(self.nodes.items()):
            rate = self.rates.get(node, {})
            nodes.append({
                "node": node, "url": row.get("url"), "self": node == self.node_id,
                "connections": row.get("connections", 0),
                "published": row.get("published", 0), "received": row.get("received", 0),
                "publish_rate": rate.get("published", 0.0),
                "receive_rate": rate.get("received", 0.0),
                "seen_ms": row.get("seen"),
            })
        return {
            "node": self.node_id, "backplane": _redact(bp.url), "connected": bp.connected,
            "node_timeout": self.node_timeout, "following": len(bp.following),
            "nodes": nodes, **bp.stats, **bp.view.stats,
        }


def _redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"
