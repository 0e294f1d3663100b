"""Time arithmetic with no clock of its own: backoff delays, liveness deadlines, rate limits.

Callers pass ``now`` (seconds, any monotonic origin) and, for jitter, a random source, so every
schedule here is reproducible in tests.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

Jitter = Literal["full", "equal", "none"]


class RandomSource(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: attempt *n* waits up to ``min(cap, base * factor**n)`` seconds.

    ``jitter="full"`` (the default) draws the wait uniformly from ``[0, that]``, which spreads a
    crowd of clients reconnecting at once; ``"equal"`` draws from ``[that/2, that]``;
    ``"none"`` waits exactly ``that``.
    """

    base: float = 0.5
    #: Small on purpose: a client retries at least every ``cap`` seconds while disconnected,
    #: so it is back soon after the link returns (the suspended state's slower retry, after
    #: connection_state_ttl, is what spares a broker that stays away).
    cap: float = 2.0
    factor: float = 2.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.factor < 1:
            raise ValueError("backoff needs 0 < base <= cap and factor >= 1")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError("jitter must be 'full', 'equal' or 'none'")

    def ceiling(self, attempt: int) -> float:
        """The largest wait before retry number ``attempt`` (0-based)."""
        # Cap the exponent so huge attempt counts cannot overflow a float.
        return min(self.cap, self.base * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, rng: RandomSource) -> float:
        """The wait before retry number ``attempt``, using ``rng`` for jitter."""
        top = self.ceiling(attempt)
        if self.jitter == "full":
            return rng.random() * top
        if self.jitter == "equal":
            return top / 2 + rng.random() * top / 2
        return top

    def delays(self, rng: RandomSource | None = None) -> Iterator[float]:
        """An endless schedule of waits (consume one per failed attempt)."""
        source: RandomSource = rng if rng is not None else random.Random()
        attempt = 0
        while True:
            yield self.delay(attempt, source)
            attempt += 1


@dataclass(slots=True)
class Liveness:
    """Declares a link dead after ``interval + grace`` seconds without hearing anything.

    TCP alone does not notice a half-open link (packets silently dropped): only the absence of
    the peer's regular heartbeats does.
    """

    interval: float
    grace: float
    last_heard: float = 0.0

    def heard(self, now: float) -> None:
        self.last_heard = now

    @property
    def deadline(self) -> float:
        return self.last_heard + self.interval + self.grace

    def is_dead(self, now: float) -> bool:
        return now >= self.deadline


@dataclass(slots=True)
class TokenBucket:
    """Allows ``rate`` events per second on average, with bursts of up to ``burst``."""

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if available; returns whether the event is allowed."""
        elapsed = max(0.0, now - self.updated)
        self.updated = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens + 1e-9 >= cost:  # (tolerate float rounding in the refill)
            self.tokens = max(0.0, self.tokens - cost)
            return True
        return False
