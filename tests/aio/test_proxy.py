"""The fault-injection proxy's own features."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

import rtkit
from tests.aio.test_reconnect import FAST
from tests.conftest import eventually, scaled, within


@pytest.fixture
def env() -> Iterator[tuple[rtkit.Server, rtkit.chaos.FaultProxy]]:
    with rtkit.serve(heartbeat_interval=0.5) as srv, rtkit.chaos.proxy(srv, seed=3) as px:
        yield srv, px


async def test_latency_and_jitter_add_to_the_round_trip(env: tuple) -> None:
    srv, px = env
    async with rtkit.Client(px.url, key=srv.root_key, **FAST) as client:
        base = min([await client.ping() for _ in range(5)])
        px.set_latency(40, jitter_ms=10)
        rtts = [await client.ping() for _ in range(5)]
        assert min(rtts) >= 2 * 0.030  # each way: 40 ms +/- 10 ms
        assert min(rtts) > base
        assert px.faults()["latency_ms"] == 40
        px.heal()
        assert min([await client.ping() for _ in range(5)]) < min(rtts)


async def test_bandwidth_limit_paces_large_messages(env: tuple) -> None:
    srv, px = env
    async with rtkit.Client(srv.url, key=srv.root_key) as pub, \
            rtkit.Client(px.url, key=srv.root_key, **FAST) as sub:
        got: list[int] = []
        await sub.channel("big").subscribe(lambda m: got.append(m.data["i"]))
        px.set_bandwidth(100_000)  # bytes/s
        t0 = time.monotonic()
        for i in range(5):
            await pub.channel("big").publish("blob", {"i": i, "pad": "x" * 40_000})
        await eventually(lambda: len(got) == 5, timeout=10)
        assert time.monotonic() - t0 >= 1.5  # 200 KB at 100 KB/s
        assert got == [0, 1, 2, 3, 4]


async def test_blocked_websockets_are_refused_with_403(env: tuple) -> None:
    srv, px = env
    px.block_websockets()
    client = rtkit.Client(px.url, key=srv.root_key, connect_timeout=scaled(1),
                          transports=("websocket",))  # no fallback: the refusal is final
    with pytest.raises(rtkit.ConnectionFailed) as info:
        await client.connect()
    assert "403" in info.value.message and info.value.code == 80004
    await client.close()
    assert px.stats()["blocked"] >= 1
    async with rtkit.Client(px.url, key=srv.root_key) as fallback:
        assert fallback.transport == "sse"  # the default falls back to SSE
    px.block_websockets(False)
    async with rtkit.Client(px.url, key=srv.root_key) as ok:
        assert ok.state is rtkit.ConnectionState.CONNECTED


async def test_statistics_per_connection(env: tuple) -> None:
    srv, px = env
    async with rtkit.Client(px.url, key=srv.root_key, **FAST) as client:
        await client.channel("s").publish("n", "x" * 1000)
        assert px.drop_all() == 1
        await within(client.wait_for_state(rtkit.ConnectionState.CONNECTED, timeout=5))
        await eventually(lambda: px.stats()["open"] == 1)
    frame = px.connections()
    assert list(frame.columns) == ["opened", "closed", "bytes_up", "bytes_down", "chunks",
                                   "outcome"]
    assert frame["outcome"].iloc[0] == "dropped" and frame["bytes_up"].iloc[0] > 1000
    assert str(frame["opened"].dtype) == "datetime64[ns, UTC]"
    stats = px.stats()
    assert stats["connections"] >= 2 and stats["dropped"] == 1


async def test_refuse_and_blackhole_validate_and_proxy_targets() -> None:
    with pytest.raises(ValueError):
        rtkit.chaos.proxy("not a url")
    with rtkit.serve() as srv, rtkit.chaos.proxy(("127.0.0.1", srv.port)) as px:
        with pytest.raises(ValueError):
            px.set_latency(-1)
        with pytest.raises(ValueError):
            px.set_bandwidth(0)
        assert "FaultProxy" in repr(px)
    assert not px.running
    with pytest.raises(RuntimeError):
        px.drop_all()


async def test_a_blocking_cell_does_not_stall_the_proxy(env: tuple) -> None:
    srv, px = env
    result: list[float] = []

    def other_thread() -> None:
        async def main() -> None:
            async with rtkit.Client(px.url, key=srv.root_key) as c:
                result.append(await c.ping())
        asyncio.run(main())

    import threading
    t = threading.Thread(target=other_thread)
    t.start()
    time.sleep(0.5)  # noqa: ASYNC251 - this loop blocks; the proxy's thread does not
    t.join(scaled(5))
    assert result and result[0] < 0.5
