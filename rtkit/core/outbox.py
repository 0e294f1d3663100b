"""Publishes waiting for their ack, sans I/O.

Every publish gets a message id on the client, so sending it again after a reconnect is
idempotent: the broker's dedup window makes it enter the channel exactly once. The outbox is
bounded; publishes made while disconnected wait here, in order, until the link is back.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from rtkit.core.frames import Ref
from rtkit.errors import LimitExceeded


@dataclass(slots=True)
class Entry:
    seq: int
    channel: str
    name: str
    data: Any
    id: str
    ref: Ref | None = None  # the ref of the current send; None while unsent
    sends: int = 0
    waiter: Any = field(default=None, repr=False)  # the driver's future


class Outbox:
    """Publishes in the order they were made, each unsent, or sent and awaiting its ack."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._by_ref: dict[Ref, int] = {}
        self._unsent: deque[int] = deque()
        self._seq = itertools.count()
        self.resent = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, channel: str, name: str, data: Any, msg_id: str) -> Entry:
        """Queue a publish; raises :class:`LimitExceeded` (42905) when the outbox is full."""
        if len(self._entries) >= self.limit:
            raise LimitExceeded(f"publish queue full ({self.limit} waiting)", code=42905)
        entry = Entry(next(self._seq), channel, name, data, msg_id)
        self._entries[entry.seq] = entry
        self._unsent.append(entry.seq)
        return entry

    def take_unsent(self) -> list[Entry]:
        """The entries to send now, in publish order (each must then be marked sent)."""
        out = [self._entries[seq] for seq in self._unsent if seq in self._entries]
        self._unsent.clear()
        return out

    def mark_sent(self, entry: Entry, ref: Ref) -> None:
        entry.ref = ref
        entry.sends += 1
        if entry.sends > 1:
            self.resent += 1
        self._by_ref[ref] = entry.seq

    def is_publish(self, ref: Ref) -> bool:
        return ref in self._by_ref

    def resolve(self, ref: Ref) -> Entry | None:
        """The entry answered by an ack or nack for ``ref`` (removed from the outbox)."""
        seq = self._by_ref.pop(ref, None)
        if seq is None:
            return None
        return self._entries.pop(seq, None)

    def remove(self, entry: Entry) -> None:
        self._entries.pop(entry.seq, None)
        if entry.ref is not None:
            self._by_ref.pop(entry.ref, None)

    def transport_lost(self) -> None:
        """Sent but unacked publishes must be sent again on the next connection."""
        for entry in self._entries.values():
            entry.ref = None
        self._by_ref.clear()
        self._unsent = deque(self._entries)

    def take_all(self) -> list[Entry]:
        """Remove and return every entry (to fail them)."""
        entries = list(self._entries.values())
        self._entries.clear()
        self._by_ref.clear()
        self._unsent.clear()
        return entries
