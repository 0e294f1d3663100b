"""Widget logic without a browser: view-models, throttling, buttons, lifecycle."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import rtkit
from rtkit import ConnectionState as S
from rtkit.widgets import (
    ConnectionPanel,
    DeliveryReport,
    FaultPanel,
    LivePlot,
    MessageLog,
    PresenceList,
    Producer,
    Publisher,
    RedrawGate,
    TokenInspector,
    dashboard,
)
from rtkit.widgets.connection import timeline
from tests.conftest import eventually, within


@pytest.fixture
def srv() -> Any:
    with rtkit.serve(heartbeat_interval=0.3) as server:
        yield server


@pytest.fixture
async def client(srv: rtkit.Server) -> AsyncIterator[rtkit.Client]:
    c = rtkit.Client(srv.url, key=srv.root_key, client_id="me", heartbeat_grace=0.3,
                     backoff=rtkit.Backoff(base=0.05, cap=0.2))
    await within(c.connect())
    yield c
    await c.close()


def fake(serial: int, **data: Any) -> rtkit.Message:
    return rtkit.Message(f"m{serial}", "ticks", "tick", data, serial, int(time.time() * 1000),
                         "pub")


def test_redraw_gate() -> None:
    gate = RedrawGate(rate=10)
    assert not gate.due(0.0)  # nothing changed
    gate.mark()
    assert gate.due(0.0) and not gate.due(0.01)
    gate.mark()
    assert not gate.due(0.05)  # too soon: at most 10 per second
    assert gate.due(0.1) and gate.redraws == 2
    with pytest.raises(ValueError):
        RedrawGate(rate=0)


async def test_a_burst_of_10000_messages_gives_few_redraws_and_shows_the_last(
        client: rtkit.Client) -> None:
    ch = client.channel("ticks")
    log, plot = MessageLog(ch, rows=5, rate=20), LivePlot(ch, ["v"], rate=20)
    start = asyncio.get_running_loop().time()
    for i in range(1, 10_001):  # 10,000 messages in about half a second
        msg = fake(i, v=float(i))
        log.recorder(msg)
        plot.add(msg)
        if i % 500 == 0:
            await asyncio.sleep(0.025)
    elapsed = asyncio.get_running_loop().time() - start
    await asyncio.sleep(0.15)  # one more redraw period
    budget = (elapsed + 0.15) * 20 + 2
    assert log.gate.redraws <= budget and plot.gate.redraws <= budget
    assert log.gate.redraws >= 2 and plot.gate.redraws >= 2
    assert "<td>10000</td>" in log.table.value  # the final redraw shows the last message
    assert log.table.value.index("<td>10000</td>") < log.table.value.index("<td>9999</td>")
    assert float(plot.marks["v"].y[-1]) == 10000.0
    assert len(plot.marks["v"].y) <= 2000  # bounded
    log.close()
    plot.close()
    assert not log.running and not plot.running


async def test_live_plot_series_window_and_axes(client: rtkit.Client) -> None:
    plot = LivePlot(client.channel("s"), {"price": lambda m: m.data["p"],
                                          "double": lambda m: m.data["p"] * 2}, window=5)
    now = int(time.time() * 1000)
    plot.add(rtkit.Message("old", "s", "t", {"p": 1.0}, 1, now - 10_000))
    plot.add(rtkit.Message("new", "s", "t", {"p": 3.0}, 2, now))
    plot.add(rtkit.Message("bad", "s", "t", {"p": "n/a"}, 3, now))
    plot.refresh()
    assert list(plot.marks["price"].y) == [3.0] and list(plot.marks["double"].y) == [6.0]
    assert -1 < float(plot.marks["price"].x[0]) <= 0
    assert plot.x_scale.min == -5 and plot.y_scale.min < 3.0 < plot.y_scale.max
    assert plot.skipped == 1
    plot.close()


async def test_message_log_and_plot_end_to_end(client: rtkit.Client, srv: rtkit.Server) -> None:
    ch = client.channel("live")
    log = await MessageLog(ch, rows=3).start()
    plot = await LivePlot(ch, ["x"]).start()
    async with rtkit.Client(srv.url, key=srv.root_key, client_id="sensor") as pub:
        for i in range(5):
            await pub.channel("live").publish("reading", {"x": i})
    await eventually(lambda: "<td>5</td>" in log.table.value and len(plot.marks["x"].y) == 5)
    assert "sensor" in log.table.value and "<td>2</td>" not in log.table.value  # 3 rows
    assert "5 messages received" in log.counter.value
    log.close()
    plot.close()


async def test_connection_panel_shows_transitions_and_buttons_work(client: rtkit.Client) -> None:
    panel = ConnectionPanel(client)
    assert "connected" in panel.badge.value and "rtkit-state-connected" in panel.badge.value
    await within(panel.act("reconnect"))
    await eventually(lambda: client.state is S.CONNECTED and "done" in panel.status.value)
    panel.refresh()
    assert panel.table.value.count("<tr>") >= 5  # header + 4 transitions
    assert "reconnect() called" in panel.table.value
    rows = timeline(client.state_history)
    assert rows[0].state == "connected" and rows[1].state == "connecting"
    assert rows[2].state == "disconnected" and rows[2].lasted >= 0
    await within(panel.act("close"))
    await eventually(lambda: "rtkit-state-closed" in panel.badge.value)
    assert not panel.running  # the client closed: background work stopped
    await within(panel.act("connect"))
    await eventually(lambda: "rtkit-state-connected" in panel.badge.value)
    assert panel.running
    panel.close()


async def test_publisher_shows_errors_inline(srv: rtkit.Server) -> None:
    token = srv.issue_token(client_id="learner", capabilities={"chat": ["publish"]})
    async with rtkit.Client(srv.url, token=token) as c:
        pub = Publisher(c, channel="chat", data="{not json")
        assert pub.publish() is None
        assert "40001" in pub.status.value and "rtkit-error" in pub.status.value
        pub.data.value = '{"text": "hi"}'
        await within(pub.publish())
        assert "acked: serial 1" in pub.status.value
        pub.channel.value = "news"
        await within(pub.publish())
        assert "40300" in pub.status.value and isinstance(pub.last_error,
                                                          rtkit.CapabilityError)
        pub.channel.value = "bad channel"
        pub.publish()
        assert "40007" in pub.status.value
        pub.close()


async def test_token_inspector_countdown_renew_and_expire(srv: rtkit.Server) -> None:
    c = rtkit.Client(srv.url, auth_callback=lambda: srv.issue_token(
        client_id="t", capabilities={"x:*": ["subscribe"]}, ttl=30),
        backoff=rtkit.Backoff(base=0.05, cap=0.2))
    await within(c.connect())
    inspector = TokenInspector(c, server=srv)
    inspector.refresh()
    assert "<code>t</code>" in inspector.view.value and "x:*" in inspector.view.value
    assert "expires in" in inspector.view.value and "next renewal in" in inspector.view.value
    await within(inspector.renew())
    assert c.token_source is not None and c.token_source.renewals == 2
    inspector.expire()
    await eventually(lambda: any(isinstance(h.error, rtkit.TokenExpired)
                                 for h in c.state_history))
    await within(c.wait_for_state(S.CONNECTED))
    assert "expired the token of 1" in inspector.status.value
    inspector.refresh()
    for kind in ("expired", "disconnected", "connected"):  # what the learner sees happen
        assert f"<b>{kind}</b>" in inspector.events.value
    bare = TokenInspector(token=srv.issue_token(client_id="solo", ttl=60))
    assert "solo" in bare.view.value and bare.renew_button.disabled
    inspector.close()
    bare.close()
    await c.close()


async def test_fault_panel_controls_the_proxy(srv: rtkit.Server) -> None:
    with rtkit.chaos.proxy(srv) as px:
        async with rtkit.Client(px.url, key=srv.root_key,
                                backoff=rtkit.Backoff(base=0.05, cap=0.2)) as c:
            panel = FaultPanel(px)
            panel.drop_button.click()
            assert px.stats()["dropped"] == 1 and "drop: 1" in panel.status.value
            panel.latency.value = 100
            panel.jitter.value = 20
            assert px.faults()["latency_ms"] == 100 and px.faults()["jitter_ms"] == 20
            panel.bandwidth.value = 10_000
            panel.block.value = True
            assert px.faults()["bandwidth_bps"] == 10_000 and px.faults()["block_websocket"]
            panel.blackhole_seconds.value = 0.5
            panel.blackhole_button.click()
            panel.refresh()
            assert "blackhole" in panel.counters.value
            panel.heal()
            assert px.faults()["latency_ms"] == 0 and not px.faults()["block_websocket"]
            assert panel.latency.value == 0
            px.block_websockets()  # in code: the toggle follows, and changes nothing
            panel.refresh()
            assert panel.block.value and px.faults()["block_websocket"]
            assert "block" not in panel.status.value
            px.block_websockets(False)
            panel.refresh()
            assert not panel.block.value and not px.faults()["block_websocket"]
            await within(c.wait_for_state(S.CONNECTED, timeout=5))
            panel.close()


async def test_delivery_report_and_presence(client: rtkit.Client, srv: rtkit.Server) -> None:
    audit = rtkit.chaos.DeliveryAudit()
    report = DeliveryReport(audit)
    await audit.watch(client.channel("a"), "me")
    for i in range(3):
        await audit.publish(client.channel("a"), "n", i)
    await eventually(lambda: audit.totals()["delivered"] == 3)
    report.refresh()
    assert "<td>me</td>" in report.table.value
    assert "<b>3</b> delivered" in report.headline.value
    assert "<b>0</b> pending" in report.headline.value and "<b>0</b> lost" in report.headline.value
    presence = await PresenceList(client.channel("room")).start()
    async with rtkit.Client(srv.url, key=srv.root_key, client_id="ana") as ana:
        await ana.channel("room").presence.enter({"mood": "ok"})
        await eventually(lambda: "ana" in (presence.refresh() or presence.table.value))
    await eventually(lambda: "ana" not in (presence.refresh() or presence.table.value))
    report.close()
    presence.close()


async def test_dashboard_lays_out_and_closes_everything(client: rtkit.Client,
                                                        srv: rtkit.Server) -> None:
    with rtkit.chaos.proxy(srv) as px:
        board = await dashboard(client, "demo", fields=["v"], proxy=px)
        assert set(board.parts) == {"connection", "publisher", "log", "plot", "faults"}
        board.close()
        assert all(part.closed and not part.running for part in board.parts.values())


async def test_widgets_stop_when_their_client_closes(client: rtkit.Client) -> None:
    log = await MessageLog(client.channel("z")).start()
    assert log.running
    await client.close()
    await eventually(lambda: not log.running)
    assert not log.closed  # still showing its last state


def test_without_a_loop_widgets_redraw_on_request() -> None:
    with rtkit.serve() as srv:
        c = rtkit.Client(srv.url, key=srv.root_key)
        panel = ConnectionPanel(c)
        assert not panel.running and "initialized" in panel.badge.value
        panel.close()


async def test_feed_runs_until_stopped_and_shows_errors_in_one_line(
        client: rtkit.Client) -> None:
    sent: list[int] = []

    async def ticks() -> None:
        while True:
            await client.channel("f").publish("t", len(sent))
            sent.append(1)
            await asyncio.sleep(0.01)

    feed = Producer(ticks)
    await eventually(lambda: len(sent) >= 3)
    feed.refresh()
    assert feed.active and "ticks</b> running" in feed.label.value
    assert feed.button.description == "Stop"
    feed.button.click()  # Stop
    assert not feed.active and "stopped after" in feed.label.value
    count = len(sent)
    await asyncio.sleep(0.05)
    assert len(sent) == count and feed.button.description == "Start"
    feed.button.click()  # Start again
    await eventually(lambda: len(sent) > count)
    await client.close()  # the source fails: shown in the widget, not as a traceback
    await eventually(lambda: not feed.active)
    feed.refresh()
    assert "80001" in feed.label.value and "rtkit-error" in feed.label.value
    feed.close()
    assert feed.closed and not feed.running

    later = Producer(ticks, name="later", start=False)
    assert not later.active and "later</b> not started" in later.label.value
    later.close()


async def test_live_plot_separate_axes_anchor_and_bounded_drawing(
        client: rtkit.Client) -> None:
    now = int(time.time() * 1000)
    plot = LivePlot(client.channel("p"), ["a", "b"], y_axes="separate", window=5)
    plot.add(rtkit.Message("1", "p", "t", {"a": 100.0, "b": 1.0}, 1, now))
    plot.add(rtkit.Message("2", "p", "t", {"a": 101.0, "b": 2.0}, 2, now))
    plot.refresh()
    assert plot.y_scales["a"] is not plot.y_scales["b"]
    assert plot.y_scales["a"].min < 100 < 101 < plot.y_scales["a"].max < 110
    assert plot.y_scales["b"].min < 1 < 2 < plot.y_scales["b"].max < 10
    sides = [axis.side for axis in plot.figure.axes[1:]]
    assert sides == ["left", "right"]
    plot.close()

    burst = LivePlot(client.channel("q"), ["v"], window=3, anchor="latest", max_points=5000,
                     max_drawn=100)
    old = now - 60_000  # a burst that ended a minute ago stays on screen
    for i in range(5000):
        burst.add(rtkit.Message(f"m{i}", "q", "t", {"v": float(i)}, i + 1, old + i // 2))
    burst.refresh()
    x, y = burst.marks["v"].x, burst.marks["v"].y
    assert len(y) == 100 and float(y[0]) == 0.0 and float(y[-1]) == 4999.0
    assert float(x[-1]) == 0.0 and -3 <= float(x[0]) < -2
    assert "latest message" in burst.figure.axes[0].label
    burst.close()
    for bad in ({"y_axes": "twin"}, {"anchor": "then"}, {"window": 0}, {"max_drawn": 1}):
        with pytest.raises(ValueError):
            LivePlot(client.channel("q"), ["v"], **bad)


async def test_connection_panel_shows_the_transport_and_its_changes(srv: rtkit.Server) -> None:
    with rtkit.chaos.proxy(srv) as px:
        px.block_websockets()
        async with rtkit.Client(px.url, key=srv.root_key) as client:
            panel = ConnectionPanel(client)
            panel.refresh()
            assert 'class="rtkit-transport">sse<' in panel.info.value
            rows = timeline(client.state_history)
            assert (rows[0].state, rows[0].transport) == ("connected", "sse")
            assert rows[2].transport == "websocket" and "websocket refused" in rows[2].reason
            assert "<td>sse</td>" in panel.table.value
            panel.close()


async def test_connection_panel_measures_rtt_at_once_and_bounds_its_timeline(
        client: rtkit.Client) -> None:
    client._core.last_rtt = None  # as just after connecting: no heartbeat yet
    panel = ConnectionPanel(client, height="7em")
    await eventually(lambda: client.last_rtt is not None, what="a ping on connect")
    panel.refresh()
    assert "heartbeat RTT –" not in panel.info.value and " ms" in panel.info.value
    assert 'max-height:7em;overflow-y:auto' in panel.table.value
    assert "<th>after</th>" not in panel.table.value and ">after</th>" in panel.table.value
    assert re.search(r"<td>\d\d:\d\d:\d\d\.\d{3}</td>", panel.table.value)
    assert "rtkit-live" in panel._dom_classes
    await client.close()
    await eventually(lambda: "rtkit-stopped" in panel._dom_classes)
    panel.close()


async def test_recorder_closes_and_states_frame_is_readable(client: rtkit.Client) -> None:
    rec = await rtkit.data.record(client.channel("r"))
    await client.channel("r").publish("x", 1)
    await eventually(lambda: rec.count == 1)
    rec.close()
    await client.channel("r").publish("x", 2)
    await asyncio.sleep(0.05)
    assert rec.count == 1 and len(rec.dataframe()) == 1
    frame = rtkit.data.states_frame(client)
    assert (frame["at"].dt.microsecond % 1000 == 0).all()  # to the millisecond
    assert (frame["at"].dt.nanosecond == 0).all()
    assert all(round(v, 3) == v for v in frame["previous_lasted_s"])
