"""What a client presents to the broker, and when it needs a new token, sans I/O.

An API key never changes. A token comes from the application (``token=``) or from an
``auth_callback`` that the driver calls when :class:`Credentials` asks (``fetch_needed``).
Times: ``now`` is the client's monotonic clock; token claims are seconds since the Unix
epoch, compared with the *broker's* wall clock as the client estimates it
(``wall(now) + server_offset``), so a client whose clock lags still renews in time.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtkit.core.timing import Backoff, RandomSource
from rtkit.core.tokens import TokenClaims, inspect_token, renewal_time
from rtkit.errors import AuthError, RtkitError, TokenExpired

#: A token this close to expiry is treated as expired (it could expire in transit).
EXPIRY_MARGIN = 0.25


@dataclass(slots=True)
class Fetch:
    """A token request handed to the driver: answer with ``token_obtained`` or
    ``token_failed``; after ``deadline`` (monotonic) the core gives up on it."""

    id: int
    reason: str
    deadline: float


class Credentials:
    """The key or the current token, renewal timing and the token fetch in flight."""

    def __init__(self, key: str | None, token: str | None, renewable: bool,
                 auth_timeout: float, backoff: Backoff, rng: RandomSource) -> None:
        self.key = key
        self.renewable = renewable
        self.auth_timeout = auth_timeout
        self.token: str | None = None
        self.claims: TokenClaims | None = None
        #: A token the broker refused (expired): never present it again.
        self.rejected_token: str | None = None
        #: A token obtained since the last successful connect is presented as it is: the
        #: broker judges it (our clock may be off; we learn by how much when connected).
        self.fresh = False
        #: When (our monotonic clock) the current token was obtained.
        self.obtained_mono: float | None = None
        self.synced_once = False
        #: When (broker wall clock) the current token was obtained from the callback.
        self.obtained_at: float | None = None
        #: A refused token was replaced once (a second refusal is final).
        self.second_chance_used = False
        self.renewals = 0
        #: Broker wall clock minus ours (seconds), from ``connected.server_time``.
        self.server_offset = 0.0
        #: Our wall clock minus our monotonic clock (the driver keeps it current).
        self.wall_offset = 0.0
        self.fetch: Fetch | None = None
        self.failures = 0
        self.retry_at: float | None = None
        #: The token presented on the current link (to notice renewals racing a connect).
        self.presented: str | None = None
        self._backoff = backoff
        self._rng = rng
        self._fetch_ids = 0
        if token is not None:
            self.set_token(token)

    # ---------------------------------------------------------------- clocks

    def broker_wall(self, now: float) -> float:
        """The broker's wall-clock time at our monotonic ``now``, as best we know."""
        return now + self.wall_offset + self.server_offset

    def to_monotonic(self, broker_wall_time: float, now: float) -> float:
        return now + (broker_wall_time - self.broker_wall(now))

    def synced(self, server_time_ms: int, now: float) -> None:
        """``connected`` told us the broker's time: remember the offset."""
        if server_time_ms > 0:
            self.server_offset = server_time_ms / 1000 - (now + self.wall_offset)
            self.synced_once = True
        self.fresh = False

    # ---------------------------------------------------------------- the token

    @property
    def uses_key(self) -> bool:
        return self.key is not None

    def set_token(self, token: str) -> None:
        self.token = token
        try:
            self.claims = inspect_token(token)
        except RtkitError:
            self.claims = None  # opaque to us: the broker will judge it

    @property
    def rejected(self) -> bool:
        return self.token is not None and self.token == self.rejected_token

    def reject(self) -> None:
        """The broker said the token we presented has expired."""
        self.rejected_token = self.presented or self.token

    def expired(self, now: float) -> bool:
        """Whether the current token must not be presented."""
        if self.rejected:
            return True
        return self.claims is not None and \
            self.claims.expires_at - EXPIRY_MARGIN <= self.broker_wall(now)

    def renew_at(self, now: float) -> float | None:
        """Monotonic time of the next planned renewal (None: none planned).

        Counted from when we got the token if that is later than its ``iat``: a token
        service whose clock lags issues tokens with less life left than they claim, and
        renewing them on their ``iat`` would mean renewing at once, forever."""
        if not self.renewable or self.claims is None:
            return None
        start = max(self.claims.issued_at, self.obtained_at or 0.0)
        due = renewal_time(start, self.claims.expires_at)
        return self.to_monotonic(due, now)

    def credentials_for_connect(self, now: float) -> dict[str, str] | RtkitError | None:
        """The fields to put in ``connect``; None while a token must first be fetched; an
        error when no usable credential can ever be had (fatal)."""
        if self.key is not None:
            return {"key": self.key}
        renew_at = self.renew_at(now)
        # A renewal that is due is fetched before connecting, unless renewals are failing
        # and the token still works, or it was just fetched.
        due = renew_at is not None and renew_at <= now and not self.failures
        usable = self.token is not None and not self.rejected and (
            self._fresh_and_alive(now) or (not self.expired(now) and not due))
        if usable:
            assert self.token is not None
            self.presented = self.token
            return {"token": self.token}
        if not self.renewable:
            if self.token is None:
                return AuthError(code=40106)
            return TokenExpired("the token has expired and no auth_callback can renew it")
        return None

    def _fresh_and_alive(self, now: float) -> bool:
        """A fresh token, with some of its life left by our monotonic clock: its lifetime
        (``exp - iat``, whatever the issuer's clock) counted from when we obtained it. A
        fresh token kept through failed attempts can outlive itself; presenting it then
        would only have the broker refuse it."""
        if not self.fresh:
            return False
        if self.claims is None or self.obtained_mono is None:
            return True  # opaque: the broker judges it
        lifetime = self.claims.expires_at - self.claims.issued_at
        margin = min(EXPIRY_MARGIN, lifetime / 4)
        return now < self.obtained_mono + lifetime - margin

    # ---------------------------------------------------------------- fetching

    def start_fetch(self, reason: str, now: float) -> Fetch | None:
        """Begin a token fetch unless one is in flight or a retry is not due yet."""
        if not self.renewable or self.fetch is not None:
            return None
        if self.retry_at is not None and now < self.retry_at:
            return None
        self._fetch_ids += 1
        self.fetch = Fetch(self._fetch_ids, reason, now + self.auth_timeout)
        return self.fetch

    def obtained(self, fetch_id: int, token: object, now: float) -> RtkitError | None:
        """The driver's answer to fetch ``fetch_id``; returns an error if it is unusable."""
        if self.fetch is None or self.fetch.id != fetch_id:
            return None  # a late answer to a fetch we gave up on
        self.fetch = None
        if not isinstance(token, str) or not token:
            return self.failed(fetch_id, AuthError("auth_callback must return a token string",
                                                   code=40170), now, current=True)
        self.set_token(token)
        self.renewals += 1
        self.failures, self.retry_at = 0, None
        self.fresh = True
        self.obtained_mono = now
        if not self.synced_once and self.claims is not None:
            # Not connected yet: take the token issuer's clock as the broker's (the token
            # was issued just now), so a skewed local clock does not make it look stale.
            estimate = self.claims.issued_at - (now + self.wall_offset)
            if abs(estimate) > 1.0:
                self.server_offset = estimate
        self.obtained_at = self.broker_wall(now)
        return None

    def failed(self, fetch_id: int, err: RtkitError, now: float,
               current: bool = False) -> RtkitError | None:
        """The fetch failed (or timed out): back off before the next one."""
        if not current:
            if self.fetch is None or self.fetch.id != fetch_id:
                return None
            self.fetch = None
        if err.code != 40170:
            err = AuthError(f"auth_callback failed: {err.message}", code=40170)
        self.retry_at = now + self._backoff.delay(self.failures, self._rng)
        self.failures += 1
        return err

    def timed_out(self, now: float) -> RtkitError | None:
        if self.fetch is not None and now >= self.fetch.deadline:
            return self.failed(self.fetch.id, AuthError(
                f"auth_callback did not answer within {self.auth_timeout:g} s", code=40170),
                now)
        return None
