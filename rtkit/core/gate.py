"""Admission of new connections, decided at the WebSocket handshake (before any frame):
the broker's total, the connections of one remote address, the rate of attempts from one
address, and the ``Origin`` of browser connections.

An open room (``rtkit serve --host 0.0.0.0``) must not let one participant take every
connection slot, hammer the broker with handshakes, or let a web page on another site open
connections from a visitor's browser (cross-site WebSocket hijacking).
"""

from __future__ import annotations

from rtkit.core.config import BrokerConfig
from rtkit.core.timing import TokenBucket
from rtkit.errors import RtkitError, error

#: Attempt buckets kept for this many addresses at most (full ones are dropped first).
MAX_TRACKED_ADDRESSES = 65_536


class ConnectionGate:
    """Counts open connections (total and per address) and rate-limits attempts per address.
    Pure: the driver passes the remote address and a monotonic ``now``."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.open = 0
        self.by_address: dict[str, int] = {}
        self._attempts: dict[str, TokenBucket] = {}
        self.refused = 0

    def admit(self, address: str | None, now: float, origin: str | None = None
              ) -> RtkitError | None:
        """None if a connection from ``address`` may open now (and count it as open), else
        the error to refuse it with: 40301 origin, 42911 too many connections, 42912 too many
        attempts. Every call is an attempt."""
        c = self.config
        addr = address or "?"
        err: RtkitError | None = None
        if not self._attempt(addr, now):
            err = error(42912, f"more than {c.connection_attempt_rate:g} connection attempts "
                               "a second from this address")
        elif not self.origin_allowed(origin):
            err = error(40301, f"origin {origin!r} is not allowed")
        elif self.open >= c.max_connections:
            err = error(42911, f"the broker has {c.max_connections} connections")
        elif self.by_address.get(addr, 0) >= c.max_connections_per_address:
            err = error(42911, f"{c.max_connections_per_address} connections from this address")
        if err is not None:
            self.refused += 1
            return err
        self.open += 1
        self.by_address[addr] = self.by_address.get(addr, 0) + 1
        return None

    def release(self, address: str | None) -> None:
        """A connection admitted from ``address`` has closed."""
        addr = address or "?"
        self.open -= 1
        left = self.by_address.get(addr, 1) - 1
        if left > 0:
            self.by_address[addr] = left
        else:
            self.by_address.pop(addr, None)

    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers always send ``Origin``; other clients do not, and are not restricted."""
        allowed = self.config.allowed_origins
        return allowed is None or origin is None or origin in allowed

    def _attempt(self, addr: str, now: float) -> bool:
        bucket = self._attempts.get(addr)
        if bucket is None:
            if len(self._attempts) >= MAX_TRACKED_ADDRESSES:
                self._forget_idle(now)
            c = self.config
            bucket = TokenBucket(c.connection_attempt_rate, c.connection_attempt_burst,
                                 updated=now)
            self._attempts[addr] = bucket
        return bucket.take(now)

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that have refilled (their addresses are not hammering us)."""
        rate, burst = self.config.connection_attempt_rate, self.config.connection_attempt_burst
        for addr in [a for a, b in self._attempts.items()
                     if b.tokens + (now - b.updated) * rate >= burst]:
            del self._attempts[addr]
        if len(self._attempts) >= MAX_TRACKED_ADDRESSES:  # all busy: start over
            self._attempts.clear()
