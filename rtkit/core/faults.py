"""The fault-injection proxy's decisions, sans I/O: what is broken now, and when each chunk
of bytes may be forwarded (latency, jitter, bandwidth), given ``now`` and a random source."""

from __future__ import annotations

from dataclasses import dataclass

from rtkit.core.timing import RandomSource


@dataclass(slots=True)
class FaultPlan:
    """The faults in force. Times are seconds on the proxy's monotonic clock."""

    blackhole_until: float = 0.0
    refuse_until: float = 0.0
    latency: float = 0.0  # seconds added to every chunk, each way
    jitter: float = 0.0  # +/- seconds drawn uniformly per chunk (order is kept)
    bandwidth: float | None = None  # bytes per second, each way, per connection
    block_websocket: bool = False  # answer WebSocket upgrades with 403

    def blackholed(self, now: float) -> bool:
        return now < self.blackhole_until

    def refusing(self, now: float) -> bool:
        return now < self.refuse_until

    def blackhole(self, seconds: float, now: float) -> None:
        """Forward nothing and close nothing for ``seconds`` (a silent, half-open link)."""
        self.blackhole_until = max(self.blackhole_until, now + seconds)

    def refuse(self, seconds: float, now: float) -> None:
        """Reset new connections for ``seconds``."""
        self.refuse_until = max(self.refuse_until, now + seconds)

    def heal(self) -> None:
        """Remove every fault."""
        self.blackhole_until = self.refuse_until = 0.0
        self.latency = self.jitter = 0.0
        self.bandwidth = None
        self.block_websocket = False

    def describe(self, now: float) -> dict[str, object]:
        return {
            "blackhole_s": round(max(0.0, self.blackhole_until - now), 3),
            "refuse_s": round(max(0.0, self.refuse_until - now), 3),
            "latency_ms": self.latency * 1000,
            "jitter_ms": self.jitter * 1000,
            "bandwidth_bps": self.bandwidth,
            "block_websocket": self.block_websocket,
        }


@dataclass(slots=True)
class Pipe:
    """One direction of one connection: when may the next chunk go out?"""

    last_release: float = 0.0
    wire_free_at: float = 0.0

    def schedule(self, nbytes: int, now: float, plan: FaultPlan, rng: RandomSource) -> float:
        """The time at which a chunk of ``nbytes`` read at ``now`` may be written."""
        delay = plan.latency
        if plan.jitter:
            delay += (rng.random() * 2 - 1) * plan.jitter
        release = max(now + max(0.0, delay), self.last_release)  # never reorder
        if plan.bandwidth:
            start = max(release, self.wire_free_at)
            self.wire_free_at = start + nbytes / plan.bandwidth
            release = self.wire_free_at
        self.last_release = release
        return release


def is_websocket_upgrade(first_bytes: bytes) -> bool:
    """Whether the opening bytes of a connection are an HTTP WebSocket upgrade request."""
    head = first_bytes.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(b"get ") and b"upgrade: websocket" in head
