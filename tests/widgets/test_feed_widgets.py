"""A Feed is accepted wherever a channel is: plots, logs, recorders, audits, the panel."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator

import pytest

import rtkit
from rtkit import ConnectionState as S
from rtkit.chaos import DeliveryAudit
from rtkit.data import record
from rtkit.feed import replay
from rtkit.widgets import ConnectionPanel, DeliveryReport, LivePlot, MessageLog
from tests.conftest import eventually, within

SUB = {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["ticker"]}


def ticks(raw: str) -> dict[str, object] | None:
    message = json.loads(raw)
    if message.get("type") != "ticker":
        return None
    return {**message, "price": float(message["price"])}


@pytest.fixture
def exchange() -> Iterator[replay.ReplayServer]:
    with replay.ticker(["BTC-USD"], rate=100, seed=4) as server:
        yield server


@pytest.fixture
async def feed(exchange: replay.ReplayServer) -> AsyncIterator[rtkit.Feed]:
    f = rtkit.Feed(exchange.url, subscribe=SUB, parse=ticks, sequence="sequence",
                   sequence_key="product_id", timestamp="time", heartbeat=0.3,
                   backoff=rtkit.Backoff(base=0.05, cap=0.3), connect_timeout=1.0)
    await within(f.connect())
    yield f
    await f.close()


async def test_live_plot_and_message_log_take_a_feed(feed: rtkit.Feed) -> None:
    plot = await LivePlot(feed, ["price"], window=10).start()
    log = await MessageLog(feed, rows=3).start()
    await eventually(lambda: len(plot.series["price"]) >= 10 and log.recorder.count >= 10)
    plot.refresh()
    log.refresh()
    assert plot.figure.title == feed.name and plot.skipped == 0
    assert all(50_000 < y < 70_000 for y in plot.marks["price"].y)
    assert -10 <= float(plot.marks["price"].x[0]) <= 0
    last = log.recorder.rows[-1][0]
    assert f"<td>{last.serial}</td>" in log.table.value and "BTC-USD" in log.table.value
    await feed.close()  # the widgets follow the feed: they stop with it
    assert not plot.running and not log.running
    plot.close()
    log.close()


async def test_the_recorder_gives_a_dataframe_with_latency_from_the_record(
        feed: rtkit.Feed, exchange: replay.ReplayServer) -> None:
    rec = await record(feed, window=50)
    plain = rtkit.Feed(exchange.url, subscribe=SUB, parse=ticks)  # no timestamp= this time
    await within(plain.connect())
    rec_plain = await record(plain, window=50)
    await eventually(lambda: rec.count >= 60 and rec_plain.count >= 5)
    frame = rec.dataframe(flatten=True)
    assert len(frame) == 50 and frame["serial"].is_monotonic_increasing
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert str(frame["received"].dtype) == "datetime64[ns, UTC]"
    assert frame["latency_ms"].between(-5, 2000).all()  # real latency, from the record's time
    assert (frame["channel"] == feed.name).all() and (frame["name"] == "message").all()
    assert set(frame["data.product_id"]) == {"BTC-USD"} and frame["data.price"].dtype == float
    assert frame["data.sequence"].diff().dropna().eq(1).all()
    no_time = rec_plain.dataframe()
    assert no_time["latency_ms"].isna().all()  # no timestamp in the record: no latency
    await rec.stop()
    count = rec.count
    await eventually(lambda: feed.serial > count + 20)
    assert rec.count == count  # stopped
    await plain.close()


async def test_delivery_audit_and_report_count_a_feed(feed: rtkit.Feed,
                                                      exchange: replay.ReplayServer) -> None:
    audit = DeliveryAudit()
    await audit.watch(feed, "ticker")
    report = DeliveryReport(audit)
    await eventually(lambda: feed.serial > 10)
    exchange.skip(2, "BTC-USD")
    exchange.repeat("BTC-USD")
    await eventually(lambda: feed.duplicates == 1 and len(feed.gaps) == 1)
    totals = audit.totals()
    assert totals["delivered"] >= 10 and totals["duplicates_dropped"] == 1
    assert totals["continuity_lost"] == 1 and totals["out_of_order"] == 0
    # the 2 skipped records are lost for good; nothing is published through the audit, so
    # nothing is pending
    assert totals["duplicates_seen"] == 0 and totals["lost"] == 2 and totals["pending"] == 0
    report.refresh()
    assert "ticker" in report.table.value
    assert '<b>2</b> lost' in report.headline.value
    assert '<b>1</b> continuity lost' in report.headline.value
    assert report.lines.y[1][-1] == 2 and report.lines.y[0][-1] == 0  # lost, pending
    await within(audit.settle())  # nothing pending: settles at once
    audit.close()
    assert audit.totals()["lost"] == 2  # final
    report.close()


async def test_connection_panel_drives_a_feed(feed: rtkit.Feed) -> None:
    panel = ConnectionPanel(feed)
    assert "rtkit-state-connected" in panel.badge.value
    assert f"<code>{feed.name}#1</code>" in panel.info.value
    await within(panel.act("reconnect"))
    await eventually(lambda: feed.state is S.CONNECTED and "done" in panel.status.value)
    panel.refresh()
    assert "reconnect() called" in panel.table.value
    await eventually(lambda: feed.last_rtt is not None)
    panel.refresh()
    assert "heartbeat RTT –" not in panel.info.value
    assert panel.running and "rtkit-error" not in panel.status.value
    await within(panel.act("close"))
    await eventually(lambda: "rtkit-state-closed" in panel.badge.value)
    assert not panel.running
    await within(panel.act("connect"))
    await eventually(lambda: "rtkit-state-connected" in panel.badge.value)
    assert feed.connections == 3 and feed.subscriptions_sent == 3
    panel.close()


def test_latency_is_nan_only_without_a_record_time() -> None:
    from rtkit.core.feed import FeedCore
    from rtkit.data import MessageRecorder

    stamped, plain = FeedCore("a", timestamp="t"), FeedCore("b")
    rec = MessageRecorder()
    for core in (stamped, plain):
        for item in core.receive('{"t": 1700000000.5}', 1_700_000_000.75):
            rec(item)  # type: ignore[arg-type]
    frame = rec.dataframe()
    assert frame["latency_ms"].iloc[0] > 0 and math.isnan(frame["latency_ms"].iloc[1])


async def test_a_websocket_feed_pings_like_a_client_and_an_sse_feed_says_it_cannot(
        feed: rtkit.Feed) -> None:
    rtt = await within(feed.ping())
    assert 0 <= rtt < 5 and feed.last_rtt == rtt
    with replay.recent_changes(rate=20, seed=4) as wiki:
        async with rtkit.Feed(wiki.url) as changes:
            with pytest.raises(rtkit.ProtocolError) as refused:
                await changes.ping()
            assert refused.value.code == 40000
            panel = ConnectionPanel(changes)  # no RTT to show, and no error either
            await eventually(lambda: panel._pinged is not None)
            panel.refresh()
            assert "heartbeat RTT –" in panel.info.value
            assert "rtkit-error" not in panel.status.value and panel.running
            panel.close()
    await feed.close()
    with pytest.raises(rtkit.ConnectionClosed):
        await feed.ping()
