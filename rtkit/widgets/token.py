"""TokenInspector: what a token grants, when it expires, when it will be renewed, and what
happened to it lately (expiries, renewals, reconnects)."""

from __future__ import annotations

import html
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from rtkit.aio.client import Client
from rtkit.core.states import StateChange
from rtkit.core.tokens import TokenClaims, inspect_token
from rtkit.errors import RtkitError
from rtkit.widgets.base import TABLE_CSS, LiveWidget, clock, error_html, ok_html

EXPIRED = 40140


@dataclass(frozen=True)
class TokenEvent:
    at: float
    kind: str  # "expired", "renewed", "disconnected", "connected", "error"
    text: str


class TokenHistory:
    """The view-model of :class:`TokenInspector`: a short history of what happened to a
    client's token, built from the public client API only (``on_state_change``,
    ``on_error``, ``state``, ``token_expires``, ``token_source.renewals``). Call
    :meth:`poll` now and then (the widget does, on every redraw): renewals are noticed by
    their effect, a new renewal count or a new expiry time."""

    def __init__(self, client: Any, limit: int = 6) -> None:
        self.client = client
        self.events: deque[TokenEvent] = deque(maxlen=limit)
        self._renewals = self._count()
        self._expires: float | None = client.token_expires
        self._expired_at = float("-inf")
        self._dropped_at = float("-inf")
        self._reconnecting = False

    def _count(self) -> int:
        src = self.client.token_source
        return int(src.renewals) if src is not None else 0

    def add(self, kind: str, text: str, at: float | None = None) -> None:
        self.events.append(TokenEvent(time.time() if at is None else at, kind, text))

    def on_error(self, err: RtkitError) -> None:
        if err.code == EXPIRED:
            self._expired(time.time())
        elif 40100 <= err.code < 40200:
            self.add("error", f"[{err.code}] {err.message}")

    def on_state_change(self, change: StateChange) -> None:
        self.poll(change.at)  # a renewal made while reconnecting comes before "connected"
        state = change.current.value
        code = change.error.code if change.error is not None else None
        if code == EXPIRED:
            self._expired(change.at)
        if state in ("disconnected", "suspended", "failed"):
            self._dropped_at, self._reconnecting = change.at, True
            self.add("disconnected", f"{state}{f' [{code}]' if code else ''}: {change.reason}",
                     change.at)
        elif state == "connected" and self._reconnecting:
            self._reconnecting = False
            self.add("connected", change.reason, change.at)

    def _expired(self, at: float) -> None:
        if at - self._expired_at > 1.0:  # the error and the state change both report it
            self._expired_at = at
            self.add("expired", f"the token expired ({EXPIRED}): the broker ended the session",
                     at)

    def poll(self, now: float | None = None) -> None:
        """Record a renewal if one happened since the last call."""
        now = time.time() if now is None else now
        count, expires = self._count(), self.client.token_expires
        if count == self._renewals and expires == self._expires:
            return
        self._renewals, self._expires = count, expires
        in_band = self.client.state.value == "connected" and now - self._dropped_at > 3.0
        how = " in-band (the connection stayed up)" if in_band else ""
        left = f": the new token expires in {expires - now:.1f} s" if expires else ""
        self.add("renewed", f"new token from auth_callback{how}{left}", now)

    def rows(self) -> list[TokenEvent]:
        """Newest first."""
        return list(reversed(self.events))


class TokenInspector(LiveWidget):
    """Shows the client id, capabilities and expiry (live countdown) of ``client``'s token
    (or of a bare ``token`` string), the next renewal, the latest expiries and renewals, and
    buttons to renew now and to expire now (the latter needs the ``server``: the broker
    then ends the session with 40140, and the client gets a new token from its
    ``auth_callback`` and resumes)."""

    def __init__(self, client: Client | None = None, *, token: str | None = None,
                 server: Any = None, rate: float = 4.0) -> None:
        if client is None and token is None:
            raise ValueError("give a client or a token")
        self.client = client
        self.server = server
        self._token = token
        self.history = TokenHistory(client) if client is not None else None
        self.view = w.HTML()
        self.events = w.HTML()
        self.status = w.HTML()
        renewable = client is not None and client.token_source is not None \
            and client.token_source.renewable
        self.renew_button = w.Button(description="Renew now", icon="refresh",
                                     disabled=not renewable)
        self.expire_button = w.Button(description="Expire now", icon="hourglass-end",
                                      disabled=client is None or server is None
                                      or client.token_source is None)
        self.renew_button.on_click(lambda _: self.renew())
        self.expire_button.on_click(lambda _: self.expire())
        super().__init__([self.view, w.HBox([self.renew_button, self.expire_button]),
                          self.status, self.events], rate=rate)
        self.add_class("rtkit-token-inspector")
        if client is not None and self.history is not None:
            self.on_cleanup(client.on_state_change(self.history.on_state_change))
            self.on_cleanup(client.on_error(self.history.on_error))
            self.follow(client)
        self.refresh()

    def claims(self) -> TokenClaims | None:
        if self.client is not None:
            src = self.client.token_source
            return src.claims if src is not None else None
        return inspect_token(self._token) if self._token else None

    def renew(self) -> Any:
        client = self.client
        if client is None or client.token_source is None:
            return None
        self.status.value = "renewing..."
        return self.run(client.renew_token(), done=lambda _: self._ok("renewed"),
                        failed=self._failed)

    def expire(self) -> None:
        if self.client is None or self.server is None:
            return
        n = self.server.expire_tokens(self.client.client_id)
        self._ok(f"expired the token of {n} connection(s): watch the expiry and the renewal "
                 f"below")

    def _ok(self, text: str) -> None:
        self.status.value = ok_html(text)
        self.changed()

    def _failed(self, exc: BaseException) -> None:
        self.status.value = error_html(exc)

    def tick(self) -> None:
        self.changed()  # the countdown moves

    def render(self) -> None:
        if self.history is not None:
            self.history.poll()
            self.events.value = TABLE_CSS + (
                '<table class="rtkit-table rtkit-token-events"><tr><th>time</th><th>event</th>'
                "<th>details</th></tr>" + "".join(
                    f"<tr><td>{clock(e.at)}</td><td><b>{e.kind}</b></td>"
                    f'<td class="rtkit-wrap">{html.escape(e.text)}</td></tr>'
                    for e in self.history.rows()) + "</table>"
                if self.history.events else "")
        claims = self.claims()
        if claims is None:
            self.view.value = ("<i>no token: this client authenticates with an API key "
                               "(trusted code only), so nothing expires</i>")
            return
        now = time.time()
        left = claims.expires_at - now
        caps = "".join(f"<tr><td><code>{html.escape(p)}</code></td><td>{', '.join(ops)}</td>"
                       f"</tr>" for p, ops in claims.capability.rules.items())
        renew_at = self.client.next_renewal if self.client is not None else None
        renewal = (f"in {renew_at - now:.1f} s" if renew_at is not None and renew_at > now
                   else "now" if renew_at is not None else "never (no auth_callback)")
        src = self.client.token_source if self.client is not None else None
        renewals = src.renewals if src is not None else 0
        color = "#b02a37" if left <= 0 else "#fd7e14" if left < 10 else "#146c43"
        self.view.value = TABLE_CSS + (
            f"<div>token for client id <code>{html.escape(claims.client_id or '(anonymous)')}"
            f"</code> · signed with key <code>{html.escape(claims.key_id)}</code></div>"
            f'<div>expires in <b class="rtkit-countdown" style="color:{color}">'
            f"{max(0.0, left):.1f} s</b> · next renewal {renewal} · tokens from auth_callback "
            f"so far: {renewals}</div>"
            f'<table class="rtkit-table rtkit-capabilities"><tr><th>channels</th>'
            f"<th>operations</th></tr>{caps}</table>")
