"""A public feed's frames turned into records, sans I/O: parsing, bad frames, sequences.

:class:`FeedCore` takes each raw frame (a WebSocket message or the data of a Server-Sent
Event) with the time it arrived and returns what it means, in order: :class:`FeedRecord`
objects to deliver, and :class:`~rtkit.core.sequence.Gap`,
:class:`~rtkit.core.sequence.Duplicate` and :class:`BadFrame` notices. A frame that cannot be
parsed (invalid JSON, a parse function that raises, a frame over ``max_frame_size``) is
counted and kept (its first bytes, the latest few frames) and never stops the feed.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rtkit.core.sequence import Duplicate, Extractor, Gap, SequenceTracker, field
from rtkit.errors import LimitExceeded, ProtocolError, RtkitError

Payload = str | bytes
ParseName = Literal["json", "ndjson", "jsonl", "text", "bytes"]
ParseFunction = Callable[[Any], Any]
PARSERS = ("json", "ndjson", "jsonl", "text", "bytes")


class FeedRecord:
    """One record of a feed: the parsed value in :attr:`data`, with where and when it came.

    It reads like the record itself (``record["price"]``, ``record.get("price")``,
    ``record == {"price": 1}``) and like a channel's :class:`rtkit.Message` (``data``,
    ``serial``, ``timestamp``, ``name``, ...), so widgets, recorders and audits take it.

    - ``serial``: 1, 2, 3... in the order this feed delivered its records;
    - ``timestamp``: milliseconds since the epoch, from the record's own time field when the
      feed names one (``timestamp=``), else the time it arrived;
    - ``source_time``: whether ``timestamp`` came from the record (so latency means something);
    - ``received``: when it arrived (seconds since the epoch);
    - ``name``: the SSE event type (``"message"`` on WebSockets), ``event_id`` its SSE id.
    """

    __slots__ = ("channel", "data", "event_id", "name", "received", "serial", "source_time",
                 "timestamp")
    __hash__ = None  # type: ignore[assignment]  # compares like its data, a dict

    client_id: None = None

    def __init__(self, data: Any, channel: str, serial: int, timestamp: int, received: float,
                 source_time: bool = False, name: str = "message",
                 event_id: str | None = None) -> None:
        self.data = data
        self.channel = channel
        self.serial = serial
        self.timestamp = timestamp
        self.received = received
        self.source_time = source_time
        self.name = name
        self.event_id = event_id

    @property
    def id(self) -> str:
        """A unique id within this feed (its channel and serial)."""
        return f"{self.channel}#{self.serial}"

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def get(self, key: Any, default: Any = None) -> Any:
        """``data.get(key, default)`` when the record is a dict, else ``default``."""
        return self.data.get(key, default) if isinstance(self.data, dict) else default

    def __contains__(self, key: Any) -> bool:
        return isinstance(self.data, dict | list | str) and key in self.data

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)  # the keys of a dict, the items of a list

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return True  # a record, even of empty data, is something that arrived

    def keys(self) -> Any:
        return self.data.keys()

    def values(self) -> Any:
        return self.data.values()

    def items(self) -> Any:
        return self.data.items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FeedRecord):
            return (self.channel, self.serial, self.data) == (other.channel, other.serial,
                                                              other.data)
        return bool(self.data == other)

    def __repr__(self) -> str:
        text = repr(self.data)
        if len(text) > 120:
            text = text[:119] + "…"
        return f"<FeedRecord {self.channel}#{self.serial} {text}>"


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that could not be turned into records: its first bytes (``raw``, at most the
    feed's ``keep_bytes``), its full ``size``, why (``error``) and when (``at``)."""

    raw: bytes
    size: int
    error: RtkitError
    at: float

    @property
    def truncated(self) -> bool:
        return len(self.raw) < self.size

    def text(self) -> str:
        """``raw`` as text (undecodable bytes replaced), for display."""
        return self.raw.decode("utf-8", "replace")


Output = FeedRecord | Gap | Duplicate | BadFrame


class ParseFailed(Exception):
    """Raised inside :func:`parser` functions for one bad frame; carries its error."""

    def __init__(self, error: RtkitError) -> None:
        super().__init__(error.message)
        self.error = error


def parser(parse: ParseName | ParseFunction | None) -> Callable[[Payload], list[Any]]:
    """A function from a frame to its records (a list; raises :class:`ParseFailed`).

    ``"json"``: one JSON value per frame. ``"ndjson"``/``"jsonl"``: one JSON value per
    non-empty line. ``"text"``: the frame as a string. ``"bytes"`` or None: the frame as it
    came. A callable gets the frame (str or bytes) and returns one record, None (no record)
    or a list or tuple of records.
    """
    if parse == "json":
        loads = json.loads

        def parse_json(payload: Payload) -> list[Any]:
            try:
                return [loads(payload)]
            except (ValueError, UnicodeDecodeError) as exc:
                raise ParseFailed(ProtocolError(f"invalid JSON: {exc}", code=40001)) from None
        return parse_json
    if parse in ("ndjson", "jsonl"):
        def parse_lines(payload: Payload) -> list[Any]:
            text = payload.decode() if isinstance(payload, bytes) else payload
            try:
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            except (ValueError, UnicodeDecodeError) as exc:
                raise ParseFailed(ProtocolError(f"invalid JSON line: {exc}",
                                                code=40001)) from None
        return parse_lines
    if parse == "text":
        def parse_text(payload: Payload) -> list[Any]:
            if isinstance(payload, bytes):
                try:
                    return [payload.decode()]
                except UnicodeDecodeError as exc:
                    raise ParseFailed(ProtocolError(f"not UTF-8 text: {exc}",
                                                    code=40000)) from None
            return [payload]
        return parse_text
    if parse == "bytes" or parse is None:
        return lambda payload: [payload]
    if callable(parse):
        fn = parse

        def parse_custom(payload: Payload) -> list[Any]:
            try:
                result = fn(payload)
            except json.JSONDecodeError as exc:
                raise ParseFailed(ProtocolError(f"invalid JSON: {exc}", code=40001)) from exc
            except Exception as exc:  # the user's function: any failure is one bad frame
                raise ParseFailed(ProtocolError(
                    f"parse failed: {type(exc).__name__}: {exc}", code=40000)) from exc
            if result is None:
                return []
            if isinstance(result, list | tuple):
                return list(result)
            return [result]
        return parse_custom
    raise ValueError(f"parse must be one of {', '.join(PARSERS)} or a callable, "
                     f"not {parse!r}")


def to_millis(value: Any) -> int | None:
    """A timestamp as milliseconds since the epoch, or None. Numbers are read as seconds,
    milliseconds, microseconds or nanoseconds by their size; strings as ISO 8601 (a ``Z``
    suffix is fine) or as numbers."""
    if isinstance(value, str):
        if value[4:5] == "-":  # a date first: ISO 8601 (checked first, the common case)
            try:
                stamp = datetime.fromisoformat(value)
            except ValueError:
                return None
            if stamp.tzinfo is None:
                return None  # a local time of some unknown zone: no latency rather than a wrong one
            return round(stamp.timestamp() * 1000)
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    size = abs(value)
    if not math.isfinite(size):
        return None
    if size < 1e11:  # seconds (until the year 5138)
        return round(value * 1000)
    if size < 1e14:
        return round(value)
    if size < 1e17:
        return round(value / 1000)
    return round(value / 1_000_000)


class FeedCore:
    """Frames in, records and notices out. ``name`` labels the records (their channel)."""

    def __init__(
        self,
        name: str,
        parse: ParseName | ParseFunction | None = "json",
        *,
        sequence: str | Extractor | None = None,
        sequence_key: str | Extractor | None = None,
        contiguous: bool = True,
        timestamp: str | Extractor | None = None,
        max_frame_size: int = 1024 * 1024,
        keep_bad_frames: int = 100,
        keep_bytes: int = 4096,
    ) -> None:
        if max_frame_size < 1 or keep_bad_frames < 0 or keep_bytes < 0:
            raise ValueError("max_frame_size must be >= 1, keep_bad_frames and keep_bytes >= 0")
        if sequence is None and sequence_key is not None:
            raise ValueError("sequence_key scopes a sequence: give sequence= too")
        self.name = name
        self._parse = parser(parse)
        self.sequences = (SequenceTracker(sequence, sequence_key, contiguous)
                          if sequence is not None else None)
        self._timestamp = field(timestamp)
        self.max_frame_size = max_frame_size
        self.keep_bytes = keep_bytes
        #: The latest bad frames (at most ``keep_bad_frames``), oldest first.
        self.bad_frames: deque[BadFrame] = deque(maxlen=keep_bad_frames)
        self.bad_frame_count = 0
        self.frames = 0
        self.records = 0  # records delivered (duplicates excluded)
        self.serial = 0

    def receive(self, payload: Payload, now: float, name: str = "message",
                event_id: str | None = None) -> list[Output]:
        """One frame that arrived at ``now`` (seconds since the epoch)."""
        self.frames += 1
        if len(payload) > self.max_frame_size:
            return [self.bad(payload, LimitExceeded(
                f"frame of {len(payload)} bytes is over max_frame_size "
                f"({self.max_frame_size})", code=42902), now, len(payload))]
        try:
            values = self._parse(payload)
        except ParseFailed as exc:
            return [self.bad(payload, exc.error, now)]
        out: list[Output] = []
        tracker, get_time = self.sequences, self._timestamp
        received_ms = round(now * 1000)
        for value in values:
            if tracker is not None:
                verdict = tracker.check(value, now)
                if verdict is not None:
                    out.append(verdict)
                    if type(verdict) is Duplicate:
                        continue
            stamp = to_millis(get_time(value)) if get_time is not None else None
            self.serial += 1
            self.records += 1
            out.append(FeedRecord(value, self.name, self.serial,
                                  received_ms if stamp is None else stamp, now,
                                  stamp is not None, name, event_id))
        return out

    def record(self, value: Any, now: float, name: str = "message") -> FeedRecord:
        """A record that did not come from a frame (e.g. returned by a resync): delivered as
        is, without sequence checks."""
        self.serial += 1
        self.records += 1
        stamp = to_millis(self._timestamp(value)) if self._timestamp is not None else None
        return FeedRecord(value, self.name, self.serial,
                          round(now * 1000) if stamp is None else stamp, now,
                          stamp is not None, name)

    def bad(self, payload: Payload, error: RtkitError, now: float,
            size: int | None = None) -> BadFrame:
        """Count and keep a bad frame (also for transports: an oversized SSE event)."""
        keep = self.keep_bytes
        if isinstance(payload, str):
            raw = payload[:keep].encode("utf-8", "replace")[:keep]
            if size is None:
                size = len(payload.encode("utf-8", "replace"))
        else:
            raw = bytes(payload[:keep])
            if size is None:
                size = len(payload)
        frame = BadFrame(raw, size, error, now)
        self.bad_frames.append(frame)
        self.bad_frame_count += 1
        return frame

    # ---------------------------------------------------------------- sequences

    @property
    def gaps(self) -> list[Gap]:
        return list(self.sequences.gaps) if self.sequences is not None else []

    @property
    def duplicates(self) -> int:
        return self.sequences.duplicates if self.sequences is not None else 0
