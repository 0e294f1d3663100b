"""Reconnection with continuity, through the fault-injection proxy."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import rtkit
from rtkit import ConnectionState as S
from tests.aio.clients import ClientFactory, client_factory
from tests.conftest import eventually, scaled, within

FAST = {"backoff": rtkit.Backoff(base=0.05, cap=0.4), "connect_timeout": 1.0,
        "heartbeat_grace": 0.3, "suspended_retry_interval": 0.3}


@pytest.fixture
def env() -> Iterator[tuple[rtkit.Server, rtkit.chaos.FaultProxy]]:
    with rtkit.serve(heartbeat_interval=0.3, connection_state_ttl=10.0) as srv, \
            rtkit.chaos.proxy(srv, seed=1) as px:
        yield srv, px


@pytest.fixture
async def make(env: tuple[rtkit.Server, rtkit.chaos.FaultProxy]) -> AsyncIterator[ClientFactory]:
    async with client_factory(*env, FAST) as factory:
        yield factory


async def test_chaos_run_loses_nothing(env: Any, make: Any) -> None:
    """200 msg/s, 3 subscribers, 2,000 messages; drops every 0.5-2 s, a 3 s blackhole and a
    2 s refusal: nothing lost, duplicated or reordered, and no publish raises."""
    srv, px = env
    pub = await make(client_id="pub")
    audit = rtkit.chaos.DeliveryAudit()
    subs = [await make(client_id=f"sub{i}") for i in range(3)]
    received: dict[str, list[int]] = {s.client_id: [] for s in subs}
    for s in subs:
        await audit.watch(s.channel("ticks"), s.client_id)
        await s.channel("ticks").subscribe(
            lambda m, who=s.client_id: received[who].append(m.data["i"]))
    total, rate = 2000, 200.0
    rng = random.Random(2026)

    async def publish_all() -> None:
        tasks = []
        start = time.monotonic()
        for i in range(total):
            tasks.append(asyncio.create_task(audit.publish(pub.channel("ticks"), "tick", {"i": i})))
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
        await asyncio.gather(*tasks)  # raises if any publish raised

    async def break_things(done: asyncio.Event) -> None:
        faults = ["blackhole", "refuse"] + ["drop"] * 100
        elapsed = 0.0
        while not done.is_set():
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            elapsed += 1
            fault = faults.pop(0) if elapsed >= 2 or faults[0] == "drop" else "drop"
            if fault == "blackhole":
                px.blackhole(3.0)
                await asyncio.sleep(3.0)
            elif fault == "refuse":
                px.refuse(2.0)
                px.drop_all()
                await asyncio.sleep(2.0)
            else:
                px.drop_all()

    done = asyncio.Event()
    chaos = asyncio.create_task(break_things(done))
    await within(publish_all(), timeout=60)
    done.set()
    await within(chaos, timeout=10)
    await eventually(lambda: all(len(v) >= total for v in received.values()), timeout=20,
                     what="every subscriber caught up")
    for who, seq in received.items():
        assert seq == list(range(total)), f"{who}: not exactly 0..{total - 1} in order"
    totals = audit.totals()
    assert totals["lost"] == totals["duplicates_seen"] == totals["out_of_order"] == 0
    assert totals["failed"] == 0 and totals["continuity_lost"] == 0
    assert totals["acked"] == total * 3 and totals["delivered"] == total * 3
    stats = px.stats()
    assert stats["dropped"] >= 8 and stats["refused"] >= 1
    for client in (pub, *subs):  # every client really went through outages
        states = [c.current for c in client.state_history]
        assert states.count(S.DISCONNECTED) >= 3
    assert srv.stats()["resumed"] >= 12


async def test_half_open_link_is_detected_by_silence(env: Any, make: Any) -> None:
    _, px = env
    client = await make()
    px.blackhole(2.0)
    t0 = time.monotonic()
    await within(client.wait_for_state(S.DISCONNECTED, timeout=scaled(3)))
    detected = time.monotonic() - t0
    assert detected < scaled(0.3 + 0.3 + 0.5)  # heartbeat interval + grace + slack
    assert any("no heartbeat" in c.reason for c in client.state_history)
    await within(client.wait_for_state(S.CONNECTED, timeout=scaled(6)))


async def test_continuity_lost_beyond_history_reports_the_first_lost_serial() -> None:
    # A history budget of a few messages (bytes) forces eviction within the continuity window.
    with rtkit.serve(heartbeat_interval=0.3, max_channel_history_bytes=2500) as srv, \
            rtkit.chaos.proxy(srv) as px:
        async with rtkit.Client(srv.url, key=srv.root_key) as pub, \
                rtkit.Client(px.url, key=srv.root_key, **FAST) as sub:
            got: list[int] = []
            losses: list[rtkit.ContinuityLoss] = []
            ch = sub.channel("c")
            ch.on_continuity_lost(losses.append)
            await ch.subscribe(lambda m: got.append(m.serial))
            for i in range(3):
                await pub.channel("c").publish("n", i)
            await eventually(lambda: got == [1, 2, 3])
            px.refuse(1.0)
            px.drop_all()
            await within(sub.wait_for_state(S.DISCONNECTED))
            for i in range(20):  # serials 4..23; history keeps only the last few
                await pub.channel("c").publish("n", i)
            await within(sub.wait_for_state(S.CONNECTED, timeout=scaled(5)))
            await eventually(lambda: got[-1:] == [23])
            assert len(losses) == 1
            assert (losses[0].first_lost, losses[0].last_seen) == (4, 3)
            tail = got[3:]  # told, not silently skipped
            assert got[:3] == [1, 2, 3] and tail == list(range(tail[0], 24)) and tail[0] > 4
            assert ch.continuity_losses == losses


async def test_beyond_the_ttl_the_client_is_suspended_and_channels_still_resume() -> None:
    """Past connection_state_ttl the client is suspended (queued publishes fail), but each
    channel still resumes from its last serial: what history still holds is delivered,
    and only what it no longer holds is announced lost."""
    with rtkit.serve(heartbeat_interval=0.3, connection_state_ttl=0.5,
                     max_channel_history_bytes=1500) as srv, \
            rtkit.chaos.proxy(srv) as px:
        async with rtkit.Client(px.url, key=srv.root_key, **FAST) as sub, \
                rtkit.Client(srv.url, key=srv.root_key) as pub:
            losses: list[rtkit.ContinuityLoss] = []
            got: list[int] = []
            ch = sub.channel("c")
            ch.on_continuity_lost(losses.append)
            await ch.subscribe(lambda m: got.append(m.serial))
            await pub.channel("c").publish("n", 0)
            await eventually(lambda: got == [1])
            px.refuse(1.5)
            px.drop_all()
            await within(sub.wait_for_state(S.SUSPENDED, timeout=scaled(3)))
            with pytest.raises(rtkit.ConnectionSuspended) as info:
                await ch.publish("n", 1)
            assert info.value.code == 80002
            for i in range(5):  # serials 2..6: history keeps only 4..6
                await pub.channel("c").publish("n", i)
            await within(sub.wait_for_state(S.CONNECTED, timeout=scaled(5)))
            await eventually(lambda: got[-1:] == [6])
            assert got == [1, 4, 5, 6]
            assert len(losses) == 1 and (losses[0].first_lost, losses[0].last_seen) == (2, 1)
            states = [c.current for c in sub.state_history]
            assert S.SUSPENDED in states


async def test_broker_restart_is_announced_as_continuity_lost() -> None:
    srv = rtkit.serve(heartbeat_interval=0.3)
    port = srv.port
    async with rtkit.Client(srv.url, key=srv.root_key, **FAST) as sub:
        losses: list[rtkit.ContinuityLoss] = []
        ch = sub.channel("c")
        ch.on_continuity_lost(losses.append)
        await ch.subscribe()
        async with rtkit.Client(srv.url, key=srv.root_key) as pub:
            await pub.channel("c").publish("n", 1)
        await eventually(lambda: ch.serial == 1)
        key = srv.root_key
        await asyncio.get_running_loop().run_in_executor(None, srv.stop)
        srv = rtkit.serve(port=port, root_key=key, heartbeat_interval=0.3)
        try:
            await within(sub.wait_for_state(S.CONNECTED, timeout=scaled(5)))
            await eventually(lambda: len(losses) == 1)
            assert losses[0].first_lost == 2 and losses[0].last_seen == 1
        finally:
            await asyncio.get_running_loop().run_in_executor(None, srv.stop)


async def test_publishes_while_disconnected_are_queued_then_sent_once(env: Any,
                                                                       make: Any) -> None:
    _, px = env
    sub = await make(url=env[0].url)
    got: list[int] = []
    await sub.channel("q").subscribe(lambda m: got.append(m.data))
    pub = await make(max_queued_publishes=5)
    px.refuse(0.8)
    px.drop_all()
    await within(pub.wait_for_state(S.DISCONNECTED))
    pending = [asyncio.create_task(pub.channel("q").publish("n", i)) for i in range(5)]
    await asyncio.sleep(0)
    assert pub.queued_publishes == 5
    with pytest.raises(rtkit.LimitExceeded) as info:
        await pub.channel("q").publish("n", 99)
    assert info.value.code == 42905
    results = await within(asyncio.gather(*pending), timeout=5)
    assert [r.serial for r in results] == [1, 2, 3, 4, 5]
    await eventually(lambda: got == [0, 1, 2, 3, 4])


async def test_unacked_publishes_are_resent_and_enter_the_channel_once(env: Any,
                                                                        make: Any) -> None:
    srv, px = env
    sub = await make(url=srv.url)
    got: list[int] = []
    await sub.channel("r").subscribe(lambda m: got.append(m.data))
    pub = await make()
    # Blackhole: the publishes reach the broker (or not) but no ack comes back.
    px.blackhole(1.0)
    tasks = [asyncio.create_task(pub.channel("r").publish("n", i)) for i in range(10)]
    results = await within(asyncio.gather(*tasks), timeout=10)
    assert sorted(r.serial for r in results) == list(range(1, 11))
    await eventually(lambda: len(got) >= 10)
    await asyncio.sleep(0.2)
    assert got == list(range(10))


async def test_recovery_key_resumes_after_the_client_is_discarded(env: Any, make: Any) -> None:
    srv, _ = env
    pub = await make(url=srv.url)
    old = await make(client_id="kernel-1")
    seen: list[int] = []
    await old.channel("notes").subscribe(lambda m: seen.append(m.data))
    for i in range(3):
        await pub.channel("notes").publish("n", i)
    await eventually(lambda: seen == [0, 1, 2])
    key = old.recovery_key
    assert key is not None
    # The kernel dies: no goodbye, the object is simply gone.
    await old._shutdown()  # no goodbye: the link is cut and the client stops
    del old
    for i in range(3, 6):
        await pub.channel("notes").publish("n", i)
    new = await make(connect=False, client_id="kernel-1", recover=key)
    after: list[int] = []
    await new.channel("notes").subscribe(lambda m: after.append(m.data))  # before connect
    await within(new.connect())
    await eventually(lambda: after == [3, 4, 5])
    assert new.last_resume is not None and new.last_resume.resumed
    assert new.channel("notes").continuity_losses == []
    with pytest.raises(rtkit.ProtocolError):
        rtkit.Client(srv.url, key=srv.root_key, recover="not-a-key")


async def test_reconnect_now_skips_the_backoff(env: Any, make: Any) -> None:
    client = await make(backoff=rtkit.Backoff(base=5, cap=5, jitter="none"))
    first_id = client.connection_id
    t0 = time.monotonic()
    await within(client.reconnect())
    assert time.monotonic() - t0 < scaled(1.0)
    assert client.connection_id == first_id and client.last_resume is not None
    assert client.last_resume.resumed


async def test_backoff_schedule_follows_the_seeded_random_source(env: Any, make: Any) -> None:
    _, px = env
    delays: list[float] = []

    class Recording(rtkit.Backoff):
        def delay(self, attempt: int, rng: Any) -> float:
            d = super().delay(attempt, rng)
            delays.append(d)
            return d

    backoff = Recording(base=0.05, cap=0.2)
    client = await make(backoff=backoff, random_source=random.Random(42))
    px.refuse(1.0)
    px.drop_all()
    await within(client.wait_for_state(S.DISCONNECTED))
    await within(client.wait_for_state(S.CONNECTED, timeout=scaled(5)))
    expected_rng = random.Random(42)
    expected = [rtkit.Backoff(base=0.05, cap=0.2).delay(i, expected_rng)
                for i in range(len(delays))]
    assert len(delays) >= 3 and delays == expected


def lossy_relay(client: rtkit.Client, rewrite: Callable[[dict[str, Any]], None]) -> None:
    """Pass every frame the client receives through ``rewrite`` (a buggy relay)."""
    original = client._links.on_frames

    def relay(link_id: int, texts: list[str | bytes]) -> None:
        passed: list[str | bytes] = []
        for text in texts:
            frame = json.loads(text)
            if frame.get("action") == "message":
                rewrite(frame)
                if not frame["messages"]:
                    continue
            passed.append(json.dumps(frame))
        original(link_id, passed)

    client._links.on_frames = relay  # type: ignore[method-assign]


async def test_gap_on_a_live_link_is_repaired_by_the_broker_replay(env: Any, make: Any) -> None:
    srv, _ = env
    pub = await make(url=srv.url)
    sub = await make(url=srv.url, connect=False)
    got: list[int] = []
    ch = sub.channel("g")
    dropped: list[int] = []

    def lose_3_and_4_once(frame: dict[str, Any]) -> None:
        keep = []
        for m in frame["messages"]:
            if m["serial"] in (3, 4) and m["serial"] not in dropped:
                dropped.append(m["serial"])
            else:
                keep.append(m)
        frame["messages"] = keep

    lossy_relay(sub, lose_3_and_4_once)
    await within(sub.connect())
    await ch.subscribe(lambda m: got.append(m.serial))
    for i in range(6):
        await pub.channel("g").publish("n", i)
    await eventually(lambda: got == [1, 2, 3, 4, 5, 6])
    assert dropped == [3, 4] and ch.continuity_losses == []


async def test_gap_that_cannot_be_filled_is_reported_once(make: Any) -> None:
    sub = await make(connect=False)
    got: list[int] = []
    ch = sub.channel("g2")

    def forge(frame: dict[str, Any]) -> None:
        # Serial 9 arrives right after 1: 2..8 never existed.
        for m in frame["messages"]:
            if m["serial"] == 2:
                m["serial"], m["id"] = 9, "forged"

    lossy_relay(sub, forge)
    await within(sub.connect())
    await ch.subscribe(lambda m: got.append(m.serial))
    for i in range(3):
        await sub.channel("g2").publish("n", i)
    await eventually(lambda: len(ch.continuity_losses) == 1)
    assert ch.continuity_losses[0].first_lost == 2
    assert got[:2] == [1, 9]


async def test_revoked_key_fails_and_fails_queued_publishes(env: Any, make: Any) -> None:
    srv, _px = env
    key = srv.create_key({"*": ["*"]}, key_id="team")
    client = await make(key=key)
    assert srv.revoke_key("team") == 1  # the live session ends at once (40108)
    await within(client.wait_for_state(S.FAILED, timeout=scaled(5)))
    with pytest.raises(rtkit.ConnectionFailed):
        await within(client.channel("x").publish("n", 1))
    assert client.state_history[-1].error is not None
    assert client.state_history[-1].error.code == 40108
