"""The reconnection policy of a client: one supervisor task owns the link.

It connects, waits for the link to be lost, then retries with backoff and jitter
(``disconnected``), and more slowly once ``connection_state_ttl`` has passed without success
(``suspended``, where queued publishes fail because continuity is no longer promised).
Refused credentials end it (``failed``). :class:`rtkit.Client` provides the link itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rtkit.aio.auth import TokenSource
from rtkit.aio.events import Observable
from rtkit.core.states import ConnectionState, Trigger
from rtkit.core.timing import Backoff, RandomSource
from rtkit.errors import (
    ConnectionFailed,
    ConnectionSuspended,
    InvalidCredentials,
    RtkitError,
    TokenExpired,
)

if TYPE_CHECKING:
    from rtkit.aio.link import Link
    from rtkit.aio.publishing import Publisher

S = ConnectionState


@dataclass(frozen=True, slots=True)
class ResumeInfo:
    """How the latest (re)connection went. Times from ``time.perf_counter()``."""

    started: float  # the attempt began (link up, before the WebSocket handshake)
    connected: float  # 'connected' received
    resumed_at: float  # every channel re-attached and queued publishes sent
    resumed: bool  # the broker resumed the connection
    channels: int
    replayed: int  # messages delivered by the broker's replay


class Supervisor(Observable):
    """Connection supervision for :class:`rtkit.Client` (which defines the attributes)."""

    backoff: Backoff
    suspended_retry_interval: float
    _rng: RandomSource
    _retry_now: asyncio.Event
    _auth: TokenSource | None
    _link: Link | None
    _publisher: Publisher

    @property
    def connection_state_ttl(self) -> float:
        raise NotImplementedError  # pragma: no cover - provided by Client

    async def _open(self) -> None:
        raise NotImplementedError  # pragma: no cover - provided by Client

    async def _drop_link(self) -> None:
        raise NotImplementedError  # pragma: no cover - provided by Client

    def _is_fatal(self, err: RtkitError) -> bool:
        """Refused credentials are refused again: stop instead of retrying."""
        if isinstance(err, InvalidCredentials):
            return True
        return isinstance(err, TokenExpired) and not (self._auth and self._auth.renewable)

    async def _supervise(self) -> None:
        attempt = 0
        lost_at: float | None = None
        while True:
            try:
                await self._open()
            except RtkitError as exc:
                await self._drop_link()
                self._report_error(exc)
                if self._is_fatal(exc):
                    self._fail(exc)
                    return
                self._transition(Trigger.TRANSPORT_LOST, f"connect failed: {exc.message}", exc)
            else:
                attempt, lost_at = 0, None
                assert self._link is not None
                err = await self._link.lost
                await self._drop_link()
                self._report_error(err)
                if self._is_fatal(err):
                    self._fail(err)
                    return
                self._transition(Trigger.TRANSPORT_LOST, err.message, err)
            if lost_at is None:
                lost_at = time.time()
            await self._wait_before_retry(attempt, lost_at)
            attempt += 1
            self._transition(Trigger.RETRY, f"retry #{attempt}")

    def _fail(self, err: RtkitError) -> None:
        self._transition(Trigger.FATAL, err.message, err)
        self._publisher.fail_all(ConnectionFailed(f"connection failed: {err.message}"))

    async def _wait_before_retry(self, attempt: int, lost_at: float) -> None:
        if self.state is S.SUSPENDED:
            delay = self.suspended_retry_interval * (0.5 + self._rng.random() / 2)
        else:
            delay = self.backoff.delay(attempt, self._rng)
        deadline = time.time() + delay
        ttl_at = lost_at + self.connection_state_ttl
        while True:
            now = time.time()
            if self.state is S.DISCONNECTED and now >= ttl_at:
                self._transition(Trigger.TTL_EXPIRED,
                                 f"disconnected for more than {self.connection_state_ttl:g} s")
                self._publisher.fail_all(ConnectionSuspended(
                    "the connection is suspended: queued publishes cannot be kept"))
            wait = deadline - now
            if self.state is S.DISCONNECTED:
                wait = min(wait, ttl_at - now)
            if wait <= 0 and now >= deadline:
                return
            try:
                await asyncio.wait_for(self._retry_now.wait(), max(wait, 0.0))
                return
            except TimeoutError:
                continue
