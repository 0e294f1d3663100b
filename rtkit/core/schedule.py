"""When a client's connection does what, sans I/O: connection attempts and their backoff,
the connection state TTL, the connect and close deadlines, liveness and heartbeat probes.

Pure time arithmetic on the client's monotonic clock; :class:`~rtkit.core.client.ClientCore`
decides what to do when a time comes.
"""

from __future__ import annotations

import enum

from rtkit.core.timing import Backoff, Liveness, RandomSource


class Pulse(enum.Enum):
    """What a look at a connected link found."""

    ALIVE = "alive"
    STALLED = "stalled"  # our own loop was blocked: do not judge the link yet
    DEAD = "dead"  # nothing heard for the heartbeat interval plus the grace


class Schedule:
    """The times of one client's connection."""

    def __init__(self, backoff: Backoff, rng: RandomSource, suspended_retry: float,
                 now: float) -> None:
        self.backoff = backoff
        self.rng = rng
        self.suspended_retry = suspended_retry
        self.liveness = Liveness(interval=15.0, grace=7.5, last_heard=now)
        self.attempt = 0  # failed attempts since the last connection
        self.attempt_started = 0.0
        self.attempt_deadline: float | None = None
        self.retry_at: float | None = None
        self.retry_now = False  # the next retry needs no backoff (the cause is known)
        self.lost_at: float | None = None  # when continuity started to be at risk
        self.close_deadline: float | None = None
        self.next_ping: float | None = None
        self.next_poll: float | None = None
        self.last_poll = now

    # ---------------------------------------------------------------- attempts

    def begin(self, now: float, timeout: float | None) -> None:
        """A connection attempt starts (``timeout``: None while waiting for a token)."""
        self.retry_at = None
        self.attempt_started = now
        self.attempt_deadline = None if timeout is None else now + timeout

    def fresh(self) -> None:
        """connect() from a final state: a new story, nothing owed."""
        self.attempt = 0
        self.lost_at = None

    def failed(self, now: float) -> None:
        """An attempt failed (after a link was lost, the first retry waits least)."""
        self.attempt_deadline = None
        if self.lost_at is None:
            self.lost_at = now
        self.attempt += 1

    def lost(self, now: float) -> None:
        """A live connection was lost."""
        self.lost_at = now
        self.attempt = 0
        self.next_ping = self.next_poll = None

    def plan_retry(self, now: float) -> float:
        if self.retry_now:
            self.retry_now = False
            self.retry_at = now
        else:
            self.retry_at = now + self.backoff.delay(self.attempt, self.rng)
        return self.retry_at

    def ttl_passed(self, now: float, ttl: float) -> bool:
        return self.lost_at is not None and now >= self.lost_at + ttl

    def suspend(self, now: float) -> None:
        """Suspended: retry more slowly (with jitter); continuity is no longer promised."""
        if self.retry_now:
            self.retry_now, self.retry_at = False, now
            return
        self.retry_at = now + self.suspended_retry * (0.5 + self.rng.random() / 2)

    # ---------------------------------------------------------------- connected

    def connected(self, now: float, interval: float, grace: float | None) -> None:
        self.liveness.interval = interval
        self.liveness.grace = grace if grace is not None else max(0.1, interval / 2)
        self.liveness.heard(now)
        self.attempt = 0
        self.lost_at = None
        self.attempt_deadline = None
        self.next_ping = now  # measure the round trip once at once
        self.next_poll = now + self.poll_period
        self.last_poll = now

    @property
    def poll_period(self) -> float:
        return max(0.01, min(self.liveness.interval / 4, 1.0))

    def observe(self, now: float) -> bool:
        """Note that the driver woke us at ``now``; True if it had been blocked (a busy
        loop) for longer than a poll period plus the grace."""
        stalled = now - self.last_poll > self.poll_period + self.liveness.grace
        self.last_poll = now
        return stalled

    def pulse(self, now: float, stalled: bool) -> Pulse:
        if self.next_poll is not None and now >= self.next_poll:
            self.next_poll = now + self.poll_period
        if stalled:
            # Heartbeats may be waiting unread: let the reader catch up first.
            self.next_poll = now + min(self.poll_period, 0.05)
            return Pulse.STALLED
        return Pulse.DEAD if self.liveness.is_dead(now) else Pulse.ALIVE

    def ping_due(self, now: float) -> bool:
        if self.next_ping is not None and now >= self.next_ping:
            self.next_ping = now + self.liveness.interval
            return True
        return False

    def connected_deadlines(self) -> list[float]:
        return [t for t in (self.next_poll, self.next_ping) if t is not None]
