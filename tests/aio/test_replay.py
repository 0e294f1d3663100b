"""The replay servers learners use: shapes, subscriptions, resume points, your own records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import rtkit
from rtkit import ConnectionState as S
from rtkit.aio import http
from rtkit.feed import FeedRecord, replay
from tests.conftest import eventually, within

QUICK: dict[str, Any] = {"backoff": rtkit.Backoff(base=0.05, cap=0.2), "connect_timeout": 1.0}


async def test_the_ticker_answers_subscriptions_errors_and_snapshots() -> None:
    with replay.ticker(["BTC-USD", "ETH-USD"], rate=100, seed=5) as exchange:
        assert exchange.url.startswith("ws://127.0.0.1:") and exchange.kind == "ws"
        async with rtkit.Feed(exchange.url, **QUICK) as feed:
            got: list[FeedRecord] = []
            feed.subscribe(got.append)
            await feed.send({"type": "subscribe", "product_ids": ["DOGE-EUR"],
                             "channels": ["ticker"]})
            await feed.send("{not json")
            await feed.send({"type": "subscribe", "product_ids": ["ETH-USD"],
                             "channels": [{"name": "ticker", "product_ids": ["BTC-USD"]}]})
            await eventually(lambda: len([r for r in got if r["type"] == "ticker"]) > 10)
            await feed.send({"type": "unsubscribe", "product_ids": ["BTC-USD"],
                             "channels": ["ticker"]})
            await eventually(lambda: got[-1]["type"] == "ticker"
                             and got[-1]["product_id"] == "ETH-USD"
                             and any(r["type"] == "subscriptions" and
                                     r["channels"][0]["product_ids"] == ["ETH-USD"]
                                     for r in got))
        kinds = [r["type"] for r in got]
        assert kinds[:3] == ["error", "error", "subscriptions"]
        assert "unknown products ['DOGE-EUR']" in got[0]["reason"]
        tick = next(r for r in got if r["type"] == "ticker")
        assert set(tick) >= {"sequence", "product_id", "price", "best_bid", "best_ask", "time",
                             "trade_id"} and isinstance(tick["price"], str)
        latest = await http.get_json(f"{exchange.http_url}/products/ETH-USD/ticker")
        assert latest["product_id"] == "ETH-USD" and latest["sequence"] >= 1
        with pytest.raises(rtkit.ConnectionFailed, match="404"):
            await http.get_json(f"{exchange.http_url}/products/NOPE/ticker")
        assert exchange.stats()["messages"] == 3  # the parsable subscribe/unsubscribe messages


async def test_recent_changes_start_at_the_end_when_the_resume_point_is_gone() -> None:
    with replay.recent_changes(rate=200, seed=6, history=20) as wiki:
        async with rtkit.Feed(wiki.url, sequence="meta.offset", **QUICK) as feed:
            await eventually(lambda: feed.serial > 3)
            wiki.pause()
            first_id = feed.last_event_id
            await feed.close()
            wiki.resume()
            await eventually(lambda: wiki.stats()["produced"] > 200, what="history moving on")
            await feed.connect()
            await eventually(lambda: bool(feed.gaps), what="the silent jump, seen as a gap")
        assert json.loads(first_id)[0]["offset"] < feed.gaps[0].next_seen - 20
        assert feed.bad_frame_count == 0


async def test_your_own_records_over_websocket_and_sse(tmp_path: Path) -> None:
    rows = [{"n": i, "v": i * i} for i in range(1, 6)]
    lines = tmp_path / "rows.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with replay.websocket(lines, rate=200, loop=False) as ws_server, \
            replay.sse(rows, rate=200, event="row", id_field="n", loop=False) as sse_server:
        assert sse_server.url.endswith("/events")
        ws_feed = rtkit.Feed(ws_server.url, **QUICK)
        sse_feed = rtkit.Feed(sse_server.url, **QUICK)
        got: dict[str, list[FeedRecord]] = {"ws": [], "sse": []}
        ws_feed.subscribe(got["ws"].append)
        sse_feed.subscribe(got["sse"].append, event="row")
        await within(ws_feed.connect())
        await within(sse_feed.connect())
        await eventually(lambda: ws_server.stats()["produced"] == 5
                         and sse_server.stats()["produced"] == 5)
        await ws_feed.close()
        await sse_feed.close()
    # (the stream started before we connected: what we got is a tail of the records, in order)
    for records in got.values():
        assert [r.data for r in records] == rows[len(rows) - len(records):]
    assert all(r.name == "row" and r.event_id == str(r["n"]) for r in got["sse"])
    with pytest.raises(ValueError):
        replay.websocket([])


async def test_a_feed_that_cannot_connect_is_suspended_but_keeps_trying() -> None:
    feed = rtkit.Feed("ws://127.0.0.1:9/", suspend_after=0.3, **QUICK)
    with pytest.raises(rtkit.ConnectionFailed):
        await feed.connect(timeout=0.2)
    await within(feed.wait_for_state(S.SUSPENDED))
    await within(feed.wait_for_state(S.CONNECTING))  # retrying from suspended too
    assert "disconnected for more than 0.3 s" in next(c.reason for c in feed.state_history
                                                  if c.current is S.SUSPENDED)
    await feed.close()
    assert feed.state is S.CLOSED


async def test_stopping_a_server_with_clients_connected_logs_no_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """A notebook re-running its set-up cell stops the replay servers under connected feeds:
    that must not print a traceback under the cell (Python 3.11 logs one for a cancelled
    ``start_server`` handler)."""
    wiki = replay.recent_changes(rate=50, seed=7)
    sky = replay.jetstream(rate=50, seed=7)
    feeds = [rtkit.Feed(wiki.url, **QUICK), rtkit.Feed(sky.url, **QUICK)]
    for feed in feeds:
        await within(feed.connect())
    await eventually(lambda: all(feed.serial > 3 for feed in feeds))
    with caplog.at_level("WARNING"):
        wiki.stop()
        sky.stop()
        await eventually(lambda: all(feed.state is not S.CONNECTED for feed in feeds))
    for feed in feeds:
        await feed.close()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], \
        caplog.text
