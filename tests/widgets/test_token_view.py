"""TokenInspector's view-model, driven by a stand-in client: expiry, renewal, new countdown.

The stand-in has the public client API the inspector reads (``token_source``,
``token_expires``, ``next_renewal``, ``state``, ``on_state_change``, ``on_error``,
``renew_token``), so the story "expired (40140) → disconnected → renewed via auth_callback
→ connected, with a new countdown" is checked without a broker or a clock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import rtkit
from rtkit import ConnectionState as S
from rtkit import Trigger
from rtkit.core.tokens import Capability, TokenClaims
from rtkit.widgets import TokenHistory, TokenInspector


@dataclass
class Source:
    claims: TokenClaims
    renewals: int = 1
    renewable: bool = True


@dataclass
class StandIn:
    """Just the public client surface the inspector uses."""

    token_source: Source
    state: S = S.CONNECTED
    client_id: str = "learner-2"
    next_renewal: float | None = None
    listeners: list[Callable[[Any], Any]] = field(default_factory=list)
    error_listeners: list[Callable[[Any], Any]] = field(default_factory=list)

    @property
    def token_expires(self) -> float:
        return self.token_source.claims.expires_at

    def on_state_change(self, cb: Callable[[Any], Any]) -> Callable[[], None]:
        self.listeners.append(cb)
        return lambda: self.listeners.remove(cb)

    def on_error(self, cb: Callable[[Any], Any]) -> Callable[[], None]:
        self.error_listeners.append(cb)
        return lambda: self.error_listeners.remove(cb)

    def go(self, state: S, at: float, reason: str, error: rtkit.RtkitError | None = None,
           trigger: Trigger = Trigger.TRANSPORT_LOST) -> None:
        change = rtkit.StateChange(self.state, state, trigger, reason, at, error)
        self.state = state
        for cb in list(self.listeners):
            cb(change)

    def fail(self, error: rtkit.RtkitError) -> None:
        for cb in list(self.error_listeners):
            cb(error)

    def renew(self, now: float, ttl: float) -> None:
        """What auth_callback does for the client: a new token, one more renewal."""
        self.token_source = Source(claims(now, ttl), self.token_source.renewals + 1)
        self.next_renewal = now + ttl * 2 / 3

    async def renew_token(self) -> str:
        self.renew(time.time(), 10)
        return "token"


def claims(now: float, ttl: float) -> TokenClaims:
    return TokenClaims("learner-2", Capability.of({"chat:*": ["subscribe"]}), now, now + ttl,
                       "root")


def kinds(history: TokenHistory) -> list[str]:
    return [e.kind for e in history.events]


def test_expiry_then_renewal_then_reconnect_is_told_in_order() -> None:
    t0 = 1_000.0
    client = StandIn(Source(claims(t0, 10)))
    history = TokenHistory(client)
    client.on_state_change(history.on_state_change)
    client.on_error(history.on_error)
    history.poll(t0 + 1)
    assert not history.events

    expired = rtkit.TokenExpired("token expired", code=40140)
    client.fail(expired)  # reported twice (error and state change): told once
    client.go(S.DISCONNECTED, t0 + 2, "token expired", expired)
    client.renew(t0 + 2.05, 10)
    history.poll(t0 + 2.1)
    client.go(S.CONNECTING, t0 + 2.1, "retry #1", trigger=Trigger.RETRY)
    client.go(S.CONNECTED, t0 + 2.2, "connected as c1 (resumed)", trigger=Trigger.CONNECTED)
    assert kinds(history) == ["expired", "disconnected", "renewed", "connected"]
    renewed = history.events[2]
    assert "auth_callback" in renewed.text and "in-band" not in renewed.text
    assert "expires in 9.9 s" in renewed.text  # the new countdown
    assert "40140" in history.events[0].text and "[40140]" in history.events[1].text
    assert history.rows()[0].kind == "connected"  # newest first
    history.poll(t0 + 3)
    assert len(history.events) == 4  # nothing new: nothing added


def test_a_renewal_on_a_live_connection_is_in_band() -> None:
    t0 = 2_000.0
    client = StandIn(Source(claims(t0, 10)))
    history = TokenHistory(client, limit=3)
    client.renew(t0 + 6.7, 10)
    history.poll(t0 + 6.7)
    assert kinds(history) == ["renewed"]
    assert "in-band (the connection stayed up)" in history.events[0].text
    for i in range(5):  # bounded
        client.renew(t0 + 10 + i, 10)
        history.poll(t0 + 10 + i)
    assert len(history.events) == 3


def test_token_errors_other_than_expiry_are_listed() -> None:
    client = StandIn(Source(claims(time.time(), 10)))
    history = TokenHistory(client)
    history.on_error(rtkit.AuthError("auth_callback failed: boom", code=40170))
    history.on_error(rtkit.CapabilityError("not a token problem"))
    assert kinds(history) == ["error"] and "[40170]" in history.events[0].text


async def test_inspector_shows_countdown_events_and_who_signed() -> None:
    now = time.time()
    client = StandIn(Source(claims(now, 10)), next_renewal=now + 6.6)
    inspector = TokenInspector(client, server=None)  # type: ignore[arg-type]
    view = inspector.view.value
    assert "token for client id <code>learner-2</code>" in view
    assert "signed with key <code>root</code>" in view
    assert "rtkit-countdown" in view and "next renewal in 6." in view
    assert "chat:*" in view and inspector.expire_button.disabled  # no server to expire with
    expired = rtkit.TokenExpired("token expired", code=40140)
    client.go(S.DISCONNECTED, time.time(), "token expired", expired)
    client.renew(time.time(), 10)
    client.go(S.CONNECTED, time.time(), "connected as c2 (resumed)", trigger=Trigger.CONNECTED)
    inspector.refresh()
    events = inspector.events.value
    order = [events.index(f"<b>{kind}</b>") for kind in
             ("connected", "renewed", "disconnected", "expired")]
    assert order == sorted(order)  # newest first
    assert re.search(r'rtkit-countdown[^>]*>(9\.9|10\.0) s<', inspector.view.value)  # new one
    await inspector.renew()  # type: ignore[misc]
    assert "renewed" in inspector.status.value
    inspector.close()
    assert not client.listeners and not client.error_listeners  # unsubscribed on close


def test_a_key_client_has_no_token_to_show() -> None:
    with rtkit.serve() as srv:
        c = rtkit.Client(srv.url, key=srv.root_key)
        inspector = TokenInspector(c)
        assert "API key" in inspector.view.value and "nothing expires" in inspector.view.value
        assert inspector.renew_button.disabled and inspector.expire_button.disabled
        inspector.close()
