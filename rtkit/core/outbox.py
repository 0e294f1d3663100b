"""Publishes waiting for their ack, sans I/O.

Every publish gets a message id on the client, so sending it again after a reconnect is
idempotent: the broker's dedup window lets it into the channel exactly once. A publish is
encoded when it is made (a dict the application changes afterwards is not affected), and
waits here, in order, until it is acked. The outbox is bounded in bytes, not by a small
count: a client offline for a while keeps everything it publishes up to the budget.

Sends are paced by a token bucket that mirrors the broker's announced publish rate, so a
backlog sent after a reconnect does not run into the broker's rate limit.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from rtkit.core.frames import Ref, dumps
from rtkit.core.timing import TokenBucket
from rtkit.errors import LimitExceeded

#: Default budget of queued publishes, in bytes of encoded frames (16 MiB).
DEFAULT_MAX_QUEUED_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Entry:
    """One publish: ``body`` is the frame's JSON fields except the action and the ref."""

    seq: int
    channel: str
    id: str
    body: str
    size: int
    op: int
    ref: Ref | None = None  # the ref of the current send; None while unsent
    sends: int = 0
    deadline: float | None = None

    def frame(self, ref: Ref) -> str:
        return f'{{"action":"publish","ref":{dumps(ref)},{self.body}}}'


class Outbox:
    """Publishes in the order they were made, each unsent or sent and awaiting its ack."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
                 max_count: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.bytes = 0
        self.resent = 0
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._by_ref: dict[Ref, Entry] = {}
        self._by_op: dict[int, Entry] = {}
        self._unsent: OrderedDict[int, Entry] = OrderedDict()
        self._seq = itertools.count()
        self._bucket: TokenBucket | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    def add(self, channel: str, name: str, data_json: str, msg_id: str, op: int,
            deadline: float | None = None) -> Entry:
        """Queue a publish (``data_json`` already encoded); raises :class:`LimitExceeded`
        (42905) when the outbox is over its budget."""
        body = (f'"channel":{dumps(channel)},"name":{dumps(name)},"data":{data_json},'
                f'"id":{dumps(msg_id)}')
        size = len(body) + 40
        if self._entries and self.bytes + size > self.max_bytes:
            raise LimitExceeded(f"publish queue full ({len(self._entries)} publishes, "
                                f"{self.bytes} bytes waiting; the budget is "
                                f"{self.max_bytes} bytes)", code=42905)
        if self.max_count is not None and len(self._entries) >= self.max_count:
            raise LimitExceeded(f"publish queue full ({self.max_count} waiting)", code=42905)
        entry = Entry(next(self._seq), channel, msg_id, body, size, op, deadline=deadline)
        self._entries[entry.seq] = entry
        self._unsent[entry.seq] = entry
        self._by_op[op] = entry
        self.bytes += size
        return entry

    # ---------------------------------------------------------------- pacing

    def pace(self, rate: float | None, burst: int | None, now: float) -> None:
        """Mirror the broker's publish rate limit (from ``connected``), with a margin."""
        if not rate or not burst:
            self._bucket = None
            return
        self._bucket = TokenBucket(rate * 0.9, max(1.0, burst * 0.5), updated=now)

    def charge(self) -> None:
        """Another frame went out (an attach, a heartbeat...): the broker's rate counts
        every frame, so the pacing does too."""
        bucket = self._bucket
        if bucket is not None:
            bucket.tokens = max(-bucket.burst, bucket.tokens - 1.0)

    def next_send_at(self, now: float) -> float | None:
        """When the pacing allows the next send, if something waits unsent."""
        if not self._unsent:
            return None
        bucket = self._bucket
        if bucket is None:
            return now
        bucket.take(now, 0.0)  # refill
        if bucket.tokens + 1e-9 >= 1.0:
            return now
        return now + max(0.001, (1.0 - bucket.tokens) / bucket.rate)

    def take_sendable(self, now: float) -> list[Entry]:
        """The unsent entries the pacing allows now, in publish order (mark each sent)."""
        out: list[Entry] = []
        bucket = self._bucket
        for seq in list(self._unsent):
            if bucket is not None and not bucket.take(now):
                break
            out.append(self._unsent.pop(seq))
        return out

    # ---------------------------------------------------------------- sent / answered

    def mark_sent(self, entry: Entry, ref: Ref) -> None:
        entry.ref = ref
        entry.sends += 1
        if entry.sends > 1:
            self.resent += 1
        self._by_ref[ref] = entry

    def by_ref(self, ref: Ref) -> Entry | None:
        return self._by_ref.get(ref)

    def by_op(self, op: int) -> Entry | None:
        return self._by_op.get(op)

    def remove(self, entry: Entry) -> None:
        """The publish is answered (or abandoned): forget it."""
        if self._entries.pop(entry.seq, None) is not None:
            self.bytes -= entry.size
        self._unsent.pop(entry.seq, None)
        self._by_op.pop(entry.op, None)
        if entry.ref is not None:
            self._by_ref.pop(entry.ref, None)

    def retry(self, entry: Entry) -> None:
        """Send ``entry`` again later (refused by a transient limit), keeping its place."""
        if entry.ref is not None:
            self._by_ref.pop(entry.ref, None)
            entry.ref = None
        if entry.seq in self._entries:
            self._unsent[entry.seq] = entry
            self._unsent = OrderedDict(sorted(self._unsent.items()))

    def transport_lost(self) -> None:
        """Sent but unacked publishes must be sent again, in order, on the next link."""
        for entry in self._entries.values():
            entry.ref = None
        self._by_ref.clear()
        self._unsent = OrderedDict(self._entries)

    def take_all(self, unsent_only: bool = False) -> list[Entry]:
        """Remove and return every entry, or every one not sent on the current link (to
        fail them)."""
        if unsent_only:
            entries = [e for e in self._entries.values() if e.ref is None]
            for entry in entries:
                self.remove(entry)
            return entries
        entries = list(self._entries.values())
        self._entries.clear()
        self._by_ref.clear()
        self._by_op.clear()
        self._unsent.clear()
        self.bytes = 0
        return entries
