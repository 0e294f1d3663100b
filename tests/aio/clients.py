"""Making test clients against a broker and its fault proxy, all closed at the end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import rtkit
from tests.conftest import within


class ClientFactory:
    """``await make(**options)``: a client of ``srv`` through ``px`` (``direct=True``: not
    through it; ``url=``: elsewhere), with the root key unless credentials are given, the
    ``defaults`` under the options, connected unless ``connect=False``."""

    def __init__(self, srv: rtkit.Server, px: rtkit.chaos.FaultProxy,
                 defaults: dict[str, Any]) -> None:
        self.srv, self.px, self.defaults = srv, px, defaults
        self.clients: list[rtkit.Client] = []

    async def __call__(self, connect: bool = True, direct: bool = False,
                       **kwargs: Any) -> rtkit.Client:
        opts = {**self.defaults, **kwargs}
        if not {"key", "token", "auth_callback"} & opts.keys():
            opts["key"] = self.srv.root_key
        url = opts.pop("url", self.srv.url if direct else self.px.url)
        client = rtkit.Client(url, **opts)
        self.clients.append(client)
        if connect:
            await within(client.connect())
        return client


@contextlib.asynccontextmanager
async def client_factory(srv: rtkit.Server, px: rtkit.chaos.FaultProxy,
                         defaults: dict[str, Any]) -> AsyncIterator[ClientFactory]:
    """A :class:`ClientFactory` whose clients are closed on the way out."""
    factory = ClientFactory(srv, px, defaults)
    try:
        yield factory
    finally:
        for client in factory.clients:
            await client.close()
