"""Per-stream sequence numbers, sans I/O: gaps and duplicates in a public feed.

Many feeds number their records: an exchange per product (``sequence``), Bluesky's Jetstream
by time (``time_us``, a cursor), Wikimedia per partition (``meta.offset``). A
:class:`SequenceTracker` remembers the last number seen per key (``sequence_key``, e.g. the
product) and judges each new record:

- the next number (or any larger one, for cursors that only increase): deliver it;
- a larger number than the next, on a contiguous sequence: deliver it and report a
  :class:`Gap` (records were missed: the ones between ``last_seen`` and ``next_seen``);
- a number already passed: a duplicate (or a stale replay); drop it and count it.

Gaps and duplicates are each reported once, when the record that reveals them arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

Extractor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Gap:
    """Records of one stream were missed: after ``last_seen`` the next number received was
    ``next_seen``. ``key`` names the stream (None when the feed has one sequence); ``at`` is
    when the gap was noticed (seconds since the epoch)."""

    key: Hashable
    last_seen: int
    next_seen: int
    at: float
    reason: str = "sequence gap"

    @property
    def missing(self) -> int:
        """How many records were missed (on a contiguous sequence)."""
        return self.next_seen - self.last_seen - 1

    @property
    def first_lost(self) -> int:
        """The first number missed (as :class:`rtkit.ContinuityLoss` names it)."""
        return self.last_seen + 1

    def __str__(self) -> str:
        scope = f"{self.key}: " if self.key is not None else ""
        return (f"{scope}{self.missing} missed after {self.last_seen} "
                f"(next received: {self.next_seen})")


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A record numbered ``sequence`` arrived after ``last_seen``, which is not below it: it
    was dropped (a repeat, or a stale record from a replay)."""

    key: Hashable
    sequence: int
    last_seen: int
    at: float


def field(path: str | Extractor | None) -> Extractor | None:
    """A getter for a (dotted) field of a record, or ``path`` itself when it is callable."""
    if path is None or callable(path):
        return path
    if not isinstance(path, str) or not path:
        raise TypeError("a field is named by a non-empty string or given as a callable")
    keys = path.split(".")
    if len(keys) == 1:
        key = keys[0]

        def get_one(record: Any) -> Any:
            return record.get(key) if isinstance(record, dict) else None
        return get_one

    def get(record: Any) -> Any:
        for k in keys:
            if not isinstance(record, dict):
                return None
            record = record.get(k)
        return record
    return get


def as_number(value: Any) -> int | None:
    """A sequence number: an int (not a bool) or a string of decimal digits; else None."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return None


class SequenceTracker:
    """Judges records by their sequence number, per key. ``contiguous=False`` is for numbers
    that only increase (timestamps, cursors): then only repeats are detected, not gaps."""

    def __init__(self, sequence: str | Extractor, key: str | Extractor | None = None,
                 contiguous: bool = True, keep_gaps: int = 1000) -> None:
        get_sequence = field(sequence)
        assert get_sequence is not None
        self._sequence: Extractor = get_sequence
        self._key = field(key)
        self.contiguous = contiguous
        #: The last number seen, per key.
        self.last: dict[Hashable, int] = {}
        #: The latest gaps (at most ``keep_gaps``), oldest first.
        self.gaps: deque[Gap] = deque(maxlen=keep_gaps)
        self.gap_count = 0
        self.missing = 0  # records missed, summed over every gap
        self.duplicates = 0

    def check(self, record: Any, now: float) -> Gap | Duplicate | None:
        """Judge ``record``: None (deliver), a :class:`Gap` (deliver, and report it) or a
        :class:`Duplicate` (drop it). Records without a number are always delivered."""
        number = as_number(self._sequence(record))
        if number is None:
            return None
        key = self._key(record) if self._key is not None else None
        if not isinstance(key, Hashable):
            key = repr(key)
        last = self.last.get(key)
        if last is None:
            self.last[key] = number
            return None
        if number <= last:
            self.duplicates += 1
            return Duplicate(key, number, last, now)
        self.last[key] = number
        if self.contiguous and number > last + 1:
            gap = Gap(key, last, number, now)
            self.gaps.append(gap)
            self.gap_count += 1
            self.missing += gap.missing
            return gap
        return None
