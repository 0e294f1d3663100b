"""The broker's per-session deadlines, ordered so that a tick touches only what is due.

Auth timeouts and heartbeats have a constant interval, so sessions queue up in deadline order
just by being appended (a deque, 8 bytes a session); token expiries are arbitrary and live in
a heap. Entries are never removed early: one found stale (the session closed, the token
renewed) is dropped when it reaches the front.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator

from rtkit.core.config import BrokerConfig
from rtkit.core.session import Session

_seq = itertools.count()


class SessionTimers:
    """Auth timeouts and heartbeats (monotonic time), token expiries (wall time)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._unauthenticated: deque[Session] = deque()
        self._heartbeats: deque[Session] = deque()
        self._expiries: list[tuple[float, int, Session]] = []

    def opened(self, s: Session) -> None:
        """``s`` must send ``connect`` within ``auth_timeout`` of ``s.opened_at``."""
        self._unauthenticated.append(s)

    def connected(self, s: Session, now: float) -> None:
        """``s`` is sent a heartbeat every ``heartbeat_interval`` from now on."""
        s.next_heartbeat = now + self.config.heartbeat_interval
        self._heartbeats.append(s)

    def token(self, s: Session) -> None:
        """``s``'s token (new or renewed) expires at ``s.token_expires`` (wall time)."""
        if s.token_expires is not None:
            heapq.heappush(self._expiries, (s.token_expires, next(_seq), s))

    def late_to_authenticate(self, now: float) -> Iterator[Session]:
        pending, limit = self._unauthenticated, self.config.auth_timeout
        while pending and (pending[0].connected or pending[0].closed
                           or now - pending[0].opened_at > limit):
            s = pending.popleft()
            if not s.connected and not s.closed:
                yield s

    def heartbeats_due(self, now: float) -> Iterator[Session]:
        beats = self._heartbeats
        while beats and (beats[0].closed or beats[0].next_heartbeat <= now):
            s = beats.popleft()
            if not s.closed:
                s.next_heartbeat = now + self.config.heartbeat_interval
                beats.append(s)
                yield s

    def tokens_expired(self, wall: float) -> Iterator[Session]:
        expiries = self._expiries
        while expiries and (expiries[0][0] <= wall or expiries[0][2].closed):
            expires, _, s = heapq.heappop(expiries)
            if not s.closed and s.token_expires == expires:
                yield s
