"""Networks that refuse WebSockets, and the HTTP faults real proxies inflict on streams:
each a regression test through the fault proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rtkit
from rtkit import ConnectionState as S
from rtkit.aio import http
from tests.aio.test_reconnect import FAST
from tests.aio.test_renewal import token_maker
from tests.conftest import eventually, scaled, within


@pytest.fixture
def env() -> Iterator[tuple[rtkit.Server, rtkit.chaos.FaultProxy]]:
    with rtkit.serve(heartbeat_interval=0.4, connection_state_ttl=10.0) as srv, \
            rtkit.chaos.proxy(srv, seed=5) as px:
        yield srv, px


def transports(client: rtkit.Client) -> list[str | None]:
    """The transport of each connected state, in order."""
    return [c.transport for c in client.state_history if c.current is S.CONNECTED]


async def test_refused_websockets_fall_back_to_sse_and_come_back(env: Any) -> None:
    """The issue's "done": with the proxy refusing WebSocket upgrades, a client with default
    options connects over SSE, publishes, subscribes, renews its token and resumes across
    drops with nothing lost, and returns to WebSocket once the block is lifted."""
    srv, px = env
    px.block_websockets()
    calls: list[float] = []
    pub = rtkit.Client(px.url, auth_callback=token_maker(srv, "pub", 1.5, calls))
    sub = rtkit.Client(px.url, key=srv.root_key, client_id="sub",
                       transport_retry_interval=0.5, **{k: v for k, v in FAST.items()
                                                        if k != "connect_timeout"})
    audit = rtkit.chaos.DeliveryAudit()
    try:
        await within(pub.connect())
        await within(sub.connect())
        assert pub.transport == sub.transport == "sse"
        assert "websocket refused: trying sse" in pub.state_history[1].reason
        await audit.watch(sub.channel("t"), "sub")
        for i in range(300):
            await audit.publish(pub.channel("t"), "n", i)
            if i % 60 == 30:
                px.drop_all()
            await asyncio.sleep(0.005)
        await within(audit.settle(), timeout=10)
        assert len(calls) >= 2  # renewed in band over SSE
        assert px.stats()["blocked"] >= 2
        px.heal()
        await eventually(lambda: sub.transport == "websocket" and sub.state is S.CONNECTED,
                         timeout=5, what="back on a WebSocket")
        assert transports(sub)[-1] == "websocket" and "sse" in transports(sub)
        assert pub.transport == "sse"  # default: probes every 15 s; reconnect() moves now
        await within(pub.reconnect())
        assert pub.transport == "websocket"
        for i in range(300, 400):
            await audit.publish(pub.channel("t"), "n", i)
        await within(audit.settle(), timeout=10)
        totals = audit.totals()
        assert totals["acked"] == totals["delivered"] == 400
        assert totals["lost"] == totals["duplicates_seen"] == totals["out_of_order"] == 0
        assert totals["failed"] == 0
    finally:
        await pub.close()
        await sub.close()


async def test_a_stripped_upgrade_header_falls_back(env: Any) -> None:
    srv, px = env
    px.strip_upgrade()
    async with rtkit.Client(px.url, key=srv.root_key, **FAST) as client:
        assert client.transport == "sse"
        first = client.state_history[1]
        assert first.error is not None and first.error.code == 80004
        assert "HTTP 426" in first.reason
        assert (await client.channel("x").publish("n", 1)).serial == 1
    assert px.stats()["stripped"] >= 1


async def _latency(pub: rtkit.Client, sub: rtkit.Client, n: int = 20) -> float:
    """The worst publish-to-delivery time of ``n`` messages, one at a time."""
    arrived: asyncio.Queue[float] = asyncio.Queue()
    await sub.channel("lat").subscribe(lambda m: arrived.put_nowait(time.monotonic()))
    worst = 0.0
    for i in range(n):
        start = time.monotonic()
        await pub.channel("lat").publish("n", i)
        worst = max(worst, await within(arrived.get()) - start)
    return worst


@pytest.mark.parametrize("fault", ["buffer", "hold_start"])
async def test_sse_flows_through_buffering_proxies(env: Any, fault: str) -> None:
    """nginx-like buffering is turned off by X-Accel-Buffering: no; a proxy that holds the
    first 2 KB of a response is passed by the padding comment that opens the stream."""
    srv, px = env
    if fault == "buffer":
        px.buffer_responses(16 * 1024)
    else:
        px.hold_response_start(2048)
    async with rtkit.Client(srv.url, key=srv.root_key) as pub, \
            rtkit.Client(px.url, key=srv.root_key, transports=("sse",), **FAST) as sub:
        assert await _latency(pub, sub) < scaled(0.3)


async def test_a_buffered_stream_without_the_header_would_not_flow(env: Any) -> None:
    srv, px = env
    px.buffer_responses(16 * 1024, honor_header=False)
    client = rtkit.Client(px.url, key=srv.root_key, transports=("sse",), connect_timeout=0.5)
    with pytest.raises(rtkit.RtkitError):
        await client.connect(timeout=1.0)
    await client.close()


async def test_idle_connections_cut_by_a_proxy(env: Any) -> None:
    """Keep-alive comments (at most every heartbeat interval, here 0.4 s) keep a quiet
    stream from looking idle; a proxy that cuts faster still costs nothing: the stream is
    re-opened where it stopped and the session goes on."""
    srv, px = env
    px.kill_idle(1.0)
    async with rtkit.Client(srv.url, key=srv.root_key) as pub, \
            rtkit.Client(px.url, key=srv.root_key, transports=("sse",), **FAST) as sub:
        got: list[int] = []
        await sub.channel("q").subscribe(lambda m: got.append(m.data))
        await asyncio.sleep(2.5)  # quiet
        assert px.stats()["idle_killed"] == 0
        px.kill_idle(0.15)
        for i in range(12):
            await pub.channel("q").publish("n", i)
            await asyncio.sleep(0.25)
        await eventually(lambda: len(got) == 12)
        assert got == list(range(12))
        assert px.stats()["idle_killed"] >= 2
        assert [c.current for c in sub.state_history] == [S.CONNECTING, S.CONNECTED]


async def test_plain_http_is_relayed_while_websockets_are_blocked(env: Any) -> None:
    _, px = env
    px.block_websockets()
    response = await http.request("GET", px.url.replace("ws://", "http://") + "/health")
    assert response.status == 200 and b'"ok"' in await response.read()
    await response.close()
