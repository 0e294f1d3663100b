"""Stored messages: each channel's history and de-duplication ids, within memory budgets.

A channel keeps every message for at least ``connection_state_ttl`` (the continuity window)
and at most ``retention``, within ``max_channel_history_bytes`` per channel and
``max_history_bytes`` for the whole broker (:class:`Ledger`). When a budget is exceeded the
oldest message goes first: the channel's own oldest for its budget, the oldest in the whole
broker for the global one. An evicted message's *id* stays (a few hundred bytes, within an
extra half of the channel's budget) until the continuity window has passed, so a publish
retried after a reconnect is still recognised as a duplicate.

Intervals use the monotonic ``at`` the broker passes in; message timestamps are wall time.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Final

from rtkit.core.config import ID_OVERHEAD, RECORD_OVERHEAD

_seq = itertools.count()


#: One stored message: ``(serial, wall timestamp in ms, monotonic arrival time in s,
#: de-duplication key or None, encoded JSON object, its size in bytes)``.
#:
#: A plain tuple on purpose: CPython's garbage collector stops tracking a tuple that holds only
#: numbers and strings, so hundreds of thousands of stored messages add nothing to its full
#: collections (objects with slots would, a pause of 100+ ms every few seconds under load).
Record = tuple[int, int, float, "str | None", str, int]
SERIAL: Final = 0
TIMESTAMP: Final = 1
AT: Final = 2
KEY: Final = 3
FRAGMENT: Final = 4
SIZE: Final = 5


def record_cost(record: Record) -> int:
    key = record[KEY]
    return record[SIZE] + RECORD_OVERHEAD + (len(key) if key else 0)


def id_cost(key: str) -> int:
    return ID_OVERHEAD + len(key)


class Ledger:
    """Bytes held by every channel's store, and which store holds the oldest message."""

    def __init__(self, budget: int, window: float) -> None:
        self.budget = budget
        self.window = window  # connection_state_ttl: evicting younger than this loses continuity
        self.bytes = 0
        self.evicted = 0  # messages evicted by a budget
        self.evicted_early = 0  # ... of them younger than the continuity window
        # (oldest message's arrival time, tie-break, store): a lower bound per store, checked
        # when popped, so a store needs one entry whatever happens to it in between.
        self._heap: list[tuple[float, int, Store]] = []

    def track(self, store: Store) -> None:
        if not store.in_heap and store.records:
            store.in_heap = True
            heapq.heappush(self._heap, (store.records[0][AT], next(_seq), store))

    def enforce(self, now: float) -> None:
        """Evict the oldest messages of the whole broker until within the budget."""
        heap = self._heap
        while self.bytes > self.budget and heap:
            at, _, store = heap[0]
            if not store.records:
                heapq.heappop(heap)
                store.in_heap = False
                continue
            if store.records[0][AT] != at:  # the entry was stale: put the store back in place
                heapq.heapreplace(heap, (store.records[0][AT], next(_seq), store))
                continue
            store.evict_oldest(now)
            if store.records:
                heapq.heapreplace(heap, (store.records[0][AT], next(_seq), store))
            else:
                heapq.heappop(heap)
                store.in_heap = False
        # Ids alone (messages already evicted) are bounded by each channel's budget and by time.


class Store:
    """One channel's messages in serial order (consecutive serials) and its dedup index."""

    __slots__ = ("budget", "bytes", "dedup", "id_bytes", "ids", "in_heap", "ledger",
                 "message_bytes", "records", "retention", "window")

    def __init__(self, ledger: Ledger, budget: int, retention: float, window: float) -> None:
        self.ledger = ledger
        self.budget = budget
        self.retention = retention
        self.window = window
        self.records: deque[Record] = deque()
        # Records whose message was evicted by a budget, kept for their id (oldest first).
        self.ids: deque[Record] = deque()
        self.dedup: dict[str, Record] = {}
        self.bytes = 0  # messages and ids, as counted by the ledger
        self.message_bytes = 0  # messages only: within ``budget``
        self.id_bytes = 0  # ids of evicted messages only: within half of ``budget``
        self.in_heap = False

    def __len__(self) -> int:
        return len(self.records)

    # -- adding and finding

    def append(self, record: Record, now: float) -> None:
        self.records.append(record)
        if record[KEY] is not None:
            self.dedup[record[KEY]] = record
        cost = record_cost(record)
        self._add(cost)
        self.message_bytes += cost
        self.ledger.track(self)
        self.expire(now)
        # Over budget: evict the oldest message (never the one just published); its id stays,
        # within an extra half of the budget, so ids never crowd out the messages themselves.
        while self.message_bytes > self.budget and len(self.records) > 1:
            self.evict_oldest(now)
        while self.id_bytes > self.budget // 2 and self.ids:
            self._forget(self.ids.popleft())
        self.ledger.enforce(now)
        while self.ledger.bytes > self.ledger.budget and self.ids:
            self._forget(self.ids.popleft())  # no message left to evict: ids go too

    def prepend(self, records: list[Record]) -> None:
        """Put older messages (consecutive serials ending just before the first one) in
        front: a node's copy of a shared channel being filled from its backplane. Budgets
        are enforced by the next append or sweep."""
        for record in reversed(records):
            self.records.appendleft(record)
            cost = record_cost(record)
            self._add(cost)
            self.message_bytes += cost
        self.ledger.track(self)

    def find(self, key: str) -> Record | None:
        """The message published with this de-duplication key, if still known."""
        return self.dedup.get(key)

    def first_serial(self) -> int | None:
        return self.records[0][SERIAL] if self.records else None

    def get(self, serial: int) -> Record | None:
        records = self.records
        if not records:
            return None
        i = serial - records[0][SERIAL]
        return records[i] if 0 <= i < len(records) else None

    def range(self, first: int, last: int, limit: int) -> list[Record]:
        """Up to ``limit`` records with ``first <= serial <= last``, oldest first."""
        records = self.records
        if not records or last < first:
            return []
        base = records[0][SERIAL]
        start = max(0, first - base)
        stop = min(len(records), last - base + 1, start + limit)
        return [records[i] for i in range(start, stop)]

    # -- eviction

    def expire(self, now: float) -> None:
        """Drop what is older than the retention time, and ids older than the window."""
        records, ids = self.records, self.ids
        oldest = now - self.retention
        while records and records[0][AT] < oldest:
            record = records.popleft()
            cost = record_cost(record)
            self._add(-cost)
            self.message_bytes -= cost
            self._drop_key(record)
        oldest = now - self.window
        while ids and ids[0][AT] < oldest:
            self._forget(ids.popleft())

    def evict_oldest(self, now: float) -> None:
        """A budget is exceeded: evict the oldest message, keeping its id while it may still
        be retried (younger than the continuity window)."""
        record = self.records.popleft()
        cost = record_cost(record)
        self._add(-cost)
        self.message_bytes -= cost
        self.ledger.evicted += 1
        young = now - record[AT] < self.window
        if young:
            self.ledger.evicted_early += 1
        key = record[KEY]
        if key is not None and young:
            # Free the message; keep a record of its id only (same serial and timestamp).
            kept: Record = (record[SERIAL], record[TIMESTAMP], record[AT], key, "", 0)
            self.ids.append(kept)
            if self.dedup.get(key) is record:
                self.dedup[key] = kept
            self.id_bytes += id_cost(key)
            self._add(id_cost(key))
        else:
            self._drop_key(record)

    def clear(self) -> None:
        """Forget everything (the channel is being reclaimed)."""
        self._add(-self.bytes)
        self.id_bytes = self.message_bytes = 0
        self.records.clear()
        self.ids.clear()
        self.dedup.clear()

    def _forget(self, record: Record) -> None:
        key = record[KEY]
        assert key is not None
        self.id_bytes -= id_cost(key)
        self._add(-id_cost(key))
        self._drop_key(record)

    def _drop_key(self, record: Record) -> None:
        key = record[KEY]
        if key is not None and self.dedup.get(key) is record:
            del self.dedup[key]

    def _add(self, n: int) -> None:
        self.bytes += n
        self.ledger.bytes += n
