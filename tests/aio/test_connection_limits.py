"""Connection-level limits of an open room, decided at the WebSocket handshake: connections
in all and per address, the attempt rate per address, allowed origins; and the auth timeout."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import rtkit
from tests.conftest import eventually, within


async def refused(url: str, **kwargs: object) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        await within(ws_connect(url, **kwargs))  # type: ignore[arg-type]
    return info.value.response.status_code, info.value.response.body.decode()


async def open_ws(url: str, **kwargs: object) -> ClientConnection:
    return await within(ws_connect(url, **kwargs))  # type: ignore[arg-type,no-any-return]


async def test_connections_per_address_and_in_all_are_limited() -> None:
    with rtkit.serve(max_connections_per_address=2) as srv:
        first, second = await open_ws(srv.url), await open_ws(srv.url)
        status, body = await refused(srv.url)
        assert status == 503 and body.startswith("42911")
        await first.close()
        await eventually(lambda: srv.stats()["resources"]["connections"]["used"] == 1,
                         what="the slot released")
        third = await open_ws(srv.url)  # a freed slot can be used again
        res = srv.stats()["resources"]
        assert res["connections_per_address"] == {"used": 2, "limit": 2}
        assert srv.stats()["refused_connections"] == 1
        await second.close()
        await third.close()
    with rtkit.serve(max_connections=1) as srv:
        only = await open_ws(srv.url)
        status, body = await refused(srv.url)
        assert status == 503 and body.startswith("42911")
        await only.close()


async def test_connection_attempts_per_address_are_rate_limited() -> None:
    with rtkit.serve(connection_attempt_rate=0.5, connection_attempt_burst=3) as srv:
        opened = [await open_ws(srv.url) for _ in range(3)]
        status, body = await refused(srv.url)
        assert status == 429 and body.startswith("42912")
        for ws in opened:
            await ws.close()


async def test_allowed_origins_keep_other_sites_out() -> None:
    with rtkit.serve(allowed_origins=["https://room.example"]) as srv:
        status, body = await refused(srv.url, origin="https://evil.example")
        assert status == 403 and body.startswith("40301")
        ok = await open_ws(srv.url, origin="https://room.example")
        plain = await open_ws(srv.url)  # no Origin: not a browser, not restricted
        for ws in (ok, plain):
            await ws.send(json.dumps({"action": "connect", "ref": 1, "key": srv.root_key}))
            assert json.loads(await within(ws.recv()))["action"] == "connected"
            await ws.close()


async def test_a_silent_connection_is_closed_after_the_auth_timeout() -> None:
    with rtkit.serve(auth_timeout=0.3) as srv:
        ws = await open_ws(srv.url)
        reply = json.loads(await within(ws.recv()))
        assert reply["error"]["code"] == 40005 and reply["fatal"]
        with pytest.raises(ConnectionClosed):
            await within(ws.recv())
        await asyncio.sleep(0)
