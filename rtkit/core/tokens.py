"""API keys, capabilities and tokens (JWT, HS256) as pure functions of their inputs and ``now``.

* An **API key** ``"<key_id>:<secret>"`` is for trusted code: it carries its own capabilities
  (the broker's root key carries every capability) and signs tokens.
* A **token** is a JWT signed with a key's secret (header ``kid`` = key id) whose claims are
  ``sub`` (client id, optional, 1-128 characters), ``cap`` (capabilities), ``iat`` and ``exp``
  (seconds since the Unix epoch; fractions allowed; ``exp - iat`` at most :data:`MAX_TTL`) and
  optionally ``nbf`` (not valid before). Effective capabilities are the token's *and* its key's.
* **Capabilities** map channel patterns to operations. In a pattern, ``*`` matches any run of
  characters, so ``"chat:*"`` covers ``chat:lobby`` and ``"*"`` covers every channel. The
  operations are ``publish``, ``subscribe``, ``history`` and ``presence``; ``"*"`` means all.
  Matching takes time linear in the lengths of pattern and name (no backtracking).
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jwt

from rtkit.errors import InvalidCredentials, TokenExpired

OPERATIONS = ("publish", "subscribe", "history", "presence")
ALGORITHM = "HS256"
MAX_TTL = 24 * 3600.0
MIN_SECRET = 32
MAX_CLIENT_ID = 128
#: How far in the future a token's ``iat`` may be (clocks of issuer and broker differ a little).
CLOCK_SKEW = 60.0

CapabilityMap = Mapping[str, Iterable[str]]


@lru_cache(maxsize=4096)
def _segments(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("*"))


def pattern_matches(pattern: str, channel: str) -> bool:
    """Whether a capability pattern covers ``channel`` (``*`` matches any characters).

    The literal pieces between stars are found left to right, each at its first place after
    the previous one: for patterns whose only wildcard is ``*`` that greedy choice is always
    right, so matching never backtracks (time linear in the lengths, unlike a regex).
    """
    parts = _segments(pattern)
    if len(parts) == 1:
        return pattern == channel
    first, last = parts[0], parts[-1]
    if len(first) + len(last) > len(channel):
        return False
    if not channel.startswith(first) or not channel.endswith(last):
        return False
    pos, end = len(first), len(channel) - len(last)
    for part in parts[1:-1]:
        if part:
            found = channel.find(part, pos, end)
            if found < 0:
                return False
            pos = found + len(part)
    return True


def normalize_capabilities(caps: object) -> dict[str, tuple[str, ...]]:
    """Validate a capability map and return it with sorted, de-duplicated operations.

    Raises :class:`ValueError` naming the bad entry.
    """
    if not isinstance(caps, Mapping):
        raise ValueError("capabilities must be a mapping of channel pattern to operations")
    out: dict[str, tuple[str, ...]] = {}
    for pattern, ops in caps.items():
        if not isinstance(pattern, str) or not pattern or len(pattern) > 256 or not _valid(pattern):
            raise ValueError(f"invalid channel pattern {pattern!r}")
        if isinstance(ops, str) or not isinstance(ops, Iterable):
            raise ValueError(f"operations for {pattern!r} must be a list of names")
        names = set()
        for op in ops:
            if op != "*" and op not in OPERATIONS:
                raise ValueError(
                    f"unknown operation {op!r} for {pattern!r}; use one of {', '.join(OPERATIONS)}"
                )
            names.add(op)
        out[pattern] = tuple(OPERATIONS) if "*" in names else tuple(sorted(names))
    return out


def _valid(text: str) -> bool:
    """Valid Unicode (no lone surrogates), so it can be encoded as UTF-8 and sent anywhere."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Capability:
    """A checked capability map with a fast ``allows(operation, channel)``."""

    rules: dict[str, tuple[str, ...]]
    #: A token's capability is also limited by the capability of the key that signed it.
    within: Capability | None = None

    @classmethod
    def of(cls, caps: CapabilityMap) -> Capability:
        return cls(normalize_capabilities(caps))

    @classmethod
    def everything(cls) -> Capability:
        return cls({"*": OPERATIONS})

    def allows(self, operation: str, channel: str) -> bool:
        """Whether ``operation`` is permitted on ``channel``."""
        own = any(
            operation in ops and pattern_matches(pattern, channel)
            for pattern, ops in self.rules.items()
        )
        return own and (self.within is None or self.within.allows(operation, channel))

    def grants_everything(self) -> bool:
        return self.within is None and self.rules.get("*") == OPERATIONS


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key: ``value`` is what a client presents (``"<key_id>:<secret>"``)."""

    key_id: str
    secret: str
    capability: Capability = field(default_factory=Capability.everything)

    @property
    def value(self) -> str:
        return f"{self.key_id}:{self.secret}"

    @classmethod
    def generate(cls, key_id: str | None = None, capability: Capability | None = None) -> ApiKey:
        return cls(
            key_id=key_id or "k" + secrets.token_hex(4),
            secret=secrets.token_urlsafe(32),
            capability=capability or Capability.everything(),
        )

    @classmethod
    def parse(cls, value: str, capability: Capability | None = None) -> ApiKey:
        """Parse ``"<key_id>:<secret>"``; raises :class:`ValueError` if malformed.

        The secret signs HS256 tokens, so it must have at least 32 characters (RFC 7518).
        """
        key_id, sep, secret = value.partition(":")
        if not sep or not key_id or len(secret) < MIN_SECRET:
            raise ValueError(
                f"an API key looks like '<key_id>:<secret>' with a secret of at least "
                f"{MIN_SECRET} characters")
        return cls(key_id, secret, capability or Capability.everything())


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a token grants. Times are seconds since the Unix epoch."""

    client_id: str | None
    capability: Capability
    issued_at: float
    expires_at: float
    key_id: str
    #: The ``nbf`` claim: not valid before this time (None when absent).
    not_before: float | None = None

    def ttl(self, now: float) -> float:
        """Seconds left before expiry (negative once expired)."""
        return self.expires_at - now


def renewal_time(issued_at: float, expires_at: float, max_margin: float = 30.0) -> float:
    """When a client should renew a token: a third of its lifetime before expiry, at most
    ``max_margin`` seconds before (a 1-hour token renews 30 s early, a 3-second one 1 s early).
    """
    lifetime = max(0.0, expires_at - issued_at)
    return expires_at - min(max_margin, lifetime / 3)


class KeyStore:
    """The broker's API keys, by key id, with revocation."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._keys: dict[str, ApiKey] = {k.key_id: k for k in keys}
        self._revoked: set[str] = set()

    def add(self, key: ApiKey) -> None:
        self._keys[key.key_id] = key
        self._revoked.discard(key.key_id)

    def revoke(self, key_id: str) -> None:
        """Refuse the key and every token it signed from now on."""
        self._revoked.add(key_id)

    @property
    def revoked(self) -> frozenset[str]:
        return frozenset(self._revoked)

    def get(self, key_id: str) -> ApiKey:
        if key_id in self._revoked:
            raise InvalidCredentials(code=40108)
        key = self._keys.get(key_id)
        if key is None:
            raise InvalidCredentials(code=40105)
        return key

    def check_key(self, value: str) -> ApiKey:
        """Authenticate an API key string; raises 40101 (unknown) or 40108 (revoked)."""
        key_id, _, secret = value.partition(":")
        key = self._keys.get(key_id)
        if key is None or not hmac.compare_digest(key.secret.encode(), secret.encode()):
            raise InvalidCredentials(code=40101)
        if key_id in self._revoked:
            raise InvalidCredentials(code=40108)
        return key


def issue_token(
    key: ApiKey,
    *,
    now: float,
    client_id: str | None = None,
    capabilities: CapabilityMap | None = None,
    ttl: float = 3600.0,
) -> str:
    """Sign a token with ``key``. ``capabilities`` defaults to the key's own."""
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 0 and {MAX_TTL:.0f} seconds")
    if client_id is not None and (not isinstance(client_id, str) or not 1 <= len(client_id) <= 128):
        raise ValueError("client_id must be a string of 1 to 128 characters")
    cap = key.capability.rules if capabilities is None else normalize_capabilities(capabilities)
    claims: dict[str, Any] = {
        "cap": {p: list(ops) for p, ops in cap.items()},
        "iat": round(now, 3),
        "exp": round(now + ttl, 3),
    }
    if client_id is not None:
        claims["sub"] = client_id
    return jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.key_id})


def _time_claim(payload: dict[str, Any], name: str, required: bool) -> float | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidCredentials(f"token claim {name!r} must be a number", code=40102)
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or not 0 <= seconds < 1e11:
        raise InvalidCredentials(f"token claim {name!r} is out of range", code=40102)
    return seconds


def _claims_from(payload: dict[str, Any], key_id: str) -> TokenClaims:
    """The claims of a decoded payload, each checked for type and range (all ``40102``)."""
    sub = payload.get("sub")
    if sub is not None and (not isinstance(sub, str) or not 1 <= len(sub) <= MAX_CLIENT_ID
                            or not _valid(sub)):
        raise InvalidCredentials(
            f"token claim 'sub' must be a string of 1 to {MAX_CLIENT_ID} characters", code=40102)
    exp = _time_claim(payload, "exp", True)
    iat = _time_claim(payload, "iat", True)
    nbf = _time_claim(payload, "nbf", False)
    assert exp is not None and iat is not None
    if not 0 < exp - iat <= MAX_TTL + 0.001:  # issue_token rounds to the ms
        raise InvalidCredentials(
            f"token lifetime (exp - iat) must be between 0 and {MAX_TTL:.0f} seconds", code=40102)
    try:
        capability = Capability.of(payload.get("cap", {}))
    except ValueError as exc:
        raise InvalidCredentials(f"token claim 'cap': {exc}", code=40102) from None
    return TokenClaims(sub, capability, iat, exp, key_id, nbf)


def inspect_token(token: str) -> TokenClaims:
    """Read a token's claims *without* checking its signature (for display only)."""
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidCredentials(f"malformed token: {exc}", code=40102) from None
    return _claims_from(payload, str(header.get("kid", "")))


def verify_token(token: str, keys: KeyStore, now: float) -> TokenClaims:
    """Check a token's form, algorithm, key, signature and expiry; return its claims.

    Raises :class:`InvalidCredentials` (40102 malformed or a claim out of range - ``iat``
    more than :data:`CLOCK_SKEW` ahead, before ``nbf`` -, 40103 bad signature, 40104 algorithm
    not allowed - ``alg: none`` included, 40105 unknown key, 40108 revoked key) or
    :class:`TokenExpired` (40140). ``now`` is wall-clock time (seconds since the epoch).
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidCredentials(f"malformed token: {exc}", code=40102) from None
    if header.get("alg") != ALGORITHM:
        raise InvalidCredentials(f"token algorithm {header.get('alg')!r} not allowed", code=40104)
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidCredentials("token header has no key id ('kid')", code=40105)
    key = keys.get(kid)
    try:
        payload = jwt.decode(
            token,
            key.secret,
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        raise InvalidCredentials(code=40103) from None
    except jwt.PyJWTError as exc:
        raise InvalidCredentials(f"malformed token: {exc}", code=40102) from None
    if not isinstance(payload, dict):
        raise InvalidCredentials("malformed token: claims are not an object", code=40102)
    claims = _claims_from(payload, kid)
    if claims.issued_at > now + CLOCK_SKEW:
        raise InvalidCredentials("token issued in the future ('iat')", code=40102)
    if claims.not_before is not None and now < claims.not_before:
        raise InvalidCredentials("token not valid yet ('nbf')", code=40102)
    if claims.expires_at <= now:
        raise TokenExpired(f"token expired {now - claims.expires_at:.3f} s ago")
    if key.capability.grants_everything():
        return claims
    # Effective capability: what the token asks for, within what its key may grant.
    capability = Capability(claims.capability.rules, within=key.capability)
    return TokenClaims(claims.client_id, capability, claims.issued_at, claims.expires_at, kid,
                       claims.not_before)
