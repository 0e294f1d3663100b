"""Client and broker over real loopback WebSockets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

import rtkit
from rtkit import ConnectionState as S
from tests.conftest import eventually, scaled, within

Connect = Callable[..., Awaitable[rtkit.Client]]


async def test_publish_subscribe_in_order_three_ways(connect: Connect) -> None:
    pub, sub = await connect(client_id="pub"), await connect(client_id="sub")
    ch = sub.channel("ticks")
    seen_sync: list[rtkit.Message] = []
    seen_async: list[rtkit.Message] = []

    async def on_async(msg: rtkit.Message) -> None:
        await asyncio.sleep(0)
        seen_async.append(msg)

    await ch.subscribe(seen_sync.append)
    await ch.subscribe(on_async)
    stream = await ch.subscribe()
    results = [await pub.channel("ticks").publish("tick", {"i": i}) for i in range(20)]
    assert [r.serial for r in results] == list(range(1, 21))
    streamed = [await within(stream.get()) for _ in range(20)]
    await eventually(lambda: len(seen_sync) == 20 and len(seen_async) == 20)
    for received in (seen_sync, seen_async, streamed):
        assert [m.serial for m in received] == list(range(1, 21))
        assert [m.data["i"] for m in received] == list(range(20))
        assert {m.client_id for m in received} == {"pub"}
        assert {m.channel for m in received} == {"ticks"}
    assert [m.id for m in seen_sync] == [r.id for r in results]


async def test_event_filter_and_unsubscribe_detaches(connect: Connect) -> None:
    pub, sub = await connect(), await connect()
    ch = sub.channel("c")
    only_b: list[rtkit.Message] = []
    await ch.subscribe(only_b.append, event="b")
    for name in "abab":
        await pub.channel("c").publish(name)
    await eventually(lambda: len(only_b) == 2)
    assert {m.name for m in only_b} == {"b"}
    await ch.unsubscribe(only_b.append)
    assert not ch.attached
    await pub.channel("c").publish("b")
    await asyncio.sleep(scaled(0.1))
    assert len(only_b) == 2


async def test_history_and_rewind(connect: Connect) -> None:
    pub, sub = await connect(), await connect()
    for i in range(10):
        await pub.channel("h").publish("n", i)
    history = await sub.channel("h").history(limit=4)
    assert [m.data for m in history] == [6, 7, 8, 9]
    earlier = await sub.channel("h").history(limit=2, before=history[0].serial)
    assert [m.data for m in earlier] == [4, 5]
    stream = await sub.channel("h").subscribe(rewind=3)
    assert [(await within(stream.get())).data for _ in range(3)] == [7, 8, 9]
    await pub.channel("h").publish("n", 10)
    assert (await within(stream.get())).data == 10


async def test_token_capabilities_refuse_but_keep_the_connection(
    server: rtkit.Server, connect: Connect
) -> None:
    token = server.issue_token(client_id="learner", capabilities={"chat:*": ["subscribe"]},
                               ttl=60)
    client = await connect(token=token)
    assert client.client_id == "learner"
    with pytest.raises(rtkit.CapabilityError) as info:
        await client.channel("chat:lobby").publish("hi")
    assert info.value.code == 40300
    with pytest.raises(rtkit.CapabilityError):
        await client.channel("secret").subscribe()
    await client.channel("chat:lobby").subscribe()
    assert client.state is S.CONNECTED


@pytest.mark.parametrize(
    ("make_kwargs", "error", "code"),
    [
        (lambda s: {"key": "root:" + "x" * 40}, rtkit.InvalidCredentials, 40101),
        (lambda s: {"token": "not.a.token"}, rtkit.InvalidCredentials, 40102),
        (lambda s: {"token": s.issue_token(ttl=60)[:-4] + "AAAA"}, rtkit.InvalidCredentials,
         40103),
    ],
)
async def test_refused_credentials_raise_and_fail(
    server: rtkit.Server, make_kwargs: Callable[[rtkit.Server], dict], error: type, code: int
) -> None:
    client = rtkit.Client(server.url, **make_kwargs(server))
    with pytest.raises(error) as info:
        await within(client.connect())
    assert info.value.code == code
    assert client.state is S.FAILED
    assert client.state_history[-1].error is info.value


async def test_expired_token_raises_token_expired(server: rtkit.Server) -> None:
    token = server.issue_token(ttl=0.05)
    await asyncio.sleep(0.1)
    client = rtkit.Client(server.url, token=token)
    with pytest.raises(rtkit.TokenExpired):
        await within(client.connect())
    assert client.state is S.FAILED  # a fixed token cannot be renewed: retrying is pointless


async def test_auth_callback_sync_and_async(server: rtkit.Server, connect: Connect) -> None:
    calls: list[str] = []

    def sync_cb() -> str:
        calls.append("sync")
        return server.issue_token(client_id="s", ttl=60)

    async def async_cb() -> str:
        calls.append("async")
        return server.issue_token(client_id="a", ttl=60)

    a, b = await connect(auth_callback=sync_cb), await connect(auth_callback=async_cb)
    assert (a.client_id, b.client_id) == ("s", "a")
    assert calls == ["sync", "async"]
    assert a.token_expires is not None and a.token_expires > time.time()


async def test_connection_refused_is_a_typed_error() -> None:
    client = rtkit.Client("ws://127.0.0.1:9", key="k:" + "x" * 32, connect_timeout=scaled(1))
    with pytest.raises(rtkit.ConnectionFailed) as info:
        await client.connect()
    assert info.value.code == 80000
    assert "still retrying" in info.value.message
    assert client.state in (S.DISCONNECTED, S.CONNECTING)
    await client.close()
    assert client.state is S.CLOSED


async def test_state_changes_observable_by_callback_and_iteration(server: rtkit.Server) -> None:
    client = rtkit.Client(server.url, key=server.root_key)
    seen: list[rtkit.StateChange] = []
    client.on_state_change(seen.append)
    iterated: list[S] = []

    async def watch() -> None:
        async for change in client.state_changes():
            iterated.append(change.current)
            if change.current is S.CLOSED:
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await client.connect()
    await client.close()
    await within(watcher)
    expected = [S.CONNECTING, S.CONNECTED, S.CLOSING, S.CLOSED]
    assert [c.current for c in seen] == expected == iterated
    assert all(c.reason for c in seen)


async def test_presence_round_trip_and_leave_on_disconnect(connect: Connect) -> None:
    watcher, alice = await connect(client_id="w"), await connect(client_id="alice")
    room = watcher.channel("room")
    changes: list[rtkit.PresenceChange] = []
    room.presence.on_change(changes.append)
    await room.attach()
    members = await alice.channel("room").presence.enter({"mood": "curious"})
    assert [(m.client_id, m.data) for m in members] == [("alice", {"mood": "curious"})]
    assert [m.client_id for m in await room.presence.get()] == ["alice"]
    await alice.close()
    await eventually(lambda: [c.type for c in changes] == ["enter", "leave"])
    assert room.presence.members == {}


async def test_ping_and_broker_heartbeats(connect: Connect) -> None:
    client = await connect()
    assert await client.ping() < scaled(1.0)
    assert client.heartbeat_interval == 0.5
    last = client._core.liveness.last_heard
    await eventually(lambda: client._core.liveness.last_heard > last, timeout=2)
    await eventually(lambda: client.last_rtt is not None, timeout=2)


async def test_client_notices_a_silent_broker(server: rtkit.Server, connect: Connect) -> None:
    client = await connect(heartbeat_grace=0.2)
    # Freeze the broker's event loop: no heartbeats, no FIN, like a half-open link.
    frozen = threading.Event()
    server._loop.call_soon_threadsafe(lambda: (frozen.set(), time.sleep(1.5)))
    await within(asyncio.get_running_loop().run_in_executor(None, frozen.wait))
    await within(client.wait_for_state(S.DISCONNECTED, timeout=scaled(3)))
    assert "no heartbeat" in client.state_history[-1].reason


async def test_blocking_the_caller_does_not_stall_the_broker(server: rtkit.Server) -> None:
    """A notebook cell that blocks the kernel's loop must not stop the broker's thread."""
    received: list[int] = []

    def other_kernel() -> None:
        async def main() -> None:
            async with rtkit.Client(server.url, key=server.root_key) as a:
                await a.channel("x").subscribe(lambda m: received.append(m.data))
                async with rtkit.Client(server.url, key=server.root_key) as b:
                    for i in range(5):
                        await b.channel("x").publish("n", i)
                    for _ in range(200):
                        if len(received) == 5:
                            break
                        await asyncio.sleep(0.01)
        asyncio.run(main())

    thread = threading.Thread(target=other_kernel)
    thread.start()
    time.sleep(scaled(1.0))  # noqa: ASYNC251 - block this loop on purpose, like a busy cell
    thread.join(scaled(5))
    assert received == [0, 1, 2, 3, 4]


async def test_requests_after_close_raise(connect: Connect) -> None:
    client = await connect()
    await client.close()
    await client.close()  # idempotent
    assert client.state is S.CLOSED
    with pytest.raises(rtkit.ConnectionClosed):
        await client.channel("c").publish("n")
    with pytest.raises(rtkit.ConnectionClosed):
        await client.channel("c").history()


async def test_server_stop_tells_clients(server: rtkit.Server, connect: Connect) -> None:
    client = await connect()
    await asyncio.get_running_loop().run_in_executor(None, server.stop)
    await within(client.wait_for_state(S.DISCONNECTED))
    lost = client.state_history[-1]
    assert lost.error is not None and lost.error.code == 50001
    assert not server.running


async def test_local_validation_before_sending(connect: Connect) -> None:
    client = await connect()
    ch = client.channel("c")
    with pytest.raises(rtkit.ProtocolError):
        await ch.publish("n", {1, 2})
    with pytest.raises(rtkit.LimitExceeded) as info:
        await ch.publish("n", "x" * (70 * 1024))
    assert info.value.code == 42901
    with pytest.raises(rtkit.ProtocolError) as bad:
        client.channel("no spaces please")
    assert bad.value.code == 40007


async def test_subscription_overflow_is_reported(connect: Connect) -> None:
    pub, sub = await connect(), await connect()
    stream = await sub.channel("o").subscribe(buffer=3)
    for i in range(6):
        await pub.channel("o").publish("n", i)
    await eventually(lambda: stream.delivered == 6)
    with pytest.raises(rtkit.LimitExceeded) as info:
        await stream.get()
    assert info.value.code == 42907 and stream.dropped == 3
    assert [(await stream.get()).data for _ in range(3)] == [3, 4, 5]


def test_serve_options_and_tokens() -> None:
    with pytest.raises(TypeError, match="heartbeat"):
        rtkit.serve(heartbeat=3)
    with rtkit.serve(history_size=5, root_key="workshop:" + "s" * 32) as srv:
        assert srv.url.startswith("ws://127.0.0.1:") and srv.port > 0
        assert srv.root_key == "workshop:" + "s" * 32
        claims = rtkit.inspect_token(srv.issue_token(client_id="x", ttl=30))
        assert claims.client_id == "x" and claims.key_id == "workshop"
        assert srv.config.history_size == 5
        assert srv.stats()["connections"] == 0
    assert not srv.running


async def test_renew_token_now_keeps_the_connection(server: rtkit.Server) -> None:
    calls: list[int] = []

    def cb() -> str:
        calls.append(1)
        return server.issue_token(client_id="r", ttl=60)

    async with rtkit.Client(server.url, auth_callback=cb) as client:
        first = client.token
        assert await client.renew_token() != first
        assert client.token != first and len(calls) == 2
        assert [c.current for c in client.state_history] == [S.CONNECTING, S.CONNECTED]
    async with rtkit.Client(server.url, key=server.root_key) as keyed:
        with pytest.raises(rtkit.AuthError):
            await keyed.renew_token()
