"""The delivery audit: did every acked message reach every subscriber once, in order?"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rtkit.aio.channel import Channel
from rtkit.aio.subscription import PublishResult, Subscription
from rtkit.core.continuity import ContinuityLoss
from rtkit.core.frames import Message
from rtkit.errors import RtkitError

COLUMNS = ["channel", "subscriber", "published", "acked", "failed", "delivered",
           "duplicates_dropped", "duplicates_seen", "lost", "out_of_order", "continuity_lost"]


@dataclass
class _Watch:
    channel: Channel
    label: str
    start_serial: int
    ids: set[str] = field(default_factory=set)
    delivered: int = 0
    duplicates_seen: int = 0
    out_of_order: int = 0
    last_serial: int = 0
    losses: list[ContinuityLoss] = field(default_factory=list)
    subscription: Subscription | None = None


class DeliveryAudit:
    """Counts, per channel and subscriber: published, acked, delivered, duplicates dropped
    (by the client) and seen (by the application), lost, out of order, continuity lost.

    Publish through :meth:`publish` and subscribe through :meth:`watch` *before* publishing;
    :meth:`report` returns a pandas DataFrame, :meth:`totals` a dict.
    """

    def __init__(self) -> None:
        self.published: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.acked: dict[str, dict[str, int]] = defaultdict(dict)  # channel -> id -> serial
        self.errors: list[RtkitError] = []
        self._watches: list[_Watch] = []

    async def publish(self, channel: Channel, name: str, data: Any = None,
                      **kwargs: Any) -> PublishResult:
        """Publish on ``channel`` and record the outcome (errors are recorded, then raised)."""
        self.published[channel.name] += 1
        try:
            result = await channel.publish(name, data, **kwargs)
        except RtkitError as exc:
            self.failed[channel.name] += 1
            self.errors.append(exc)
            raise
        self.acked[channel.name][result.id] = result.serial
        return result

    async def watch(self, channel: Channel, label: str | None = None) -> Subscription:
        """Subscribe to ``channel`` and record every delivery (``label`` names the row)."""
        w = _Watch(channel, label or f"{channel.client.client_id or 'sub'}#{len(self._watches)}",
                   channel.serial)
        self._watches.append(w)
        channel.on_continuity_lost(w.losses.append)

        def record(msg: Message) -> None:
            w.delivered += 1
            if msg.id in w.ids:
                w.duplicates_seen += 1
            w.ids.add(msg.id)
            if msg.serial <= w.last_serial:
                w.out_of_order += 1
            w.last_serial = max(w.last_serial, msg.serial)

        w.subscription = await channel.subscribe(record)
        w.start_serial = max(w.start_serial, channel.serial) if channel.epoch else 0
        return w.subscription

    def _lost(self, w: _Watch) -> int:
        acked = self.acked.get(w.channel.name, {})
        return sum(1 for mid, serial in acked.items()
                   if serial > w.start_serial and mid not in w.ids)

    def report(self) -> pd.DataFrame:
        """One row per watched subscriber (and one per channel only published to)."""
        rows = []
        for w in self._watches:
            name = w.channel.name
            rows.append({
                "channel": name, "subscriber": w.label,
                "published": self.published.get(name, 0),
                "acked": len(self.acked.get(name, {})),
                "failed": self.failed.get(name, 0),
                "delivered": w.delivered,
                "duplicates_dropped": w.channel.duplicates_dropped,
                "duplicates_seen": w.duplicates_seen,
                "lost": self._lost(w), "out_of_order": w.out_of_order,
                "continuity_lost": len(w.losses),
            })
        watched = {w.channel.name for w in self._watches}
        for name in self.published:
            if name not in watched:
                rows.append({"channel": name, "subscriber": "", "published": self.published[name],
                             "acked": len(self.acked.get(name, {})),
                             "failed": self.failed.get(name, 0), "delivered": 0,
                             "duplicates_dropped": 0, "duplicates_seen": 0, "lost": 0,
                             "out_of_order": 0, "continuity_lost": 0})
        return pd.DataFrame(rows, columns=COLUMNS).astype(
            {c: "int64" for c in COLUMNS[2:]})

    def totals(self) -> dict[str, int]:
        """Column sums of :meth:`report` (0s when nothing was recorded)."""
        frame = self.report()
        return {c: int(frame[c].sum()) for c in COLUMNS[2:]}
