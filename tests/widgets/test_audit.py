"""The delivery audit: pending is not lost; lost is final (a continuity loss, a new epoch,
or closing the audit); settle() waits for what was acked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import rtkit
from rtkit.widgets import DeliveryReport
from tests.conftest import eventually, scaled, within

FAST: dict[str, Any] = dict(backoff=rtkit.Backoff(base=0.05, cap=0.2), heartbeat_grace=0.3,
                            connect_timeout=2)


@pytest.fixture
def env() -> Iterator[tuple[rtkit.Server, Any]]:
    with rtkit.serve(heartbeat_interval=0.3, connection_state_ttl=5) as srv, \
            rtkit.chaos.proxy(srv) as px:
        yield srv, px


@pytest.fixture
async def pair(env: tuple[rtkit.Server, Any]) -> AsyncIterator[tuple[Any, Any]]:
    """A publisher straight to the broker, a viewer through the proxy."""
    srv, px = env
    pub = rtkit.Client(srv.url, key=srv.root_key, client_id="pub")
    viewer = rtkit.Client(px.url, key=srv.root_key, client_id="viewer", **FAST)
    await within(pub.connect())
    await within(viewer.connect())
    yield pub, viewer
    await viewer.close()
    await pub.close()


async def publish(audit: rtkit.chaos.DeliveryAudit, pub: Any, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await audit.publish(pub.channel("s"), "tick", {"i": i})


async def test_an_outage_makes_messages_pending_not_lost(env: Any, pair: Any) -> None:
    _srv, px = env
    pub, viewer = pair
    audit = rtkit.chaos.DeliveryAudit()
    await audit.watch(viewer.channel("s"), "viewer")
    await publish(audit, pub, 5)
    await within(audit.settle())
    px.blackhole(1.5)
    await publish(audit, pub, 20, start=5)
    totals = audit.totals()
    assert totals["pending"] >= 15 and totals["lost"] == 0  # not here yet, not lost
    assert totals["delivered"] + totals["pending"] == totals["acked"] == 25
    await within(audit.settle(timeout=scaled(10)), timeout=15)
    totals = audit.totals()
    assert totals["delivered"] == 25 and totals["pending"] == 0 and totals["lost"] == 0
    assert totals["duplicates_seen"] == totals["out_of_order"] == 0
    assert "disconnected" in [c.current.value for c in viewer.state_history]


async def test_messages_past_a_continuity_loss_are_lost_for_good() -> None:
    with rtkit.serve(heartbeat_interval=0.3, max_channel_history_bytes=2500) as srv, \
            rtkit.chaos.proxy(srv) as px:
        async with rtkit.Client(srv.url, key=srv.root_key) as pub, \
                rtkit.Client(px.url, key=srv.root_key, **FAST) as away:
            audit = rtkit.chaos.DeliveryAudit()
            await audit.watch(away.channel("s"), "away")
            await publish(audit, pub, 3)
            await within(audit.settle())
            px.refuse(1.0)
            px.drop_all()
            await publish(audit, pub, 20, start=3)
            assert audit.totals()["pending"] == 20 and audit.totals()["lost"] == 0
            await eventually(lambda: audit.totals()["continuity_lost"] == 1, timeout=10)
            await within(audit.settle())
            totals = audit.totals()
            # history kept the last 5 of the 20: those arrived, 15 are lost
            assert totals["lost"] == 15 and totals["pending"] == 0
            assert totals["delivered"] == 3 + 5
            await publish(audit, pub, 3, start=23)
            await within(audit.settle())
            assert audit.totals()["lost"] == 15  # final: it never goes back down
            assert audit.totals()["delivered"] == 11


async def test_a_broker_restart_loses_what_was_pending_and_counts_the_new_epoch() -> None:
    key = "audit:" + "k" * 40
    first = rtkit.serve(heartbeat_interval=0.3, root_key=key)
    port = first.port
    with rtkit.chaos.proxy(first) as px:
        viewer = rtkit.Client(px.url, key=key, **FAST)
        await within(viewer.connect())
        pub = rtkit.Client(first.url, key=key, **FAST)
        await within(pub.connect())
        audit = rtkit.chaos.DeliveryAudit()
        await audit.watch(viewer.channel("s"), "viewer")
        await publish(audit, pub, 3)
        await within(audit.settle())
        px.refuse(30)  # the viewer cannot come back to this broker
        px.drop_all()
        await publish(audit, pub, 4, start=3)
        assert audit.totals()["pending"] == 4
        await pub.close()
        first.stop()
        with rtkit.serve(port=port, heartbeat_interval=0.3, root_key=key) as second:
            px.heal()
            await eventually(lambda: audit.totals()["lost"] == 4, timeout=15,
                             what="the old epoch's pending messages lost")
            async with rtkit.Client(second.url, key=key) as pub2:
                await publish(audit, pub2, 2, start=7)
                await within(audit.settle(timeout=scaled(10)), timeout=15)
            totals = audit.totals()
            assert totals["lost"] == 4 and totals["pending"] == 0 and totals["delivered"] == 5
            assert totals["out_of_order"] == 0 and totals["continuity_lost"] >= 1
        await viewer.close()


async def test_closing_the_audit_makes_pending_lost_and_stops_counting(pair: Any,
                                                                        env: Any) -> None:
    _srv, px = env
    pub, viewer = pair
    audit = rtkit.chaos.DeliveryAudit()
    await audit.watch(viewer.channel("s"), "viewer")
    await publish(audit, pub, 2)
    await within(audit.settle())
    px.blackhole(1.0)
    await publish(audit, pub, 3, start=2)
    audit.close()
    audit.close()  # twice is fine
    assert audit.closed
    totals = audit.totals()
    assert totals["lost"] == 3 and totals["pending"] == 0 and totals["delivered"] == 2
    await asyncio.sleep(scaled(2.0))  # the viewer resumes; the closed audit does not count it
    assert audit.totals() == totals
    with pytest.raises(RuntimeError):
        await audit.publish(pub.channel("s"), "late")
    with pytest.raises(RuntimeError):
        await audit.watch(viewer.channel("t"))


async def test_settle_times_out_when_an_acked_message_cannot_arrive(pair: Any,
                                                                    env: Any) -> None:
    _srv, px = env
    pub, viewer = pair
    audit = rtkit.chaos.DeliveryAudit()
    await audit.watch(viewer.channel("s"), "viewer")
    px.refuse(5.0)
    px.drop_all()
    await publish(audit, pub, 1)
    with pytest.raises(TimeoutError):
        await audit.settle(timeout=0.3)
    px.heal()
    await within(audit.settle(timeout=scaled(10)), timeout=15)


async def test_report_frame_and_delivery_report_widget(pair: Any, env: Any) -> None:
    _srv, px = env
    pub, viewer = pair
    audit = rtkit.chaos.DeliveryAudit()
    report = DeliveryReport(audit)
    await audit.watch(viewer.channel("s"), "viewer")
    await audit.publish(pub.channel("other"), "x")  # published to, watched by nobody
    px.blackhole(1.0)
    await publish(audit, pub, 10)
    report.refresh()
    assert 'class="rtkit-count-pending"' in report.headline.value
    assert "<b>10</b> pending" in report.headline.value
    assert "<b>0</b> lost" in report.headline.value
    frame = audit.report()
    assert list(frame["subscriber"]) == ["viewer", ""]
    assert frame.loc[0, "pending"] == 10 and frame.loc[1, "acked"] == 1
    assert all(str(t) == "int64" for t in frame.dtypes[2:])
    assert "<td>viewer</td>" in report.table.value
    await within(audit.settle(timeout=scaled(10)), timeout=15)
    report.refresh()
    assert "<b>10</b> delivered" in report.headline.value
    pendings = [p for _, p, _ in report.samples]
    assert 10 in pendings and pendings[-1] == 0  # the chart shows the rise and the fall
    assert list(report.lines.y[0])[-1] == 0 and len(report.lines.x) == len(pendings)
    audit.close()
    report.refresh()
    assert "audit closed" in report.headline.value
    report.close()
