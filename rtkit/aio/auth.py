"""Tokens for a client: the ``auth_callback`` runner, and a read-only view of the current
token for widgets. When to renew, and what to present, is decided by the client core
(:mod:`rtkit.core.credentials`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from rtkit.core.credentials import Credentials
from rtkit.core.tokens import TokenClaims, renewal_time
from rtkit.errors import AuthError, RtkitError

log = logging.getLogger("rtkit.client")

AuthCallback = Callable[[], str | Awaitable[str]]


class TokenSource:
    """What a client knows about its token (read-only): the token, its claims, how many
    times it was renewed, and when the next renewal is planned."""

    def __init__(self, credentials: Credentials, callback: AuthCallback | None) -> None:
        self._credentials = credentials
        self.callback = callback

    @property
    def token(self) -> str | None:
        return self._credentials.token

    @property
    def claims(self) -> TokenClaims | None:
        return self._credentials.claims

    @property
    def renewals(self) -> int:
        """Tokens obtained from ``auth_callback`` so far (the first one included)."""
        return self._credentials.renewals

    @property
    def renewable(self) -> bool:
        return self.callback is not None

    @property
    def server_offset(self) -> float:
        """The broker's clock minus ours, in seconds (from the last ``connected``)."""
        return self._credentials.server_offset

    def renew_at(self) -> float | None:
        """When the token will next be renewed, in seconds since the epoch on *our*
        clock (None: never, without a callback or an expiry)."""
        claims = self.claims
        if self.callback is None or claims is None:
            return None
        return renewal_time(claims.issued_at, claims.expires_at) - self.server_offset


async def call_auth_callback(callback: AuthCallback, timeout: float) -> str:
    """Run ``callback`` (sync or async) with a timeout; raise :class:`AuthError` (40170)
    if it fails, hangs or returns something that is not a token."""
    try:
        async with asyncio.timeout(timeout):
            result = callback()
            if inspect.isawaitable(result):
                result = await result
    except TimeoutError:
        raise AuthError(f"auth_callback did not answer within {timeout:g} s",
                        code=40170) from None
    except RtkitError as exc:
        raise AuthError(f"auth_callback failed: {exc.message}", code=40170) from exc
    except Exception as exc:  # the application's code: report what it raised
        raise AuthError(f"auth_callback failed: {exc!r}", code=40170) from exc
    if not isinstance(result, str) or not result:
        raise AuthError("auth_callback must return a token string", code=40170)
    return result
