"""One test per continuity bug found by trying rtkit as a user would (each failed before the
client protocol moved into the sans-I/O core). Real broker, real sockets, fault proxy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import rtkit
from rtkit import ConnectionState as S
from rtkit.aio import link as link_module
from tests.aio.clients import ClientFactory, client_factory
from tests.aio.test_reconnect import FAST
from tests.conftest import eventually, scaled, within


@pytest.fixture
def env() -> Iterator[tuple[rtkit.Server, rtkit.chaos.FaultProxy]]:
    with rtkit.serve(heartbeat_interval=0.3, connection_state_ttl=10.0) as srv, \
            rtkit.chaos.proxy(srv, seed=3) as px:
        yield srv, px


@pytest.fixture
async def make(env: tuple[rtkit.Server, rtkit.chaos.FaultProxy]) -> AsyncIterator[ClientFactory]:
    async with client_factory(*env, FAST) as factory:
        yield factory


def token_service(srv: rtkit.Server, client_id: str, ttl: float,
                  caps: dict[str, list[str]] | None = None) -> tuple[Any, list[float]]:
    calls: list[float] = []
    grant = {"caps": caps or {"*": ["*"]}}

    def callback() -> str:
        calls.append(time.monotonic())
        return srv.issue_token(client_id=client_id, capabilities=grant["caps"], ttl=ttl)

    callback.grant = grant  # type: ignore[attr-defined]
    return callback, calls


async def outage(px: rtkit.chaos.FaultProxy, client: rtkit.Client, seconds: float) -> None:
    px.refuse(seconds)
    px.drop_all()
    await within(client.wait_for_state(S.DISCONNECTED, S.CONNECTING))


async def test_second_subscribe_while_reconnecting_keeps_the_resume(env: Any,
                                                                    make: Any) -> None:
    """A second subscribe() during a reconnect used to overwrite the channel's single
    attach mode: the resume's replay was dropped as duplicates (serials 1, 2, 3, 7)."""
    _, px = env
    pub = await make(direct=True)
    sub = await make()
    first: list[int] = []
    second: list[int] = []
    ch = sub.channel("r1")
    await ch.subscribe(lambda m: first.append(m.serial))
    for i in range(3):
        await pub.channel("r1").publish("n", i)
    await eventually(lambda: first == [1, 2, 3])
    await outage(px, sub, 1.0)
    for i in range(3):  # 4, 5, 6: published while the subscriber is away
        await pub.channel("r1").publish("n", i)
    task = asyncio.create_task(ch.subscribe(lambda m: second.append(m.serial)))
    await within(sub.wait_for_state(S.CONNECTED, timeout=scaled(5)))
    await within(task)
    await pub.channel("r1").publish("n", 7)
    await eventually(lambda: first[-1:] == [7])
    assert first == [1, 2, 3, 4, 5, 6, 7]
    assert second[-1] == 7 and second == sorted(set(second))
    assert ch.continuity_losses == []


async def test_continuity_is_not_bounded_by_a_message_count(env: Any, make: Any) -> None:
    """Continuity used to span only history_size (1,000) messages: a busy channel lost
    hundreds on resume after a short outage. Now it spans connection_state_ttl."""
    _, px = env
    pub = await make(direct=True)
    sub = await make()
    got: list[int] = []
    ch = sub.channel("r2")
    await ch.subscribe(lambda m: got.append(m.serial))
    await outage(px, sub, 1.5)
    await asyncio.gather(*(pub.channel("r2").publish("n", i) for i in range(3000)))
    await within(sub.wait_for_state(S.CONNECTED, timeout=scaled(8)))
    await eventually(lambda: len(got) >= 3000, timeout=20)
    assert got == list(range(1, 3001))
    assert ch.continuity_losses == []


async def test_reconnects_soon_after_a_refusal_ends(env: Any, make: Any) -> None:
    """Backoff used to grow to waits of 4-7.5 s after a 2 s refusal; with the default
    policy (cap 2 s) the client is back within about 2 s of the link returning."""
    _, px = env
    client = await make(backoff=None)  # the default policy
    await outage(px, client, 2.0)
    refused_until = time.monotonic() + 2.0
    await within(client.wait_for_state(S.CONNECTED, timeout=scaled(8)))
    assert time.monotonic() - refused_until < scaled(2.0 + 0.5)


async def test_narrowed_capability_fails_one_channel_not_the_connection(env: Any,
                                                                      make: Any) -> None:
    """After a renewal narrowed the token (channel b no longer allowed), every reconnect
    used to fail re-attaching b: 26 retries in 2 s, never connected again."""
    srv, px = env
    callback, _ = token_service(srv, "narrow", 60.0, {"r4a": ["*"], "r4b": ["*"]})
    client = await make(auth_callback=callback)
    pub = await make(direct=True)
    got_a: list[int] = []
    await client.channel("r4a").subscribe(lambda m: got_a.append(m.serial))
    await client.channel("r4b").subscribe(lambda m: None)
    errors: list[rtkit.RtkitError] = []
    client.on_error(errors.append)
    callback.grant["caps"] = {"r4a": ["*"]}
    await within(client.renew_token())
    await eventually(lambda: client.channel("r4b").state is rtkit.ChannelState.FAILED)
    assert isinstance(client.channel("r4b").error, rtkit.CapabilityError)
    await outage(px, client, 0.5)
    await within(client.wait_for_state(S.CONNECTED, timeout=scaled(5)))
    await pub.channel("r4a").publish("n", 1)
    await eventually(lambda: got_a == [1])
    states = [c.current for c in client.state_history]
    assert states.count(S.CONNECTED) == 2  # one reconnect, which worked
    assert client.channel("r4b").state is rtkit.ChannelState.FAILED


async def test_rewind_on_an_attached_channel_replays_to_the_new_subscription_only(
        make: Any) -> None:
    """subscribe(rewind=3) on a channel that was already attached delivered nothing."""
    client = await make(direct=True)
    old: list[int] = []
    ch = client.channel("r5")
    await ch.subscribe(lambda m: old.append(m.serial))
    for i in range(5):
        await ch.publish("n", i)
    await eventually(lambda: old == [1, 2, 3, 4, 5])
    new: list[int] = []
    await ch.subscribe(lambda m: new.append(m.serial), rewind=3)
    await eventually(lambda: new == [3, 4, 5])
    await ch.publish("n", 5)
    await eventually(lambda: new == [3, 4, 5, 6] and old == [1, 2, 3, 4, 5, 6])


async def test_rewind_before_connect_is_honoured(make: Any) -> None:
    """subscribe(rewind=N) before connect() ignored the rewind."""
    pub = await make(direct=True)
    for i in range(4):
        await pub.channel("r5b").publish("n", i)
    client = await make(connect=False, direct=True)
    got: list[int] = []
    await client.channel("r5b").subscribe(lambda m: got.append(m.serial), rewind=2)
    await within(client.connect())
    await eventually(lambda: got == [3, 4])


async def test_expired_token_is_renewed_through_auth_callback(env: Any, make: Any) -> None:
    """After the broker said a token expired (40140), the client reconnected with the same
    token instead of calling auth_callback; expire_tokens() never showed a renewal."""
    srv, _ = env
    callback, calls = token_service(srv, "expiring", 3600.0)
    client = await make(auth_callback=callback)
    got: list[int] = []
    await client.channel("r6").subscribe(lambda m: got.append(m.serial))
    assert len(calls) == 1
    assert srv.expire_tokens("expiring") == 1
    await eventually(lambda: len(calls) == 2 and client.state is S.CONNECTED, timeout=5)
    pub = await make(direct=True)
    await pub.channel("r6").publish("n", 1)
    await eventually(lambda: got == [1])
    errors = [c.error for c in client.state_history if c.error is not None]
    assert [e.code for e in errors] == [40140]


async def test_a_lagging_clock_renews_by_the_broker_time(env: Any, make: Any,
                                                        monkeypatch: Any) -> None:
    """Session.server_time_offset was never set: a client whose clock lags the broker
    kept presenting a token the broker had already rejected."""
    srv, _ = env

    real_time, real_monotonic = time.time, time.monotonic

    class Lagging:
        @staticmethod
        def time() -> float:
            return real_time() - 120.0  # this machine's clock is two minutes behind

        monotonic = staticmethod(real_monotonic)

    monkeypatch.setattr(rtkit.aio.client, "time", Lagging)
    callback, calls = token_service(srv, "lagging", 2.0)
    client = await make(auth_callback=callback)
    assert 119 < client.server_time_offset < 121
    await asyncio.sleep(scaled(5))
    assert len(calls) >= 3  # renewed before each expiry, by the broker's clock
    assert client.state is S.CONNECTED
    assert [c for c in client.state_history if c.current is S.DISCONNECTED] == []


async def test_close_while_connecting_is_clean(env: Any, make: Any) -> None:
    """close() while connecting used to kill the supervisor with InvalidTransition."""
    _, px = env
    px.blackhole(3.0)
    client = await make(connect=False)
    connecting = asyncio.create_task(client.connect(timeout=5))
    await within(client.wait_for_state(S.CONNECTING))
    await within(client.close())
    assert client.state is S.CLOSED
    with pytest.raises(rtkit.ConnectionClosed):
        await within(connecting)
    assert [c.current for c in client.state_history] == [S.CONNECTING, S.CLOSING, S.CLOSED]


async def test_an_unexpected_error_while_connecting_is_retried(make: Any,
                                                              monkeypatch: Any) -> None:
    """Any exception other than an RtkitError used to leave the client stuck connecting."""
    original = link_module.WebSocketLink.connect
    failures = {"left": 2}

    async def flaky(self: link_module.WebSocketLink) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug in the transport")
        await original(self)

    monkeypatch.setattr(link_module.WebSocketLink, "connect", flaky)
    client = await make(connect=False, direct=True)
    await within(client.connect(timeout=scaled(5)))
    assert client.state is S.CONNECTED and failures["left"] == 0


async def test_link_drop_during_gap_repair_is_not_a_loss(env: Any, make: Any) -> None:
    """A link drop during gap repair used to be reported as a continuity loss although
    the resume recovered the messages."""
    _, px = env
    pub = await make(direct=True)
    sub = await make(connect=False)
    got: list[int] = []
    ch = sub.channel("r10")
    original = sub._links.on_frames
    state = {"dropped": False}

    def relay(link_id: int, texts: list[str | bytes]) -> None:
        passed: list[str | bytes] = []
        for text in texts:
            frame = json.loads(text)
            if frame.get("action") == "message" and not state["dropped"]:
                kept = [m for m in frame["messages"] if m["serial"] != 3]
                if len(kept) != len(frame["messages"]):
                    state["dropped"] = True  # lose serial 3, then lose the link mid-repair
                    asyncio.get_running_loop().call_soon(px.drop_all)
                    frame["messages"] = kept
                    if not kept:
                        continue
                    text = json.dumps(frame)
            passed.append(text)
        original(link_id, passed)

    sub._links.on_frames = relay  # type: ignore[method-assign]
    await within(sub.connect())
    await ch.subscribe(lambda m: got.append(m.serial))
    for i in range(6):
        await pub.channel("r10").publish("n", i)
    await eventually(lambda: got[-1:] == [6], timeout=5)
    assert got == [1, 2, 3, 4, 5, 6] and state["dropped"]
    assert ch.continuity_losses == []


async def test_publish_data_is_encoded_when_published(env: Any, make: Any) -> None:
    """Queued publishes were encoded at flush time: a dict changed after publish() was
    sent changed."""
    _, px = env
    watcher = await make(direct=True)
    seen: list[Any] = []
    await watcher.channel("r11").subscribe(lambda m: seen.append(m.data))
    pub = await make()
    await outage(px, pub, 0.5)
    data = {"v": "original"}
    sending = asyncio.create_task(pub.channel("r11").publish("n", data))
    await asyncio.sleep(0)
    data["v"] = "changed afterwards"
    await within(sending, timeout=5)
    await eventually(lambda: seen == [{"v": "original"}])


async def test_wall_clock_steps_neither_drop_nor_hide_a_dead_link(env: Any, make: Any,
                                                                 monkeypatch: Any) -> None:
    """Intervals used the wall clock: a clock step caused spurious drops, or hid a
    half-open link."""
    _, px = env
    client = await make()
    step = {"by": 0.0}

    real_time, real_monotonic = time.time, time.monotonic

    class Stepping:
        @staticmethod
        def time() -> float:
            return real_time() + step["by"]

        monotonic = staticmethod(real_monotonic)

    monkeypatch.setattr(rtkit.aio.client, "time", Stepping)
    step["by"] = 3600.0
    await asyncio.sleep(scaled(1.0))
    step["by"] = -3600.0
    await asyncio.sleep(scaled(1.0))
    assert client.state is S.CONNECTED
    assert [c for c in client.state_history if c.current is S.DISCONNECTED] == []
    px.blackhole(2.0)
    t0 = time.monotonic()
    await within(client.wait_for_state(S.DISCONNECTED, timeout=scaled(3)))
    assert time.monotonic() - t0 < scaled(0.3 + 0.3 + 0.5)


async def test_a_hung_auth_callback_times_out_and_is_retried(env: Any, make: Any) -> None:
    """auth_callback had no timeout: a hung callback stalled reconnection forever."""
    srv, _ = env
    calls: list[float] = []

    async def callback() -> str:
        calls.append(time.monotonic())
        if len(calls) == 2:
            await asyncio.sleep(3600)  # the token service hangs once
        return srv.issue_token(client_id="hung", ttl=1.5)

    errors: list[rtkit.RtkitError] = []
    client = await make(auth_callback=callback, auth_timeout=0.3)
    client.on_error(errors.append)
    await eventually(lambda: len(calls) >= 3, timeout=5)
    assert any(e.code == 40170 and "0.3 s" in e.message for e in errors)
    await eventually(lambda: client.state is S.CONNECTED and client.token_expires is not None
                     and client.token_expires > time.time(), timeout=5)
