"""The client's WebSocket link against a scripted broker: rtkit's frame reader takes over
once the link is open; pings, fragments, binary frames, closes and broken framing still
behave as RFC 6455 and docs/protocol.md say."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import rtkit
from rtkit import ConnectionState as S
from tests.conftest import eventually, scaled, within

Script = Callable[[ServerConnection], Awaitable[None]]
KEY = "bench:" + "b" * 40


def message(*serials: int) -> str:
    return json.dumps({"action": "message", "channel": "c", "messages": [
        {"id": f"m{serial}", "name": "n", "data": {"i": serial}, "serial": serial,
         "timestamp": 1, "client_id": None} for serial in serials]})


async def broker(ws: ServerConnection, script: Script) -> None:
    """Answer connect, heartbeats and attach like a broker; after the attach, run ``script``
    (its frames arrive while this loop keeps answering)."""
    tasks: list[asyncio.Task[None]] = []
    with contextlib.suppress(ConnectionClosed):
        await answer(ws, script, tasks)


async def answer(ws: ServerConnection, script: Script, tasks: list[asyncio.Task[None]]) -> None:
    async for text in ws:
        frame = json.loads(text)
        action, ref = frame.get("action"), frame.get("ref")
        if action == "connect":
            await ws.send(json.dumps({
                "action": "connected", "ref": ref, "connection_id": "c1",
                "connection_key": "c1!k", "heartbeat_interval": 30_000,
                "connection_state_ttl": 120_000, "server_time": 1, "limits": {}}))
        elif action == "heartbeat" and ref is not None:
            await ws.send(json.dumps({"action": "heartbeat", "ref": ref}))
        elif action == "attach":
            await ws.send(json.dumps({"action": "attached", "ref": ref, "channel": "c",
                                      "serial": 0, "epoch": "e"}))
            tasks.append(asyncio.create_task(script(ws)))
        elif action == "close":
            await ws.send(json.dumps({"action": "closed", "ref": ref}))


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[rtkit.Client]]]:
    clients: list[rtkit.Client] = []
    servers: list[Any] = []

    async def start(script: Script) -> rtkit.Client:
        server = await serve(lambda ws: broker(ws, script), "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        client = rtkit.Client(f"ws://127.0.0.1:{port}/", key=KEY,
                              backoff=rtkit.Backoff(base=5.0, cap=5.0))
        clients.append(client)
        await within(client.connect())
        return client

    yield start
    for client in clients:
        await client.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_pings_fragments_and_binary_frames_once_open(scripted: Any) -> None:
    pongs: list[float] = []

    async def script(ws: ServerConnection) -> None:
        await ws.send(message(1))
        text = message(2)
        await ws.send([text[:10], text[10:30], text[30:]])  # one message in three fragments
        pongs.append(await asyncio.wait_for(await ws.ping(b"are you there"), scaled(5)))
        await ws.send(b"\x00binary")  # not text: reported, ignored
        await ws.send(message(3))

    client = await scripted(script)
    errors: list[rtkit.RtkitError] = []
    client.on_error(errors.append)
    got: list[int] = []
    await within(client.channel("c").subscribe(lambda m: got.append(m.serial)))
    await eventually(lambda: got == [1, 2, 3], what="three messages")
    assert len(pongs) == 1  # the ping was answered
    assert [e.code for e in errors] == [40004]
    assert client.state is S.CONNECTED


async def test_a_close_from_the_broker_maps_its_code(scripted: Any) -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send(message(1))
        await ws.close(4429, "42904 too many protocol errors")

    client = await scripted(script)
    errors: list[rtkit.RtkitError] = []
    client.on_error(errors.append)
    got: list[int] = []
    await within(client.channel("c").subscribe(lambda m: got.append(m.serial)))
    await within(client.wait_for_state(S.DISCONNECTED))
    assert got == [1] and [e.code for e in errors] == [42904]


async def test_broken_framing_fails_the_link(scripted: Any) -> None:
    received = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        await ws.send(message(1))
        await within(received.wait())
        ws.transport.write(b"\xc1\x01x")  # a reserved bit set: no extension agreed

    client = await scripted(script)
    errors: list[rtkit.RtkitError] = []
    client.on_error(errors.append)
    got: list[int] = []

    def on_message(msg: rtkit.Message) -> None:
        got.append(msg.serial)
        received.set()

    await within(client.channel("c").subscribe(on_message))
    await within(client.wait_for_state(S.DISCONNECTED))
    assert got == [1]
    assert any("invalid WebSocket data" in e.message and "1002" in e.message for e in errors)


async def test_a_callback_that_unsubscribes_gets_no_more_of_its_batch(scripted: Any) -> None:
    ready = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        await within(ready.wait())
        await ws.send(message(1, 2, 3))
        await ws.send(message(4, 5))  # (most likely read together with the first)

    client = await scripted(script)
    ch = client.channel("c")
    got: list[int] = []
    others: list[int] = []
    subs: list[rtkit.Subscription] = []

    def once_twice(msg: rtkit.Message) -> None:
        got.append(msg.serial)
        if msg.serial == 2:
            subs[0].close()

    subs.append(await within(ch.subscribe(once_twice)))
    await within(ch.subscribe(lambda m: others.append(m.serial)))
    ready.set()
    await eventually(lambda: others == [1, 2, 3, 4, 5], what="the other subscriber's five")
    assert got == [1, 2] and subs[0].delivered == 2 and not subs[0].active
