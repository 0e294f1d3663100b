"""TokenInspector: what a token grants, when it expires, when it will be renewed."""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as w

from rtkit.aio.client import Client
from rtkit.core.tokens import TokenClaims, inspect_token
from rtkit.widgets.base import LiveWidget, error_html, ok_html


class TokenInspector(LiveWidget):
    """Shows the client id, capabilities and expiry (live countdown) of ``client``'s token
    (or of a bare ``token`` string), the next renewal, and buttons to renew now and to expire
    now (the latter needs the ``server``: the broker then ends the session with 40140 and the
    client renews and resumes)."""

    def __init__(self, client: Client | None = None, *, token: str | None = None,
                 server: Any = None, rate: float = 4.0) -> None:
        if client is None and token is None:
            raise ValueError("give a client or a token")
        self.client = client
        self.server = server
        self._token = token
        self.view = w.HTML()
        self.status = w.HTML()
        self.renew_button = w.Button(description="Renew now", icon="refresh",
                                     disabled=client is None or client.token_source is None
                                     or not client.token_source.renewable)
        self.expire_button = w.Button(description="Expire now", icon="hourglass-end",
                                      disabled=client is None or server is None)
        self.renew_button.on_click(lambda _: self.renew())
        self.expire_button.on_click(lambda _: self.expire())
        super().__init__([self.view, w.HBox([self.renew_button, self.expire_button]),
                          self.status], rate=rate)
        self.add_class("rtkit-token-inspector")
        if client is not None:
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
        self._ok(f"expired the token of {n} connection(s): watch the renewal")

    def _ok(self, text: str) -> None:
        self.status.value = ok_html(text)
        self.changed()

    def _failed(self, exc: BaseException) -> None:
        self.status.value = error_html(exc)

    def tick(self) -> None:
        self.changed()  # the countdown moves

    def render(self) -> None:
        claims = self.claims()
        if claims is None:
            self.view.value = "<i>no token (this client uses an API key)</i>"
            return
        now = time.time()
        left = claims.expires_at - now
        caps = "".join(f"<tr><td><code>{html.escape(p)}</code></td><td>{', '.join(ops)}</td>"
                       f"</tr>" for p, ops in claims.capability.rules.items())
        renew_at = self.client.next_renewal if self.client is not None else None
        renewal = (f"in {renew_at - now:.1f} s" if renew_at is not None and renew_at > now
                   else "now" if renew_at is not None else "never (no auth_callback)")
        renewals = self.client.token_source.renewals if self.client and \
            self.client.token_source else 0
        color = "#b02a37" if left <= 0 else "#fd7e14" if left < 10 else "#146c43"
        self.view.value = (
            f"<div>client id <code>{html.escape(claims.client_id or '(anonymous)')}</code>"
            f" · key <code>{html.escape(claims.key_id)}</code></div>"
            f'<div>expires in <b class="rtkit-countdown" style="color:{color}">'
            f"{max(0.0, left):.1f} s</b> · next renewal {renewal} · renewals {renewals}</div>"
            f'<table class="rtkit-capabilities"><tr><th>channels</th><th>operations</th></tr>'
            f"{caps}</table>")
