"""Where a client's tokens come from: a fixed token, or an ``auth_callback`` that is asked
again before the current token expires."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable

from rtkit.core.tokens import TokenClaims, inspect_token, renewal_time
from rtkit.errors import AuthError, ConnectionClosed, Disconnected, RtkitError, TokenExpired

log = logging.getLogger("rtkit.client")

AuthCallback = Callable[[], str | Awaitable[str]]

#: A token this close to expiry is treated as expired (it could expire in transit).
EXPIRY_MARGIN = 0.25


class TokenSource:
    """The current token, and renewal through the callback (one call at a time)."""

    def __init__(self, token: str | None, callback: AuthCallback | None) -> None:
        self.callback = callback
        self.token: str | None = None
        self.claims: TokenClaims | None = None
        self.renewals = 0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        if token is not None:
            self._set(token)

    def _set(self, token: str) -> None:
        self.token = token
        self._changed.set()
        try:
            self.claims = inspect_token(token)
        except RtkitError:
            self.claims = None  # opaque to us: the broker will judge it

    @property
    def renewable(self) -> bool:
        return self.callback is not None

    def known_expired(self, now: float) -> bool:
        return self.claims is not None and self.claims.expires_at - EXPIRY_MARGIN <= now

    async def wait_for_token(self) -> None:
        """Wait until a new token is set."""
        self._changed.clear()
        await self._changed.wait()

    def renew_at(self) -> float | None:
        """When to renew the current token (None: never, without a callback or expiry)."""
        if self.callback is None or self.claims is None:
            return None
        return renewal_time(self.claims.issued_at, self.claims.expires_at)

    async def fresh(self) -> str:
        """A token that is not known to be expired, renewing it if needed."""
        if self.token is None or self.known_expired(time.time()):
            if self.callback is None:
                if self.token is None:
                    raise AuthError(code=40106)
                raise TokenExpired("the token has expired and no auth_callback can renew it")
            return await self.renew()
        return self.token

    async def renew(self) -> str:
        """Ask the callback for a new token. Concurrent callers share one call."""
        if self.callback is None:
            raise AuthError("no auth_callback to renew the token with", code=40170)
        previous = self.token
        async with self._lock:
            if self.token is not previous and self.token is not None:
                return self.token  # renewed while we waited for the lock
            try:
                result = self.callback()
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                raise AuthError(f"auth_callback failed: {exc!r}", code=40170) from exc
            if not isinstance(result, str) or not result:
                raise AuthError("auth_callback must return a token string", code=40170)
            self._set(result)
            self.renewals += 1
            return result


async def renew_forever(
    source: TokenSource,
    present: Callable[[str], Awaitable[object]],
    delay: Callable[[int], float],
    report: Callable[[RtkitError], None],
) -> None:
    """Renew ``source``'s token before each expiry, for as long as the task runs.

    ``present(token)`` hands a new token to a live connection (in-band ``auth``); it raises
    :class:`~rtkit.Disconnected` or :class:`~rtkit.ConnectionClosed` when there is none, and
    then the next connection attempt presents it. Failures are reported and retried after
    ``delay(attempt)`` seconds (the client's backoff).
    """
    while True:
        at = source.renew_at()
        if at is None:  # no token yet (or one without expiry): wait for the next one
            await source.wait_for_token()
            continue
        await asyncio.sleep(max(0.0, at - time.time()))
        attempt = 0
        while True:
            try:
                await present(await source.renew())
                break
            except (Disconnected, ConnectionClosed):
                break  # the reconnect presents the new token
            except RtkitError as exc:
                report(exc)
                log.warning("token renewal failed: %s", exc)
                await asyncio.sleep(delay(attempt))
                attempt += 1
