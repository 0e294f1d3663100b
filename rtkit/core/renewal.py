"""Token fetches and their presentation for a client core, sans I/O.

The driver runs ``auth_callback`` when asked (``FetchToken``); a new token is presented on a
live connection in-band (``auth``), or at the next connect. Operations of
``renew_token()`` complete once the new token is presented and authorized.
"""

from __future__ import annotations

from rtkit.core import frames as fr
from rtkit.core.client_events import FetchToken, Output, Problem
from rtkit.core.credentials import Credentials
from rtkit.core.requests import Pending, Requests
from rtkit.errors import AuthError, RtkitError


class Renewal:
    """Fetching, presenting and renewing tokens."""

    def __init__(self, credentials: Credentials, requests: Requests,
                 out: list[Output]) -> None:
        self.credentials = credentials
        self.requests = requests
        self.out = out
        self.ops: list[int] = []  # renew_token() calls waiting for the outcome

    def renew(self, now: float) -> int:
        """Start a renewal the application asked for; returns its operation."""
        if not self.credentials.renewable:
            raise AuthError("this client has no auth_callback to renew with", code=40170)
        op = self.requests.new_op()
        self.ops.append(op)
        self.credentials.retry_at = None  # asked for: no backing off
        self.fetch("renew_token() called", now)
        return op

    def fetch(self, reason: str, now: float) -> bool:
        """Ask the driver for a token unless one is coming; False if backing off."""
        creds = self.credentials
        fetch = creds.start_fetch(reason, now)
        if fetch is None:
            return creds.fetch is not None
        self.out.append(FetchToken(fetch.id, reason, creds.auth_timeout))
        return True

    def present(self, now: float) -> None:
        """Give the current token to the live connection (``auth``)."""
        token = self.credentials.token
        assert token is not None
        self.credentials.presented = token
        self.requests.send(fr.Auth, Pending("auth", None, None, now, token), token=token)

    def unpresented(self) -> bool:
        """A token was obtained that the connection has not seen yet."""
        creds = self.credentials
        return creds.token is not None and creds.token != creds.presented

    def settle(self, value: object) -> None:
        """The renewal is complete (presented and authorized, or kept for the next connect)."""
        ops, self.ops = self.ops, []
        for op in ops:
            self.requests.done(op, value)

    def trouble(self, err: RtkitError) -> None:
        """Fetching or presenting failed: tell the application."""
        self.out.append(Problem(err, "token renewal failed"))
        ops, self.ops = self.ops, []
        for op in ops:
            self.requests.failed(op, err)

    def due(self, now: float) -> float | None:
        """When to fetch the next token: the planned renewal, or the retry after a failure."""
        creds = self.credentials
        if creds.retry_at is not None:
            return creds.retry_at
        return creds.renew_at(now)

    def forget(self, op: int) -> None:
        if op in self.ops:
            self.ops.remove(op)
