"""Tokens and capabilities: pure checks with an explicit ``now``."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rtkit.core.tokens import (
    ApiKey,
    Capability,
    KeyStore,
    inspect_token,
    issue_token,
    normalize_capabilities,
    pattern_matches,
    verify_token,
)
from rtkit.errors import InvalidCredentials, TokenExpired

NOW = 1_700_000_000.0
ROOT = ApiKey("root", "s3cret-" * 5)
KEYS = KeyStore([ROOT])


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("*", "anything:at:all", True),
        ("chat:*", "chat:lobby", True),
        ("chat:*", "chat:", True),
        ("chat:*", "chats:lobby", False),
        ("chat:lobby", "chat:lobby", True),
        ("chat:lobby", "chat:lobby2", False),
        ("a.b", "aXb", False),  # dots are literal, not regex
        ("*:private", "alice:private", True),
        ("*:private", "alice:public", False),
    ],
)
def test_pattern_matching(pattern: str, channel: str, expected: bool) -> None:
    assert pattern_matches(pattern, channel) is expected


def test_capabilities_are_validated_and_star_means_all() -> None:
    assert normalize_capabilities({"x": ["*"]}) == {
        "x": ("publish", "subscribe", "history", "presence")}
    for bad in ({"x": ["fly"]}, {"x": "publish"}, {"": ["publish"]}, ["publish"], {1: ["publish"]}):
        with pytest.raises(ValueError):
            normalize_capabilities(bad)


def test_capability_allows() -> None:
    cap = Capability.of({"chat:*": ["subscribe", "publish"], "news": ["subscribe"]})
    assert cap.allows("publish", "chat:lobby")
    assert not cap.allows("publish", "news")
    assert cap.allows("subscribe", "news")
    assert not cap.allows("history", "chat:lobby")


def test_issue_and_verify() -> None:
    token = issue_token(ROOT, now=NOW, client_id="alice", capabilities={"chat:*": ["publish"]},
                        ttl=60)
    claims = verify_token(token, KEYS, NOW + 30)
    assert claims.client_id == "alice"
    assert claims.expires_at == pytest.approx(NOW + 60)
    assert claims.ttl(NOW + 30) == pytest.approx(30)
    assert claims.capability.allows("publish", "chat:x")
    assert not claims.capability.allows("subscribe", "chat:x")
    assert inspect_token(token).client_id == "alice"


def test_fractional_ttl_is_kept() -> None:
    token = issue_token(ROOT, now=NOW, ttl=2.5)
    assert verify_token(token, KEYS, NOW + 2.4).expires_at == pytest.approx(NOW + 2.5)
    with pytest.raises(TokenExpired) as info:
        verify_token(token, KEYS, NOW + 2.5)
    assert info.value.code == 40140


def test_forged_tokens_are_refused_with_their_own_codes() -> None:
    good = issue_token(ROOT, now=NOW, client_id="a", ttl=60)
    header, payload, sig = good.split(".")
    cases = {
        "not-a-jwt": 40102,
        "a.b.c": 40102,
        # alg: none, unsigned
        f"{_b64({'alg': 'none', 'kid': 'root'})}.{payload}.": 40104,
        # HS512 is not allowed either
        jwt.encode({"exp": NOW + 60}, ROOT.secret * 2, algorithm="HS512",
                   headers={"kid": "root"}): 40104,
        # signed with another secret
        jwt.encode({"exp": NOW + 60}, "wrong-secret-" * 3, algorithm="HS256",
                   headers={"kid": "root"}): 40103,
        # payload changed after signing (privilege escalation attempt)
        f"{header}.{_b64({'sub': 'a', 'cap': {'*': ['*']}, 'exp': NOW + 60})}.{sig}": 40103,
        # unknown key id / no key id
        jwt.encode({"exp": NOW + 60}, ROOT.secret, algorithm="HS256", headers={"kid": "x"}): 40105,
        jwt.encode({"exp": NOW + 60}, ROOT.secret, algorithm="HS256"): 40105,
        # well signed, but claims of the wrong type
        jwt.encode({"exp": "soon"}, ROOT.secret, algorithm="HS256", headers={"kid": "root"}): 40102,
        jwt.encode({"exp": NOW + 9, "cap": {"x": ["fly"]}}, ROOT.secret, algorithm="HS256",
                   headers={"kid": "root"}): 40102,
        jwt.encode({"exp": NOW + 9, "sub": 5}, ROOT.secret, algorithm="HS256",
                   headers={"kid": "root"}): 40102,
    }
    for token, code in cases.items():
        with pytest.raises(InvalidCredentials) as info:
            verify_token(token, KEYS, NOW)
        assert info.value.code == code, token


def test_expired_token() -> None:
    token = issue_token(ROOT, now=NOW, ttl=1)
    with pytest.raises(TokenExpired):
        verify_token(token, KEYS, NOW + 5)


def test_revoked_key_refuses_its_tokens_and_itself() -> None:
    key = ApiKey("team", "team-secret-" * 3, Capability.of({"*": ["*"]}))
    keys = KeyStore([ROOT, key])
    token = issue_token(key, now=NOW, ttl=60)
    keys.revoke("team")
    with pytest.raises(InvalidCredentials) as info:
        verify_token(token, keys, NOW)
    assert info.value.code == 40108
    with pytest.raises(InvalidCredentials) as info:
        keys.check_key(key.value)
    assert info.value.code == 40108


def test_check_key() -> None:
    assert KEYS.check_key(ROOT.value) is ROOT
    for bad in ("root:wrong", "nobody:" + "s3cret-" * 5, "garbage", ""):
        with pytest.raises(InvalidCredentials) as info:
            KEYS.check_key(bad)
        assert info.value.code == 40101


def test_token_capability_is_limited_by_its_key() -> None:
    key = ApiKey("team", "team-secret-" * 3, Capability.of({"team:*": ["publish", "subscribe"]}))
    keys = KeyStore([key])
    token = issue_token(key, now=NOW, capabilities={"*": ["*"]}, ttl=60)
    cap = verify_token(token, keys, NOW).capability
    assert cap.allows("publish", "team:a")
    assert not cap.allows("publish", "other")
    assert not cap.allows("history", "team:a")


def test_issue_token_validates_arguments() -> None:
    with pytest.raises(ValueError):
        issue_token(ROOT, now=NOW, ttl=0)
    with pytest.raises(ValueError):
        issue_token(ROOT, now=NOW, ttl=10 ** 9)
    with pytest.raises(ValueError):
        issue_token(ROOT, now=NOW, capabilities={"x": ["fly"]})
    with pytest.raises(ValueError):
        issue_token(ROOT, now=NOW, client_id="")


def test_api_key_parse() -> None:
    assert ApiKey.parse("abc:" + "x" * 32).key_id == "abc"
    for bad in ("nocolon", ":" + "x" * 32, "abc:short"):
        with pytest.raises(ValueError):
            ApiKey.parse(bad)


def _reference_match(pattern: str, channel: str) -> bool:
    import re

    parts = (".*" if p == "*" else re.escape(p) for p in re.split(r"(\*)", pattern))
    return re.fullmatch("".join(parts), channel, re.DOTALL) is not None


@settings(max_examples=500)
@given(pattern=st.text(alphabet="ab*", max_size=8), channel=st.text(alphabet="ab", max_size=10))
def test_linear_pattern_matching_agrees_with_a_regex(pattern: str, channel: str) -> None:
    assume(pattern)
    assert pattern_matches(pattern, channel) is _reference_match(pattern, channel)


@pytest.mark.parametrize("claims", [
    {"exp": NOW + 10 * 365 * 86400}, {"nbf": NOW + 3600}, {"exp": float("inf")},
    {"exp": 10**400}, {"iat": NOW + 3600, "exp": NOW + 3700}, {"sub": "x" * 129},
    {"sub": "\ud800"}, {"cap": {"\udc00*": ["publish"]}},
])
def test_claims_out_of_range_are_malformed(claims: dict) -> None:
    payload = {"sub": "a", "cap": {"*": ["*"]}, "iat": NOW, "exp": NOW + 60, **claims}
    token = jwt.encode(payload, ROOT.secret, algorithm="HS256", headers={"kid": "root"})
    with pytest.raises(InvalidCredentials) as info:
        verify_token(token, KEYS, NOW)
    assert info.value.code == 40102


def test_a_128_character_client_id_and_a_24_hour_token_are_fine() -> None:
    token = issue_token(ROOT, now=NOW, client_id="x" * 128, ttl=24 * 3600)
    assert verify_token(token, KEYS, NOW).client_id == "x" * 128
