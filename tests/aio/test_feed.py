"""rtkit.Feed over loopback: WebSocket and SSE replay servers, the fault proxy, odd servers."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

import rtkit
from rtkit import ConnectionState as S
from rtkit.aio import http
from rtkit.core import sse
from rtkit.feed import FeedRecord, Gap, replay
from tests.conftest import eventually, scaled, within

FAST: dict[str, Any] = {"backoff": rtkit.Backoff(base=0.05, cap=0.3), "connect_timeout": 1.0,
                        "heartbeat": 0.3, "heartbeat_grace": 0.3}
TICKER_SUB = {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channels": ["ticker"]}


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Awaitable[rtkit.Feed]]]:
    """Feeds with short timers, closed afterwards."""
    feeds: list[rtkit.Feed] = []

    async def factory(url: Any, connect: bool = True, **kwargs: Any) -> rtkit.Feed:
        feed = rtkit.Feed(url, **{**FAST, **kwargs})
        feeds.append(feed)
        if connect:
            await within(feed.connect())
        return feed

    yield factory
    for feed in feeds:
        await feed.close()


@pytest.fixture
def ticker() -> Iterator[replay.ReplayServer]:
    with replay.ticker(rate=100, seed=1) as server:
        yield server


@pytest.fixture
def wiki() -> Iterator[replay.ReplayServer]:
    with replay.recent_changes(rate=100, seed=2, keepalive=0.1) as server:
        yield server


def proxy_for(server: replay.ReplayServer) -> rtkit.chaos.FaultProxy:
    return rtkit.chaos.proxy((server.host, server.port), seed=1)


def tickers(got: list[FeedRecord]) -> list[FeedRecord]:
    return [r for r in got if r.get("type") == "ticker"]


def reasons(feed: rtkit.Feed, state: S) -> list[str]:
    return [c.reason for c in feed.state_history if c.current is state]


# ------------------------------------------------------------------------ WebSocket


async def test_reconnects_after_drops_resends_the_subscription_and_reports_the_gaps(
        ticker: replay.ReplayServer, make: Any) -> None:
    with proxy_for(ticker) as px:
        feed = await make(ticker.url_via(px), subscribe=TICKER_SUB, sequence="sequence",
                          sequence_key="product_id")
        got: list[FeedRecord] = []
        feed.subscribe(got.append)
        for drop in range(2):
            await eventually(lambda n=drop: len(tickers(got)) >= 20 * (n + 1), what="records")
            assert px.drop_all() == 1
            await within(feed.wait_for_state(S.DISCONNECTED))
            await within(feed.wait_for_state(S.CONNECTED))
        await eventually(lambda: len(tickers(got)) >= 60, what="records after reconnecting")
    subscribes = [m for m in ticker.messages if m.get("type") == "subscribe"]
    assert subscribes == [TICKER_SUB] * 3 and feed.subscriptions_sent == 3
    assert feed.connections == 3 and len(reasons(feed, S.DISCONNECTED)) == 2
    assert feed.gaps, "the ticker went on while we were away: gaps must be reported"
    for gap in feed.gaps:
        assert gap.key in ("BTC-USD", "ETH-USD") and gap.missing >= 1
    for product in ("BTC-USD", "ETH-USD"):
        numbers = [r["sequence"] for r in tickers(got) if r["product_id"] == product]
        assert numbers == sorted(set(numbers))
        missed = set(range(numbers[0], numbers[-1] + 1)) - set(numbers)
        assert sum(g.missing for g in feed.gaps if g.key == product) == len(missed)
    assert feed.stats()["missed"] == sum(g.missing for g in feed.gaps)


async def test_a_blackhole_is_caught_by_the_heartbeat(ticker: replay.ReplayServer,
                                                      make: Any) -> None:
    with proxy_for(ticker) as px:
        feed = await make(ticker.url_via(px), subscribe=TICKER_SUB)
        await within(feed.wait_for_state(S.CONNECTED))
        assert feed.last_rtt is None or feed.last_rtt >= 0
        await eventually(lambda: feed.last_rtt is not None, what="a pong")
        px.blackhole(1.5)
        started = time.monotonic()
        await within(feed.wait_for_state(S.DISCONNECTED))
        assert time.monotonic() - started < scaled(1.2)  # heartbeat 0.3 + grace 0.3 (+ a tick)
        assert "link dead" in reasons(feed, S.DISCONNECTED)[-1]
        px.heal()
        await within(feed.wait_for_state(S.CONNECTED), 5)
        count = feed.serial
        await eventually(lambda: feed.serial > count + 5, what="records after the blackhole")


async def test_data_silence_reconnects_even_while_pongs_flow(ticker: replay.ReplayServer,
                                                             make: Any) -> None:
    feed = await make(ticker.url, subscribe=TICKER_SUB, max_silence=0.6)
    await eventually(lambda: feed.serial > 5)
    ticker.pause()
    await within(feed.wait_for_state(S.DISCONNECTED))
    why = reasons(feed, S.DISCONNECTED)[-1]
    assert "no data for" in why and "max_silence=0.6 s" in why
    assert feed.last_rtt is not None  # the link itself answered pings all along
    ticker.resume()
    await within(feed.wait_for_state(S.CONNECTED))
    count = feed.serial
    await eventually(lambda: feed.serial > count + 5, what="records after resuming")
    assert feed.subscriptions_sent >= 2


async def test_refused_connections_are_retried_with_backoff_and_never_given_up(
        ticker: replay.ReplayServer, make: Any) -> None:
    with proxy_for(ticker) as px:
        feed = await make(ticker.url_via(px), subscribe=TICKER_SUB)
        errors: list[rtkit.RtkitError] = []
        feed.on_error(errors.append)
        px.refuse(1.0)
        px.drop_all()
        await within(feed.wait_for_state(S.DISCONNECTED))
        await within(feed.wait_for_state(S.CONNECTED), 5)
    failed = [r for r in reasons(feed, S.DISCONNECTED) if r.startswith("connect failed")]
    assert len(failed) >= 2, feed.state_history
    assert all(isinstance(e, rtkit.ConnectionError_) for e in errors)
    retries = [c for c in feed.state_history if c.trigger is rtkit.Trigger.RETRY]
    assert len(retries) >= len(failed) and feed.state is S.CONNECTED


async def test_connect_raises_in_time_but_keeps_retrying(ticker: replay.ReplayServer,
                                                         make: Any) -> None:
    with proxy_for(ticker) as px:
        px.refuse(1.0)
        feed = await make(ticker.url_via(px), connect=False, subscribe=TICKER_SUB)
        with pytest.raises(rtkit.ConnectionFailed, match="still retrying"):
            await feed.connect(timeout=0.3)
        await within(feed.wait_for_state(S.CONNECTED), 5)
        await eventually(lambda: feed.serial > 0)


async def test_max_retries_gives_up_when_asked(make: Any) -> None:
    feed = await make("ws://127.0.0.1:9", connect=False, max_retries=2)
    with pytest.raises(rtkit.ConnectionFailed):
        await feed.connect()
    assert feed.state is S.FAILED
    assert "gave up after 2 failed attempts" in feed.state_history[-1].reason


async def test_a_skipped_and_a_repeated_number_are_reported_once_each(
        ticker: replay.ReplayServer, make: Any) -> None:
    feed = await make(ticker.url, subscribe=TICKER_SUB, sequence="sequence",
                      sequence_key="product_id")
    seen: list[Gap] = []
    feed.on_gap(seen.append)
    await eventually(lambda: feed.serial > 10)
    ticker.skip(3, "BTC-USD")
    assert ticker.repeat("ETH-USD")
    await eventually(lambda: len(seen) == 1 and feed.duplicates == 1, what="gap and duplicate")
    count = feed.serial
    await eventually(lambda: feed.serial > count + 20, what="records after the gap")
    assert seen == feed.gaps == feed.continuity_losses
    assert (seen[0].key, seen[0].missing) == ("BTC-USD", 3)
    assert seen[0].next_seen == seen[0].last_seen + 4
    assert feed.duplicates == feed.duplicates_dropped == 1 and feed.state is S.CONNECTED


async def test_garbage_is_counted_and_kept_without_stopping_the_stream(
        ticker: replay.ReplayServer, make: Any) -> None:
    feed = await make(ticker.url, subscribe=TICKER_SUB)
    errors: list[rtkit.RtkitError] = []
    feed.on_error(errors.append)
    await eventually(lambda: feed.serial > 5)
    ticker.garbage("{garbage")
    await eventually(lambda: feed.bad_frame_count == 1)
    count = feed.serial
    await eventually(lambda: feed.serial > count + 10, what="records after the garbage")
    (bad,) = feed.bad_frames
    assert bad.raw == b"{garbage" and bad.error.code == 40001
    assert [e.code for e in errors] == [40001] and feed.state is S.CONNECTED
    assert feed.connections == 1


async def test_a_resync_callable_is_called_on_a_gap_and_its_records_delivered(
        ticker: replay.ReplayServer, make: Any) -> None:
    async def snapshot(gap: Gap) -> list[Any]:
        return [await http.get_json(f"{ticker.http_url}/products/{gap.key}/ticker")]

    feed = await make(ticker.url, subscribe=TICKER_SUB, sequence="sequence",
                      sequence_key="product_id", resync=snapshot)
    got: list[FeedRecord] = []
    feed.subscribe(got.append)
    await eventually(lambda: feed.serial > 5)
    ticker.skip(2, "ETH-USD")
    await eventually(lambda: any(r.name == "resync" for r in got), what="the snapshot")
    (snap,) = [r for r in got if r.name == "resync"]
    assert snap["product_id"] == "ETH-USD" and snap["sequence"] >= feed.gaps[0].next_seen
    assert feed.stats()["resyncs"] == 1


async def test_a_cursor_url_resumes_and_the_replayed_duplicates_are_dropped(
        make: Any) -> None:
    with replay.jetstream(rate=100, seed=3) as sky, proxy_for(sky) as px:
        feed: rtkit.Feed | None = None

        def url() -> str:
            base = sky.url_via(px) + "?wantedCollections=app.bsky.feed.post"
            cursor = feed.sequences.get(None) if feed is not None else None
            return base + (f"&cursor={cursor}" if cursor else "")

        feed = await make(url, sequence="time_us", contiguous=False, timestamp="time_us")
        got: list[FeedRecord] = []
        feed.subscribe(got.append)
        await eventually(lambda: len(got) > 5)
        px.drop_all()
        await within(feed.wait_for_state(S.DISCONNECTED))
        await within(feed.wait_for_state(S.CONNECTED))
        count = len(got)
        await eventually(lambda: len(got) > count + 5)
        cursors = [m["cursor"] for m in sky.messages]
    assert cursors[0] is None and cursors[1] is not None
    assert feed.duplicates >= 1  # the cursor is inclusive: at least the last one came again
    stamps = [r["time_us"] for r in got]
    assert stamps == sorted(set(stamps)) and not feed.gaps
    assert all(r["commit"]["collection"] == "app.bsky.feed.post" for r in got
               if r["kind"] == "commit")
    assert all(r.source_time and abs(r.received * 1000 - r.timestamp) < 5000 for r in got)


async def test_send_goes_out_as_json_text_or_bytes(make: Any) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        feed = await make(f"ws://127.0.0.1:{port}", parse="text")
        got: list[FeedRecord] = []
        feed.subscribe(got.append)
        await feed.send({"op": "ping", "n": 1})
        await feed.send("plain")
        await feed.send(b"\x01\x02")
        await eventually(lambda: len(got) == 3)
        assert [r.data for r in got[:2]] == ['{"op":"ping","n":1}', "plain"]
        await feed.close()
        with pytest.raises(rtkit.ConnectionClosed):
            await feed.send("late")


async def test_async_for_async_callbacks_and_close_ending_iteration(
        ticker: replay.ReplayServer, make: Any) -> None:
    feed = await make(ticker.url, subscribe=TICKER_SUB, connect=False,
                      parse=lambda raw: r if (r := json.loads(raw)).get("type") == "ticker"
                      else None)
    slow: list[int] = []

    async def handler(record: FeedRecord) -> None:
        await asyncio.sleep(0)
        slow.append(record["sequence"])

    sub = await feed.subscribe(handler)  # await works, as on a channel
    plain = feed.subscribe(lambda r: None)
    await feed.connect()
    first: list[FeedRecord] = []
    async with asyncio.timeout(scaled(5)):
        async for record in feed:
            first.append(record)
            if len(first) == 5:
                break
    assert all(r["type"] == "ticker" for r in first)
    await eventually(lambda: len(slow) >= 5)
    await plain.unsubscribe()
    assert not plain.active and sub.active
    iterator = feed.subscribe()

    async def drain() -> int:
        return sum([1 async for _ in iterator])

    task = asyncio.create_task(drain())
    await eventually(lambda: iterator.delivered > 3)
    await feed.close()
    assert await within(task) >= 3 and not sub.active
    assert [c.current for c in feed.state_history][-2:] == [S.CLOSING, S.CLOSED]


async def test_state_changes_can_be_iterated(ticker: replay.ReplayServer, make: Any) -> None:
    feed = await make(ticker.url, connect=False, subscribe=TICKER_SUB)
    changes: list[rtkit.StateChange] = []

    async def watch() -> None:
        async for change in feed.state_changes():
            changes.append(change)
            if change.current is S.CONNECTED:
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await feed.connect()
    await within(task)
    assert [c.current for c in changes] == [S.CONNECTING, S.CONNECTED]
    assert "1 subscription message sent" in changes[-1].reason


def test_the_kind_comes_from_the_url_or_is_refused() -> None:
    assert rtkit.Feed("wss://x.example/ws").kind == "ws"
    assert rtkit.Feed("https://x.example/stream").kind == "sse"
    assert rtkit.Feed("https://x.example/ws", kind="ws").kind == "ws"
    feed = rtkit.Feed("https://x.example/v2/stream/recentchange")
    assert feed.name == "x.example/v2/stream/recentchange" and "(sse) initialized" in repr(feed)
    with pytest.raises(ValueError):
        rtkit.Feed("ftp://x.example/")
    with pytest.raises(ValueError):
        rtkit.Feed("https://x.example/stream", subscribe={"a": 1})
    with pytest.raises(ValueError):
        rtkit.Feed("ws://x.example/", max_silence=0)


# ------------------------------------------------------------------------ Server-Sent Events


async def test_sse_resumes_with_last_event_id_without_gaps_or_duplicates(
        wiki: replay.ReplayServer, make: Any) -> None:
    with proxy_for(wiki) as px:
        feed = await make(wiki.url_via(px), sequence="meta.offset", timestamp="meta.dt")
        got: list[FeedRecord] = []
        feed.subscribe(got.append)
        for drop in range(2):
            await eventually(lambda n=drop: len(got) > 20 * (n + 1))
            px.drop_all()
            await within(feed.wait_for_state(S.DISCONNECTED))
            await within(feed.wait_for_state(S.CONNECTED))
        count = len(got)
        await eventually(lambda: len(got) > count + 20)
    offsets = [r["meta"]["offset"] for r in got]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))  # nothing missed
    assert not feed.gaps and feed.duplicates == 0
    sent_ids = [m["last-event-id"] for m in wiki.messages]
    assert sent_ids[0] is None and all(sent_ids[1:]) and len(sent_ids) == 3
    assert "resuming after event" in feed.state_history[-1].reason
    assert json.loads(feed.last_event_id)[0]["offset"] == offsets[-1]
    assert all(r.name == "message" and r.event_id for r in got)
    assert all(r.source_time for r in got)


async def test_sse_skip_and_repeat_and_garbage(wiki: replay.ReplayServer, make: Any) -> None:
    feed = await make(wiki.url, sequence="meta.offset")
    await eventually(lambda: feed.serial > 5)
    wiki.skip(4)
    await eventually(lambda: len(feed.gaps) == 1)
    assert wiki.repeat()
    wiki.garbage("not json")
    await eventually(lambda: feed.duplicates == 1 and feed.bad_frame_count == 1)
    count = feed.serial
    await eventually(lambda: feed.serial > count + 10)
    assert feed.gaps[0].missing == 4 and len(feed.gaps) == 1
    assert feed.bad_frames[0].raw == b"not json" and feed.connections == 1


async def test_sse_blackhole_is_caught_by_missing_keepalives(wiki: replay.ReplayServer,
                                                             make: Any) -> None:
    with proxy_for(wiki) as px:
        feed = await make(wiki.url_via(px))
        wiki.pause()  # only keep-alive comments flow now: they keep the link alive
        await asyncio.sleep(0.8)
        assert feed.state is S.CONNECTED
        px.blackhole(1.0)
        await within(feed.wait_for_state(S.DISCONNECTED))
        assert "link dead" in reasons(feed, S.DISCONNECTED)[-1]
        wiki.resume()
        await within(feed.wait_for_state(S.CONNECTED), 5)


async def test_sse_honours_the_servers_retry(make: Any) -> None:
    with replay.recent_changes(rate=50, retry=600, keepalive=0.1) as wiki:
        feed = await make(wiki.url)
        await eventually(lambda: feed.serial > 2)
        wiki.drop_all()
        await within(feed.wait_for_state(S.DISCONNECTED))
        lost = time.monotonic()
        await within(feed.wait_for_state(S.CONNECTING))
        assert time.monotonic() - lost >= 0.55  # never sooner than retry: 600 ms


async def test_sse_data_silence(wiki: replay.ReplayServer, make: Any) -> None:
    feed = await make(wiki.url, max_silence=0.5)
    await eventually(lambda: feed.serial > 2)
    wiki.pause()
    await within(feed.wait_for_state(S.DISCONNECTED))
    assert "no data" in reasons(feed, S.DISCONNECTED)[-1]
    wiki.resume()
    await within(feed.wait_for_state(S.CONNECTED))


async def canned(responses: list[bytes]) -> tuple[asyncio.Server, str]:
    """A server answering each connection with the next canned bytes (the last one again)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(responses.pop(0) if len(responses) > 1 else responses[0])
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/events"


def stream(body: bytes, content_type: bytes = b"text/event-stream") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type
            + b"\r\nConnection: close\r\n\r\n" + body)


async def test_sse_errors_are_retried_but_204_stops(make: Any) -> None:
    server, url = await canned([
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        stream(b"<html>", b"text/html"),
        stream(b"data: {\"n\": 1}\n\n" + sse.encode("x" * 300) + b"data: {\"n\": 2}\n\n"),
        b"HTTP/1.1 204 No Content\r\n\r\n"])
    async with server:
        feed = await make(url, connect=False, max_frame_size=200, heartbeat=None)
        got: list[FeedRecord] = []
        feed.subscribe(got.append)
        feed.connect_timeout = 3.0
        await feed.connect()
        await eventually(lambda: len(got) == 2)
        await within(feed.wait_for_state(S.FAILED))
    failures = reasons(feed, S.DISCONNECTED)
    assert "HTTP 503 Service Unavailable: busy" in failures[0]
    assert "sent text/html, not text/event-stream" in failures[1]
    assert "204 No Content" in feed.state_history[-1].reason
    assert [r["n"] for r in got] == [1, 2]
    (bad,) = feed.bad_frames
    assert bad.error.code == 42902 and bad.size == 306 and bad.raw.startswith(b"data: xxx")


async def test_an_sse_feed_cannot_send(wiki: replay.ReplayServer, make: Any) -> None:
    feed = await make(wiki.url)
    with pytest.raises(rtkit.ProtocolError):
        await feed.send({"a": 1})


# ------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context)."""
    folder: Path = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is needed to make a test certificate")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_wss_and_https_with_an_ssl_context(tls: tuple[ssl.SSLContext, ssl.SSLContext],
                                                 make: Any) -> None:
    server_ctx, client_ctx = tls

    async def ws_handler(ws: ServerConnection) -> None:
        for n in range(3):
            await ws.send(json.dumps({"n": n}))
        await ws.wait_closed()

    async def sse_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(stream(b"".join(sse.encode(json.dumps({"n": n})) for n in range(3))))
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    async with serve(ws_handler, "127.0.0.1", 0, ssl=server_ctx) as ws_server:
        https = await asyncio.start_server(sse_handler, "127.0.0.1", 0, ssl=server_ctx)
        async with https:
            ws_port = ws_server.sockets[0].getsockname()[1]
            https_port = https.sockets[0].getsockname()[1]
            secure = await make(f"wss://127.0.0.1:{ws_port}", ssl=client_ctx)
            events = await make(f"https://127.0.0.1:{https_port}/s", ssl=client_ctx)
            await eventually(lambda: secure.serial == 3 and events.serial == 3)
            untrusted = await make(f"wss://127.0.0.1:{ws_port}", connect=False)
            with pytest.raises(rtkit.ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.connect(timeout=0.5)
