"""When a feed's link is dead and when to try again, sans I/O (callers pass ``now``, from a
monotonic clock).

:class:`FeedWatch` judges one connection. Two things are watched apart, because a feed can
answer pings while its data has stopped ("pings arrive, data stops"):

- the link: nothing at all heard (frames, pongs, SSE comments) for ``heartbeat + grace``
  seconds means a dead or half-open link. On a WebSocket the driver pings every
  ``heartbeat`` seconds so a live peer always has something to say;
- the data: no record for ``max_silence`` seconds means the feed stopped, even if the link
  looks fine. Off unless given: only the user knows how quiet a healthy feed may be.

:class:`RetryPolicy` spaces reconnection attempts: exponential backoff with full jitter
(:class:`~rtkit.core.timing.Backoff`), never sooner than the server's SSE ``retry:`` asked,
reset only once a connection delivered data (a server that accepts and then hangs up at once
is not hammered), and never giving up unless ``max_retries`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rtkit.core.timing import Backoff, Liveness, RandomSource


@dataclass(slots=True)
class FeedWatch:
    """Liveness of one connection: the link (``heartbeat``) and the data (``max_silence``)."""

    heartbeat: float | None
    grace: float
    max_silence: float | None
    link: Liveness = field(init=False)
    data: Liveness = field(init=False)
    next_ping: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.heartbeat is not None and self.heartbeat <= 0:
            raise ValueError("heartbeat must be > 0 seconds (or None)")
        if self.max_silence is not None and self.max_silence <= 0:
            raise ValueError("max_silence must be > 0 seconds (or None)")
        if self.grace < 0:
            raise ValueError("the heartbeat grace must be >= 0")
        self.link = Liveness(self.heartbeat or 0.0, self.grace)
        self.data = Liveness(self.max_silence or 0.0, 0.0)

    def start(self, now: float) -> None:
        """The connection opened at ``now``: both clocks start."""
        self.link.heard(now)
        self.data.heard(now)
        self.next_ping = now + (self.heartbeat or 0.0)

    def heard(self, now: float) -> None:
        """Anything arrived (a frame, a pong, a comment)."""
        self.link.last_heard = now

    def got_data(self, now: float) -> None:
        """A record arrived."""
        self.link.last_heard = now
        self.data.last_heard = now

    def ping_due(self, now: float) -> bool:
        """Whether to send a ping now (then the next one is a heartbeat later)."""
        if self.heartbeat is None or now < self.next_ping:
            return False
        self.next_ping = now + self.heartbeat
        return True

    def dead(self, now: float) -> str | None:
        """Why the connection should be dropped at ``now``, or None if it is fine."""
        if self.heartbeat is not None and self.link.is_dead(now):
            return f"nothing heard for {now - self.link.last_heard:.2f} s (link dead)"
        if self.max_silence is not None and self.data.is_dead(now):
            return (f"no data for {now - self.data.last_heard:.2f} s "
                    f"(max_silence={self.max_silence:g} s)")
        return None

    @property
    def period(self) -> float:
        """How often to check: a quarter of the shortest interval, at most one second."""
        spans = [s for s in (self.heartbeat, self.max_silence) if s is not None]
        return min([1.0, *(s / 4 for s in spans)])


@dataclass(slots=True)
class RetryPolicy:
    """Backoff between attempts: ``delay()`` gives the next wait (None: give up)."""

    backoff: Backoff
    rng: RandomSource
    max_retries: int | None = None
    attempt: int = 0
    server_retry: float | None = None  # seconds, from an SSE ``retry:`` field

    def __post_init__(self) -> None:
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must be >= 0 (or None: never give up)")

    def succeeded(self) -> None:
        """A connection delivered data: the next failure starts the backoff over."""
        self.attempt = 0

    def delay(self) -> float | None:
        """The wait before the next attempt, counting it; None once ``max_retries`` failed
        attempts in a row have been retried."""
        if self.max_retries is not None and self.attempt >= self.max_retries:
            return None
        wait = self.backoff.delay(self.attempt, self.rng)
        self.attempt += 1
        if self.server_retry is not None:
            wait = max(wait, self.server_retry)
        return wait
