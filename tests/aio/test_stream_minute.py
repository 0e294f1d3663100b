"""Continuity for a minute at 1,000 messages a second, with default settings, through drops,
a blackhole and a refusal: nothing lost, duplicated or reordered, no publish fails. The same
over the SSE fallback (the proxy refusing WebSocket upgrades), for a third of the time."""

from __future__ import annotations

import asyncio
import random
import time

import rtkit
from tests.conftest import eventually, within

RATE = 1000
SECONDS = 60


async def test_a_minute_at_1000_per_second_through_every_fault() -> None:
    await stream(SECONDS, block_websockets=False)


async def test_twenty_seconds_at_1000_per_second_over_the_sse_fallback() -> None:
    await stream(20, block_websockets=True)


async def stream(seconds: int, block_websockets: bool) -> None:
    with rtkit.serve() as srv, rtkit.chaos.proxy(srv, seed=8) as px:
        if block_websockets:
            px.block_websockets()
        pub = rtkit.Client(px.url, key=srv.root_key, client_id="pub")
        subs = [rtkit.Client(px.url, key=srv.root_key, client_id=f"sub{i}") for i in range(3)]
        got: dict[str, list[int]] = {s.client_id or "": [] for s in subs}
        losses: list[rtkit.ContinuityLoss] = []
        failures: list[BaseException] = []
        try:
            for client in (pub, *subs):
                await within(client.connect())
            for s in subs:
                ch = s.channel("minute")
                ch.on_continuity_lost(losses.append)
                await ch.subscribe(lambda m, seq=got[s.client_id or ""]: seq.append(m.data))
            total = RATE * seconds

            async def publish_all() -> None:
                pending: list[asyncio.Task[rtkit.PublishResult]] = []
                start = time.monotonic()
                for i in range(total):
                    pending.append(asyncio.create_task(pub.channel("minute").publish("n", i)))
                    if i % 50 == 49:  # 50 at a time, on the 1,000/s schedule
                        await asyncio.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))
                results = await asyncio.gather(*pending, return_exceptions=True)
                failures.extend(r for r in results if isinstance(r, BaseException))

            async def faults(done: asyncio.Event) -> None:
                rng = random.Random(60)
                plan = ["drop"] * 4 + ["blackhole"] + ["drop"] * 4 + ["refuse"] + ["drop"] * 99
                while not done.is_set() and plan:
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    fault = plan.pop(0)
                    if fault == "blackhole":
                        px.blackhole(3.0)
                        await asyncio.sleep(3.0)
                    elif fault == "refuse":
                        px.refuse(5.0)
                        px.drop_all()
                        await asyncio.sleep(5.0)
                    else:
                        px.drop_all()

            done = asyncio.Event()
            breaking = asyncio.create_task(faults(done))
            await within(publish_all(), timeout=seconds + 60)
            done.set()
            await within(breaking, timeout=10)
            await eventually(lambda: all(len(v) >= total for v in got.values()), timeout=60,
                             what="every subscriber caught up")
            assert failures == [], failures[:3]
            assert losses == []
            for who, seq in got.items():
                assert len(seq) == total, f"{who}: {len(seq)} deliveries"
                assert seq == list(range(total)), f"{who}: lost, duplicated or reordered"
            assert px.stats()["dropped"] >= 10 * seconds // SECONDS
            assert px.stats()["refused"] >= 1
            expected = "sse" if block_websockets else "websocket"
            for client in (pub, *subs):
                assert client.transport == expected
                assert {c.transport for c in client.state_history
                        if c.current is rtkit.ConnectionState.CONNECTED} == {expected}
        finally:
            for client in (pub, *subs):
                await client.close()
