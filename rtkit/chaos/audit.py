"""The delivery audit: did every acked message reach every subscriber once, in order?

An acked message that a subscriber has not received yet is **pending**, not lost: during an
outage the pending count rises, and after the resume it falls back as the broker replays
what was missed. A message is **lost** only when it can no longer arrive, and then for good:

- the subscriber's channel moved past its serial without delivering it (after a continuity
  loss, the channel continues from a later serial);
- the channel's epoch changed (the broker restarted, or the channel was recreated): every
  message pending then is lost;
- the audit was closed (:meth:`DeliveryAudit.close`): whatever is still pending is lost.

A :class:`rtkit.Feed` is watched the same way. Nobody publishes to it through the audit, so
nothing is pending; its gaps are its continuity losses, and the records a gap skipped are
lost (a gap knows exactly how many: :attr:`rtkit.Gap.missing`).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rtkit.aio.channel import Channel
from rtkit.aio.subscription import PublishResult, Subscription
from rtkit.core.continuity import ContinuityLoss
from rtkit.core.frames import Message
from rtkit.core.sequence import Gap
from rtkit.errors import RtkitError

COLUMNS = ["channel", "subscriber", "published", "acked", "failed", "delivered", "pending",
           "lost", "duplicates_dropped", "duplicates_seen", "out_of_order", "continuity_lost"]
#: Delivered message ids remembered per subscriber (to spot duplicates and acks that arrive
#: after their message): enough for minutes of a fast stream, bounded for hours of it.
ID_WINDOW = 50_000


@dataclass
class _Watch:
    channel: Channel
    label: str
    start_serial: int
    epoch: str | None = None
    delivered: int = 0
    duplicates_seen: int = 0
    out_of_order: int = 0
    last_serial: int = 0
    pending: dict[str, int] = field(default_factory=dict)  # acked, not yet here: id -> serial
    lost: set[str] = field(default_factory=set)
    missed: int = 0  # records a feed's gaps skipped (never published through the audit)
    losses: list[ContinuityLoss | Gap] = field(default_factory=list)
    recent: deque[str] = field(default_factory=deque)
    recent_ids: set[str] = field(default_factory=set)
    subscription: Subscription | None = None
    stop_listening: Callable[[], Any] | None = None

    def check_epoch(self) -> None:
        """A new epoch (the broker restarted): what was pending will never arrive, and
        serials start again."""
        epoch = self.channel.epoch
        if epoch is not None and epoch != self.epoch:
            if self.epoch is not None:
                self.give_up(list(self.pending))
                self.start_serial = self.last_serial = 0
            self.epoch = epoch

    def record(self, msg: Message) -> None:
        self.check_epoch()
        self.delivered += 1
        if msg.id in self.recent_ids:
            self.duplicates_seen += 1
        else:
            self.recent.append(msg.id)
            self.recent_ids.add(msg.id)
            if len(self.recent) > ID_WINDOW:
                self.recent_ids.discard(self.recent.popleft())
        if msg.serial <= self.last_serial:
            self.out_of_order += 1
        self.last_serial = max(self.last_serial, msg.serial)
        self.pending.pop(msg.id, None)
        self.lost.discard(msg.id)  # only after a broker restart can a "lost" one turn up

    def acked(self, result: PublishResult) -> None:
        if result.serial > self.start_serial and result.id not in self.recent_ids:
            self.pending[result.id] = result.serial

    def on_loss(self, loss: ContinuityLoss | Gap) -> None:
        self.losses.append(loss)
        if isinstance(loss, Gap):  # a feed's gap: it says how many records it skipped
            self.missed += loss.missing
        self.check_epoch()

    def settle(self) -> None:
        """Move to ``lost`` what can no longer arrive: serials this subscriber has passed,
        and, after a continuity loss, serials the channel has skipped."""
        self.check_epoch()
        frontier = max(self.last_serial, self.channel.serial if self.losses else 0)
        self.give_up([mid for mid, serial in self.pending.items() if serial <= frontier])

    def give_up(self, ids: list[str]) -> None:
        for mid in ids:
            del self.pending[mid]
            self.lost.add(mid)


class DeliveryAudit:
    """Counts, per channel and subscriber: published, acked, failed, delivered, pending (acked,
    not received yet), lost (never to arrive: see the module docstring), duplicates dropped
    (by the client) and seen (by the application), out of order, continuity losses. Watch
    channels or :class:`rtkit.Feed` objects (a feed's gaps count as continuity losses, the
    records they skipped as lost).

    Subscribe through :meth:`watch`, then publish through :meth:`publish`; :meth:`report`
    returns a pandas DataFrame, :meth:`totals` a dict, :meth:`settle` waits until what was
    acked has arrived, :meth:`close` ends the audit (what is still pending is then lost).
    Memory stays bounded for endless streams: only pending messages and a window of recent
    ids are kept.
    """

    def __init__(self) -> None:
        self.published: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.acked: dict[str, int] = defaultdict(int)
        self.errors: deque[RtkitError] = deque(maxlen=100)
        self.closed = False
        self._watches: list[_Watch] = []

    async def publish(self, channel: Channel, name: str, data: Any = None,
                      **kwargs: Any) -> PublishResult:
        """Publish on ``channel`` and record the outcome (errors are recorded, then raised)."""
        if self.closed:
            raise RuntimeError("this audit is closed: make a new DeliveryAudit")
        self.published[channel.name] += 1
        try:
            result = await channel.publish(name, data, **kwargs)
        except RtkitError as exc:
            self.failed[channel.name] += 1
            self.errors.append(exc)
            raise
        if not self.closed:
            self.acked[channel.name] += 1
            for w in self._watches:
                if w.channel.name == channel.name:
                    w.acked(result)
        return result

    async def watch(self, channel: Channel, label: str | None = None) -> Subscription:
        """Subscribe to ``channel`` and record every delivery (``label`` names the row).
        Messages published before the watch started are not expected."""
        if self.closed:
            raise RuntimeError("this audit is closed: make a new DeliveryAudit")
        w = _Watch(channel, label or f"{channel.client.client_id or 'sub'}#{len(self._watches)}",
                   channel.serial)
        self._watches.append(w)
        w.stop_listening = channel.on_continuity_lost(w.on_loss)
        w.subscription = await channel.subscribe(w.record)
        w.start_serial = max(w.start_serial, channel.serial) if channel.epoch else 0
        w.epoch = channel.epoch
        return w.subscription

    def close(self) -> None:
        """Stop watching; every message still pending is lost from now on (final)."""
        if self.closed:
            return
        self.closed = True
        for w in self._watches:
            w.settle()
            w.give_up(list(w.pending))
            if w.subscription is not None:
                w.subscription.close()
            if w.stop_listening is not None:
                w.stop_listening()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every message acked so far has been delivered to every watcher (or is
        lost). Raises TimeoutError after ``timeout`` seconds. New publishes do not delay it."""
        waiting = [(w, set(w.pending)) for w in self._watches]
        async with asyncio.timeout(timeout):
            while True:
                for w, ids in waiting:
                    w.settle()
                    ids.intersection_update(w.pending)
                if not any(ids for _, ids in waiting):
                    return
                await asyncio.sleep(0.02)

    def report(self) -> pd.DataFrame:
        """One row per watched subscriber (and one per channel only published to)."""
        rows = []
        for w in self._watches:
            if not self.closed:
                w.settle()
            name = w.channel.name
            rows.append({
                "channel": name, "subscriber": w.label,
                "published": self.published.get(name, 0), "acked": self.acked.get(name, 0),
                "failed": self.failed.get(name, 0), "delivered": w.delivered,
                "pending": len(w.pending), "lost": len(w.lost) + w.missed,
                "duplicates_dropped": w.channel.duplicates_dropped,
                "duplicates_seen": w.duplicates_seen, "out_of_order": w.out_of_order,
                "continuity_lost": len(w.losses),
            })
        watched = {w.channel.name for w in self._watches}
        for name in self.published:
            if name not in watched:
                rows.append({"channel": name, "subscriber": "",
                             "published": self.published[name], "acked": self.acked.get(name, 0),
                             "failed": self.failed.get(name, 0)})
        return pd.DataFrame(rows, columns=COLUMNS).fillna(0).astype(
            {c: "int64" for c in COLUMNS[2:]})

    def totals(self) -> dict[str, int]:
        """Column sums of :meth:`report` (0s when nothing was recorded)."""
        frame = self.report()
        return {c: int(frame[c].sum()) for c in COLUMNS[2:]}
