"""What a protocol comparison found, and the arithmetic on it (pure: no I/O, no clock)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ``values``, interpolated linearly between the
    two nearest ranks (numpy's default method). Raises ``ValueError`` on no values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"q must be between 0 and 100, not {q!r}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Bytes:
    """Bytes counted at a relay (client to server ``up``, server to client ``down``)."""

    up: int = 0
    down: int = 0

    @property
    def total(self) -> int:
        return self.up + self.down

    def __sub__(self, other: Bytes) -> Bytes:
        return Bytes(self.up - other.up, self.down - other.down)


@dataclass(frozen=True)
class ProtocolResult:
    """One protocol's share of a comparison.

    ``latencies`` are seconds from publish to delivery, one per message received;
    ``connect`` the bytes it took to connect and subscribe; ``idle`` those sent during
    ``idle_seconds`` without messages; ``stream`` those of the ``sent`` messages published,
    counted until the wire was quiet after the last one arrived. ``idle_polls`` and
    ``stream_polls`` count the requests of HTTP polling in those phases (0 for push).
    """

    protocol: str
    sent: int
    latencies: tuple[float, ...]
    connect: Bytes
    idle: Bytes
    idle_seconds: float
    stream: Bytes
    idle_polls: int = 0
    stream_polls: int = 0

    @property
    def received(self) -> int:
        return len(self.latencies)

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000

    @property
    def bytes_per_message(self) -> float:
        """Bytes on the wire (both ways) per message published, headers, framing and
        keep-alives included."""
        return self.stream.total / self.sent

    @property
    def empty_poll_bytes(self) -> float:
        """Bytes of one poll that found nothing new (a request and an empty answer),
        measured while idle; NaN without polls."""
        return self.idle.total / self.idle_polls if self.idle_polls else math.nan

    @property
    def idle_bytes_per_second(self) -> float:
        return self.idle.total / self.idle_seconds if self.idle_seconds > 0 else math.nan


@dataclass(frozen=True)
class Comparison:
    """The protocols measured on one stream: ``sent`` messages of about ``payload`` bytes
    of JSON, ``rate`` a second; the poller asked every ``poll_every`` seconds."""

    results: tuple[ProtocolResult, ...]
    sent: int
    rate: float
    payload: int
    poll_every: float

    def __getitem__(self, protocol: str) -> ProtocolResult:
        for result in self.results:
            if result.protocol == protocol:
                return result
        raise KeyError(protocol)

    @property
    def protocols(self) -> list[str]:
        return [r.protocol for r in self.results]

    def frame(self) -> pd.DataFrame:
        """One row per protocol: latency p50/p99 (ms), bytes per message, bytes to connect,
        bytes a second while idle, messages received."""
        rows = [{"protocol": r.protocol, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                 "bytes_per_message": r.bytes_per_message, "connect_bytes": r.connect.total,
                 "idle_bytes_per_s": r.idle_bytes_per_second, "received": r.received}
                for r in self.results]
        return pd.DataFrame(rows).set_index("protocol")
