"""Misbehaving clients get documented errors; nobody else notices; the broker stays up."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import rtkit
from tests.conftest import eventually, scaled, within


@pytest.fixture
def strict_server() -> Any:
    with rtkit.serve(heartbeat_interval=0.5, max_frame_size=32 * 1024, max_message_size=16 * 1024,
                     publish_rate=200, publish_burst=50, max_protocol_errors=20,
                     max_outbound_buffer=256 * 1024) as srv:
        yield srv


@pytest.fixture
async def bystander(strict_server: rtkit.Server) -> AsyncIterator[tuple[rtkit.Client, list]]:
    """A well-behaved subscriber that must keep receiving whatever happens."""
    client = rtkit.Client(strict_server.url, key=strict_server.root_key, client_id="bystander")
    await client.connect()
    got: list[rtkit.Message] = []
    await client.channel("calm").subscribe(got.append)
    yield client, got
    await client.close()


async def still_served(server: rtkit.Server, bystander: tuple[rtkit.Client, list]) -> None:
    """The bystander is connected and a fresh publish still reaches it."""
    client, got = bystander
    assert client.state is rtkit.ConnectionState.CONNECTED
    before = len(got)
    async with rtkit.Client(server.url, key=server.root_key) as pub:
        await pub.channel("calm").publish("ok", before)
    await eventually(lambda: len(got) > before, what="bystander delivery")


async def raw(server: rtkit.Server, connect_frame: dict[str, Any] | None = None
              ) -> ClientConnection:
    ws = await ws_connect(server.url, max_size=None, ping_interval=None)
    if connect_frame is not None:
        await ws.send(json.dumps({"action": "connect", "ref": 0, **connect_frame}))
        reply = json.loads(await within(ws.recv()))
        assert reply["action"] == "connected", reply
    return ws


async def next_reply(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame that is not an unsolicited heartbeat (within a scaled timeout)."""
    async with asyncio.timeout(scaled(timeout)):
        while True:
            frame = json.loads(await ws.recv())
            if frame != {"action": "heartbeat"}:
                return frame


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{this is not json", 40001),
        ("[]", 40000),
        ('{"action": "teleport", "ref": 1}', 40002),
        ('{"action": "publish", "ref": 1, "channel": 5, "name": "n"}', 40003),
        ('{"action": "publish", "ref": 1, "channel": "c", "name": ["n"]}', 40003),
        ('{"action": "attach", "ref": 1, "channel": "bad name"}', 40007),
        (b"\x00\xffbinary", 40004),
        ('{"action": "connect", "ref": 1, "key": "x:y"}', 40006),
    ],
)
async def test_bad_frames_get_errors_and_the_connection_stays(
    strict_server: rtkit.Server, bystander: Any, payload: str | bytes, code: int
) -> None:
    ws = await raw(strict_server, {"key": strict_server.root_key})
    await ws.send(payload)
    reply = await next_reply(ws)
    assert reply["action"] == "error" and reply["error"]["code"] == code
    await ws.send('{"action": "heartbeat", "ref": 99}')
    assert await next_reply(ws) == {"action": "heartbeat", "ref": 99}
    await ws.close()
    await still_served(strict_server, bystander)


async def test_garbage_bytes_instead_of_a_websocket(strict_server: rtkit.Server,
                                                    bystander: Any) -> None:
    def poke(junk: bytes) -> None:
        with socket.create_connection(("127.0.0.1", strict_server.port), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(scaled(3))
            try:
                while sock.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass

    loop = asyncio.get_running_loop()
    junks = (b"\x16\x03\x01\x02\x00garbage", b"GET / HTTP/1.1\r\n\r\n", b"\r\n" * 100)
    await asyncio.gather(*(loop.run_in_executor(None, poke, junk) for junk in junks))
    await still_served(strict_server, bystander)


async def test_oversized_frame_closes_with_1009_and_maps_to_42902(
    strict_server: rtkit.Server, bystander: Any
) -> None:
    ws = await raw(strict_server, {"key": strict_server.root_key})
    await ws.send(json.dumps({"action": "publish", "ref": 1, "channel": "calm", "name": "big",
                              "data": "x" * 64 * 1024}))
    with pytest.raises(ConnectionClosed):
        while True:
            await within(ws.recv())
    assert ws.close_code == 1009
    err = rtkit.aio.client.error_from_close(ws.close_code, "")
    assert isinstance(err, rtkit.LimitExceeded) and err.code == 42902
    await still_served(strict_server, bystander)


async def test_oversized_message_is_nacked(strict_server: rtkit.Server, bystander: Any) -> None:
    ws = await raw(strict_server, {"key": strict_server.root_key})
    await ws.send(json.dumps({"action": "publish", "ref": 1, "channel": "calm", "name": "big",
                              "data": "x" * 20 * 1024}))
    reply = await next_reply(ws)
    assert reply["action"] == "nack" and reply["error"]["code"] == 42901
    await ws.close()
    await still_served(strict_server, bystander)


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("case", ["alg-none", "forged", "expired", "wrong-key", "garbage"])
async def test_bad_tokens_are_refused_with_their_code(
    strict_server: rtkit.Server, bystander: Any, case: str
) -> None:
    good = strict_server.issue_token(client_id="eve", ttl=60)
    header, _payload, sig = good.split(".")
    escalate = _b64({"sub": "eve", "cap": {"*": ["*"]}, "exp": 4102444800})
    tokens = {
        "alg-none": (f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'root'})}.{escalate}.", 40104),
        "forged": (f"{header}.{escalate}.{sig}", 40103),
        "expired": (strict_server.issue_token(ttl=0.01), 40140),
        "wrong-key": (rtkit.core.tokens.issue_token(
            rtkit.core.tokens.ApiKey("root", "z" * 40), now=0, ttl=10**4), 40103),
        "garbage": ("ey.ey.ey", 40102),
    }
    token, code = tokens[case]
    await asyncio.sleep(0.02)
    ws = await raw(strict_server)
    await ws.send(json.dumps({"action": "connect", "ref": 1, "token": token}))
    reply = await next_reply(ws)
    assert reply["action"] == "error" and reply["fatal"] is True
    assert reply["error"]["code"] == code
    with pytest.raises(ConnectionClosed):
        await within(ws.recv())
    assert ws.close_code == 4401 and ws.close_reason.startswith(str(code))
    await still_served(strict_server, bystander)


async def test_capability_violation_keeps_the_connection(strict_server: rtkit.Server,
                                                          bystander: Any) -> None:
    token = strict_server.issue_token(client_id="reader", capabilities={"calm": ["subscribe"]})
    async with rtkit.Client(strict_server.url, token=token) as client:
        with pytest.raises(rtkit.CapabilityError):
            await client.channel("calm").publish("sneaky", 1)
        with pytest.raises(rtkit.CapabilityError):
            await client.channel("calm").history()
        await client.ping()
        assert client.state is rtkit.ConnectionState.CONNECTED
    await still_served(strict_server, bystander)


async def test_publish_flood_is_rate_limited_and_others_keep_working(
    strict_server: rtkit.Server, bystander: Any
) -> None:
    ws = await raw(strict_server, {"key": strict_server.root_key})
    for i in range(500):
        await ws.send(json.dumps({"action": "publish", "ref": i, "channel": "flood", "name": "n"}))
    acks = nacks = 0
    while acks + nacks < 500:
        reply = await next_reply(ws)
        if reply["action"] == "ack":
            acks += 1
        else:
            assert reply["action"] == "nack" and reply["error"]["code"] == 42900
            nacks += 1
    assert nacks > 0 and acks >= 50
    await ws.close()
    await still_served(strict_server, bystander)


async def test_endless_protocol_errors_get_the_connection_cut(strict_server: rtkit.Server,
                                                              bystander: Any) -> None:
    ws = await raw(strict_server, {"key": strict_server.root_key})
    for _ in range(25):
        await ws.send("nonsense")
    codes = []
    with pytest.raises(ConnectionClosed):
        while True:
            codes.append(json.loads(await within(ws.recv()))["error"]["code"])
    assert codes[:20] == [40001] * 20 and codes[-1] == 42904
    assert ws.close_code == 4429
    await still_served(strict_server, bystander)


async def test_slow_reader_is_bounded_then_disconnected() -> None:
    limit = 256 * 1024
    with rtkit.serve(heartbeat_interval=0.5, max_outbound_buffer=limit, publish_rate=10_000,
                     max_message_size=60_000, max_frame_size=64 * 1024) as srv:
        async with rtkit.Client(srv.url, key=srv.root_key) as fast:
            got: list[rtkit.Message] = []
            await fast.channel("feed").subscribe(got.append)
            # A subscriber that never reads, with a tiny receive buffer.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", srv.port))
            slow = await ws_connect(srv.url, sock=sock, ping_interval=None, max_size=None)
            await slow.send(json.dumps({"action": "connect", "ref": 0, "key": srv.root_key}))
            await slow.send(json.dumps({"action": "attach", "ref": 1, "channel": "feed"}))
            await asyncio.sleep(0.1)
            slow.transport.pause_reading()
            async with rtkit.Client(srv.url, key=srv.root_key) as publisher:
                blob = "x" * 50_000
                for i in range(400):  # 20 MB: more than any kernel socket buffer holds
                    await publisher.channel("feed").publish("big", {"i": i, "blob": blob})
                    if srv.stats()["slow_consumers"]:
                        break
                await eventually(lambda: srv.stats()["slow_consumers"] == 1, timeout=10,
                                 what="slow consumer disconnected")
                sent = i + 1
                await eventually(lambda: len(got) == sent, what="fast subscriber got all")
            assert [m.data["i"] for m in got] == list(range(sent))
            slow.transport.abort()


async def test_many_bad_clients_at_once(strict_server: rtkit.Server, bystander: Any) -> None:
    async def misbehave(i: int) -> None:
        try:
            ws = await raw(strict_server)
            await ws.send(["{", "[]", b"\x00", '{"action":"attach","ref":1,"channel":"x"}'][i % 4])
            await asyncio.sleep(0.01)
            ws.transport.abort()  # vanish without a close frame
        except (OSError, ConnectionClosed):
            pass

    await asyncio.gather(*(misbehave(i) for i in range(40)))
    await still_served(strict_server, bystander)
    await eventually(lambda: strict_server.stats()["connections"] == 1, timeout=5,
                     what="aborted sessions cleaned up")


async def test_item1_one_bad_item_in_a_flush_never_drops_the_rest() -> None:
    from rtkit.core.broker import Send

    broker = rtkit.Broker(rtkit.BrokerConfig(heartbeat_interval=5.0))
    await broker.start()
    try:
        a, b = [await ws_connect(broker.url, ping_interval=None) for _ in range(2)]
        for ws in (a, b):
            await ws.send(json.dumps({"action": "connect", "ref": 0, "key": broker.root_key.value}))
            assert json.loads(await within(ws.recv()))["action"] == "connected"
        real = broker.core.take_output

        def poisoned() -> list:
            items = real()
            if items and isinstance(items[0], Send):  # something no connection can be sent
                items.insert(0, Send(items[0].targets, "\ud800"))
            return items

        broker.core.take_output = poisoned  # type: ignore[method-assign]
        await a.send(json.dumps({"action": "heartbeat", "ref": 1}))
        await b.send(json.dumps({"action": "heartbeat", "ref": 2}))
        assert await next_reply(a) == {"action": "heartbeat", "ref": 1}
        assert await next_reply(b) == {"action": "heartbeat", "ref": 2}
        broker.core.take_output = real  # type: ignore[method-assign]
        await a.close()
        await b.close()
    finally:
        await broker.stop()
