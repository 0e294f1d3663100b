"""One exception tree for rtkit, each class carrying its wire error code.

Every error the broker sends on the wire has a numeric ``code`` (see ``docs/protocol.md``);
the client turns it back into the matching class with :func:`error_from_wire`, so the same
type is raised whether a problem was found locally or reported by the broker::

    RtkitError                      any code
    ├── ProtocolError               400xx  bad request: a frame the peer cannot accept
    ├── AuthError                   401xx  unauthorized
    │   ├── InvalidCredentials      40100-40139  unknown key, forged or malformed token
    │   └── TokenExpired            40140-40149  the token's exp is in the past
    ├── CapabilityError             403xx  the credentials lack the operation on that channel
    ├── NotFound                    404xx  unknown recovery key, unknown request
    ├── RequestTimeout              408xx  no reply in time (also a builtin TimeoutError)
    ├── LimitExceeded               429xx  rate, size, buffer or queue limits
    ├── ServerError                 500xx  the broker failed or is shutting down
    └── ConnectionError_            800xx  the link: failed, closed, suspended, continuity
        ├── ConnectionFailed        80000  could not connect / unrecoverable;
        │                           80004  a transport refused (the WebSocket upgrade)
        ├── ConnectionClosed        80001  closed by the application or the broker
        ├── ConnectionSuspended     80002  retrying too long: continuity no longer promised
        ├── Disconnected            80003  transport lost, retrying
        └── ContinuityLost          80008  messages missed and could not be recovered
"""

from __future__ import annotations

from typing import Any, ClassVar


class RtkitError(Exception):
    """Base of every rtkit error. ``code`` is the documented wire error code."""

    default_code: ClassVar[int] = 50000
    default_message: ClassVar[str] = "rtkit error"

    def __init__(self, message: str | None = None, *, code: int | None = None) -> None:
        self.code: int = self.default_code if code is None else code
        self.message: str = message if message is not None else describe(self.code)
        super().__init__(f"[{self.code}] {self.message}")

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object as it appears in a frame."""
        return {"code": self.code, "message": self.message}


class ProtocolError(RtkitError):
    """A frame that breaks the protocol: bad JSON, wrong types, unknown action."""

    default_code = 40000


class AuthError(RtkitError):
    """Authentication failed."""

    default_code = 40100


class InvalidCredentials(AuthError):
    """Unknown API key, or a token that is malformed, forged or uses a refused algorithm."""

    default_code = 40101


class TokenExpired(AuthError):
    """The token's expiry time has passed: renew it and try again."""

    default_code = 40140


class CapabilityError(RtkitError):
    """The connection's capabilities do not allow this operation on this channel."""

    default_code = 40300


class NotFound(RtkitError):
    """Something named by the request does not exist (or no longer exists)."""

    default_code = 40400


class RequestTimeout(RtkitError, TimeoutError):
    """No reply arrived within the timeout."""

    default_code = 40800


class LimitExceeded(RtkitError):
    """A documented limit was exceeded (rate, size, buffer, queue)."""

    default_code = 42900


class ServerError(RtkitError):
    """The broker failed to handle the request."""

    default_code = 50000


class ConnectionError_(RtkitError):
    """Problems of the link between client and broker."""

    default_code = 80000


class ConnectionFailed(ConnectionError_):
    """The connection could not be made, or failed for good."""

    default_code = 80000


class ConnectionClosed(ConnectionError_):
    """The connection was closed (by the application or the broker)."""

    default_code = 80001


class ConnectionSuspended(ConnectionError_):
    """Reconnecting has taken longer than the connection state TTL."""

    default_code = 80002


class Disconnected(ConnectionError_):
    """The transport was lost; the client is retrying."""

    default_code = 80003


class ContinuityLost(ConnectionError_):
    """Messages were missed and could not be recovered."""

    default_code = 80008


# Every documented code with its short message. docs/protocol.md lists the same table;
# tests/test_errors.py checks that the two agree.
CODES: dict[int, str] = {
    40000: "bad request",
    40001: "invalid JSON",
    40002: "unknown action",
    40003: "invalid or missing field",
    40004: "binary frames are not supported",
    40005: "not connected: send connect first",
    40006: "already connected",
    40007: "invalid channel name",
    40008: "channel not attached",
    40009: "unsupported protocol version",
    40010: "presence requires a client id",
    40011: "data nested too deeply",
    40100: "unauthorized",
    40101: "unknown or invalid API key",
    40102: "malformed token",
    40103: "token signature invalid",
    40104: "token algorithm not allowed",
    40105: "token signed with an unknown key",
    40106: "no credentials given",
    40107: "client id does not match the credentials",
    40108: "key revoked",
    40140: "token expired",
    40170: "auth_callback failed",
    40300: "operation not permitted by capability",
    40301: "origin not allowed",
    40400: "not found",
    40401: "unknown or expired recovery key",
    40800: "request timed out",
    40801: "connect timed out",
    42900: "rate limit exceeded",
    42901: "message too large",
    42902: "frame too large",
    42903: "slow consumer: outbound buffer full",
    42904: "too many protocol errors",
    42905: "publish queue full",
    42906: "too many attached channels",
    42907: "subscription buffer overflow",
    42908: "too many channels on this broker",
    42909: "too many channels created by this client",
    42910: "too many presence memberships",
    42911: "too many connections",
    42912: "too many connection attempts",
    50000: "internal server error",
    50001: "server shutting down",
    50002: "channel history lost by the backplane: resume to learn what was lost",
    80000: "connection failed",
    80001: "connection closed",
    80002: "connection suspended",
    80003: "disconnected",
    80004: "transport refused (the WebSocket upgrade was refused)",
    80008: "continuity lost",
}

_RANGES: list[tuple[int, int, type[RtkitError]]] = [
    (40000, 40099, ProtocolError),
    (40140, 40149, TokenExpired),
    (40101, 40139, InvalidCredentials),
    (40100, 40199, AuthError),
    (40300, 40399, CapabilityError),
    (40400, 40499, NotFound),
    (40800, 40899, RequestTimeout),
    (42900, 42999, LimitExceeded),
    (50000, 50099, ServerError),
    (80000, 80000, ConnectionFailed),
    (80004, 80004, ConnectionFailed),
    (80001, 80001, ConnectionClosed),
    (80002, 80002, ConnectionSuspended),
    (80003, 80003, Disconnected),
    (80008, 80008, ContinuityLost),
    (80000, 80099, ConnectionError_),
]


def describe(code: int) -> str:
    """The documented short message for ``code``."""
    return CODES.get(code, "error")


def class_for_code(code: int) -> type[RtkitError]:
    """The exception class that carries ``code``."""
    for low, high, cls in _RANGES:
        if low <= code <= high:
            return cls
    return RtkitError


def error(code: int, message: str | None = None) -> RtkitError:
    """Build the right exception for ``code``; ``message`` defaults to the documented one."""
    return class_for_code(code)(message, code=code)


def error_from_wire(obj: object) -> RtkitError:
    """Turn a wire ``error`` object into an exception, tolerating malformed input."""
    if isinstance(obj, dict):
        code = obj.get("code")
        message = obj.get("message")
        if isinstance(code, int) and not isinstance(code, bool):
            return error(code, message if isinstance(message, str) else None)
    return ProtocolError("malformed error object", code=40003)
