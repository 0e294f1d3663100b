"""The SSE transport end to end: every public client feature over it, its stream re-opened
after a break with nothing lost or repeated, and the broker's side of it (dead links, the
re-open window, bad requests that disturb nobody)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import rtkit
from rtkit import ConnectionState as S
from rtkit.aio import http
from rtkit.aio.sselink import SseLink
from rtkit.core import sse
from tests.aio.clients import ClientFactory, client_factory
from tests.aio.test_reconnect import FAST
from tests.aio.test_renewal import token_maker
from tests.conftest import eventually, scaled, within

SSE = {**FAST, "transports": ("sse",)}


@pytest.fixture
def env() -> Iterator[tuple[rtkit.Server, rtkit.chaos.FaultProxy]]:
    with rtkit.serve(heartbeat_interval=0.4, connection_state_ttl=10.0) as srv, \
            rtkit.chaos.proxy(srv, seed=3) as px:
        yield srv, px


@pytest.fixture
async def make(env: tuple[rtkit.Server, rtkit.chaos.FaultProxy]) -> AsyncIterator[ClientFactory]:
    async with client_factory(*env, SSE) as factory:
        yield factory


async def test_every_client_feature_over_sse(env: Any, make: Any) -> None:
    srv, _ = env
    pub = await make(client_id="pub")
    sub = await make(client_id="sub")
    assert pub.transport == sub.transport == "sse"
    got: list[Any] = []
    ch = sub.channel("feat")
    await ch.subscribe(lambda m: got.append(m.data))
    result = await pub.channel("feat").publish("n", {"i": 0})
    assert result.serial == 1 and not result.duplicate
    for i in range(1, 200):
        await pub.channel("feat").publish("n", {"i": i})
    await eventually(lambda: len(got) == 200)
    assert [g["i"] for g in got] == list(range(200))
    history = await pub.channel("feat").history(limit=5)
    assert [m.data["i"] for m in history] == [195, 196, 197, 198, 199]
    replayed: list[int] = []
    late = await make(client_id="late")
    await late.channel("feat").subscribe(lambda m: replayed.append(m.serial), rewind=3)
    await eventually(lambda: replayed == [198, 199, 200])
    changes: list[Any] = []
    ch.presence.on_change(changes.append)
    await pub.channel("feat").presence.enter({"mood": "ok"})
    members = await sub.channel("feat").presence.get()
    assert [(m.client_id, m.data) for m in members] == [("pub", {"mood": "ok"})]
    await eventually(lambda: len(changes) == 1)
    assert await pub.ping() < scaled(1.0)
    assert pub.bytes_received > 0 and pub.bytes_sent > 0
    assert srv.stats()["sse_sessions"] >= 3
    await late.close()
    await eventually(lambda: srv.stats()["sse_sessions"] == 2, what="the session ended")


async def test_refusals_and_errors_are_the_same_over_sse(env: Any, make: Any) -> None:
    srv, _ = env
    token = srv.issue_token(client_id="ro", capabilities={"ro:*": ["subscribe"]})
    ro = await make(key=None, token=token)
    with pytest.raises(rtkit.CapabilityError):
        await ro.channel("ro:x").publish("n", 1)
    assert ro.state is S.CONNECTED
    with pytest.raises(rtkit.InvalidCredentials):
        await make(key="root:" + "x" * 40)


async def test_tokens_renew_in_band_over_sse(env: Any, make: Any) -> None:
    srv, _ = env
    calls: list[float] = []
    client = await make(key=None, auth_callback=token_maker(srv, "renewer", 1.5, calls))
    got: list[int] = []
    await client.channel("r").subscribe(lambda m: got.append(m.data))
    for i in range(30):
        await client.channel("r").publish("n", i)
        await asyncio.sleep(0.1)
    await eventually(lambda: len(got) == 30)
    assert len(calls) >= 3 and got == list(range(30))
    assert [c.current for c in client.state_history] == [S.CONNECTING, S.CONNECTED]
    first = client.last_resume
    srv.expire_tokens("renewer")  # expiry on the broker's side: renewed, then resumed
    await eventually(lambda: client.last_resume is not first, timeout=5)
    assert client.last_resume is not None and client.last_resume.resumed
    assert client.state is S.CONNECTED and len(client.state_history) == 5


async def test_a_broken_stream_is_reopened_and_continues_where_it_stopped(
        env: Any, make: Any) -> None:
    srv, px = env
    pub = await make(client_id="pub", url=srv.url, transports=("websocket",))
    sub = await make(client_id="sub")
    got: list[int] = []
    await sub.channel("s").subscribe(lambda m: got.append(m.data))
    for i in range(600):
        await pub.channel("s").publish("n", i)
        if i % 100 == 50:
            px.drop_all()  # the stream and the POST connection break
        if i % 20 == 0:
            await asyncio.sleep(0.01)
    await eventually(lambda: len(got) >= 600)
    assert got == list(range(600))
    # Each break was mended by the link, within the session: no reconnect, no resume.
    assert [c.current for c in sub.state_history] == [S.CONNECTING, S.CONNECTED]
    link = sub._links.link
    assert link is not None and link.reopens >= 5  # type: ignore[union-attr]
    assert srv.stats()["resumed"] == 0


async def test_a_long_outage_ends_in_an_ordinary_resume(env: Any, make: Any) -> None:
    srv, px = env
    pub = await make(client_id="pub", url=srv.url, transports=("websocket",))
    sub = await make(client_id="sub")
    got: list[int] = []
    await sub.channel("o").subscribe(lambda m: got.append(m.data))
    await pub.channel("o").publish("n", 0)
    px.refuse(2.0)
    px.drop_all()
    for i in range(1, 50):
        await pub.channel("o").publish("n", i)
    await within(sub.wait_for_state(S.DISCONNECTED, timeout=scaled(3)))
    await within(sub.wait_for_state(S.CONNECTED, timeout=scaled(6)))
    await eventually(lambda: len(got) == 50)
    assert got == list(range(50))
    assert sub.transport == "sse" and srv.stats()["resumed"] >= 1


async def test_a_recovery_key_resumes_over_sse(make: Any) -> None:
    pub = await make(client_id="pub")
    old = await make(client_id="kernel")
    got: list[int] = []
    await old.channel("k").subscribe(lambda m: got.append(m.data))
    await pub.channel("k").publish("n", 0)
    await eventually(lambda: got == [0])
    key = old.recovery_key
    await old._shutdown()  # the kernel dies: no goodbye
    for i in range(1, 5):
        await pub.channel("k").publish("n", i)
    new = await make(connect=False, client_id="kernel", recover=key)
    await new.channel("k").subscribe(lambda m: got.append(m.data))
    await within(new.connect())
    await eventually(lambda: got == [0, 1, 2, 3, 4])
    assert new.last_resume is not None and new.last_resume.resumed


# ------------------------------------------------------------------------ the broker's side


async def _open_stream(base: str) -> tuple[http.Response, sse.SSEParser, str]:
    response = await http.request("GET", base + "/v1/connect",
                                  headers={"Accept": "text/event-stream"})
    assert response.status == 200
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"].startswith("no-cache")
    parser = sse.SSEParser()
    async for chunk in response.chunks():
        for item in parser.feed(chunk):
            if isinstance(item, sse.Event) and item.event == "transport":
                return response, parser, json.loads(item.data)["stream"]
    raise AssertionError("no transport event")


async def _events(response: http.Response, parser: sse.SSEParser, n: int) -> list[sse.Event]:
    out: list[sse.Event] = []
    async for chunk in response.chunks():
        out += [i for i in parser.feed(chunk) if isinstance(i, sse.Event)]
        if len(out) >= n:
            break
    return out


async def test_the_wire_posts_seq_and_dead_links(env: Any) -> None:
    srv, _ = env
    base = srv.url.replace("ws://", "http://")
    response, parser, key = await _open_stream(base)
    posts = http.KeepAlive(base)
    auth = {"Authorization": f"Bearer {key}"}
    connect = json.dumps({"action": "connect", "ref": 1, "key": srv.root_key})
    status, _, _ = await posts.request("POST", "/v1/send", {**auth, "Rtkit-Seq": "1"},
                                       connect.encode())
    assert status == 204
    [connected] = await _events(response, parser, 1)
    assert json.loads(connected.data)["action"] == "connected" and connected.id.isdigit()
    pings = "\n".join(json.dumps({"action": "heartbeat", "ref": r}) for r in (7, 8)) + "\n"
    for _ in range(2):  # sent twice with the same seq: handled once
        status, _, _ = await posts.request("POST", "/v1/send", {**auth, "Rtkit-Seq": "2"},
                                           pings.encode())
        assert status == 204
    await posts.request("POST", "/v1/send", {**auth, "Rtkit-Seq": "3"},
                        b'{"action":"heartbeat","ref":9}\n')
    events = await _events(response, parser, 3)
    assert [json.loads(e.data)["ref"] for e in events] == [7, 8, 9]
    assert posts.connections == 1  # every POST on one kept-alive connection
    for headers, body, expected in (
            ({}, b"", 401), ({"Authorization": "Bearer s999.nope"}, b"", 404),
            ({**auth, "Rtkit-Seq": "x"}, b"", 400), (auth, b"x" * 300_000, 413)):
        status, _, _ = await posts.request("POST", "/v1/send", headers, body)
        assert status == expected, (headers, status)
    # Silent for three heartbeat intervals: the broker drops the session (resumable).
    await posts.close()
    before = srv.stats()["sse_sessions"]
    await eventually(lambda: srv.stats()["sse_sessions"] == before - 1, timeout=4,
                     what="the silent SSE session dropped")
    assert srv.stats()["resources"]["resumable_connections"]["used"] >= 1
    await response.close()


async def test_a_stream_not_reopened_in_time_ends_its_session(env: Any) -> None:
    srv, _ = env
    base = srv.url.replace("ws://", "http://")
    response, _, key = await _open_stream(base)
    response.abort()
    await eventually(lambda: srv.stats()["sse_sessions"] == 0, timeout=3)
    again = await http.request("GET", base + "/v1/connect",
                               headers={"Authorization": f"Bearer {key}"})
    assert again.status == 404 and (await again.read()).startswith(b"40400")
    await again.close()


async def test_bad_posts_disturb_nobody(env: Any, make: Any) -> None:
    srv, _ = env
    pub = await make(client_id="pub", url=srv.url, transports=("websocket",))
    sub = await make(client_id="sub")
    got: list[int] = []
    await sub.channel("calm").subscribe(lambda m: got.append(m.data))
    base = srv.url.replace("ws://", "http://")
    response, parser, key = await _open_stream(base)
    posts = http.KeepAlive(base)
    auth = {"Authorization": f"Bearer {key}"}
    connect = json.dumps({"action": "connect", "ref": 1, "key": srv.root_key}).encode()
    assert (await posts.request("POST", "/v1/send", auth, connect))[0] == 204
    garbage = [b"\xff\xfe", b"{", b"[1]", b'{"action":"nope"}', b'{"action":"publish"}',
               b'{"action":"attach","channel":"a b"}', b'{"action":"connect","key":"x:y"}']
    statuses = []
    for i in range(40):
        if i % 4 == 0:
            await pub.channel("calm").publish("n", i // 4)
        status, _, _ = await posts.request("POST", "/v1/send", auth, b"\n".join(garbage))
        statuses.append(status)
    # The broker ends the abusive session (too many protocol errors), then knows it no more.
    assert statuses[0] == 204 and statuses[-1] == 404
    events = await _events(response, parser, 1_000_000)
    errors = [json.loads(e.data) for e in events if e.event == "message"]
    assert errors[-1]["error"]["code"] == 42904 and errors[-1]["fatal"] is True
    assert events[-1].event == "close" and json.loads(events[-1].data)["code"] == 4429
    await eventually(lambda: got == list(range(10)))
    assert sub.state is S.CONNECTED and [c.current for c in sub.state_history] == [
        S.CONNECTING, S.CONNECTED]
    await posts.close()
    await response.close()


async def test_server_stop_closes_sse_streams_with_a_reason() -> None:
    srv = rtkit.serve(heartbeat_interval=0.4)
    client = rtkit.Client(srv.url, key=srv.root_key, **SSE)
    await within(client.connect())
    await asyncio.get_running_loop().run_in_executor(None, srv.stop)
    await within(client.wait_for_state(S.DISCONNECTED, timeout=scaled(3)))
    assert client.state_history[-1].error is not None
    assert client.state_history[-1].error.code == 50001
    await client.close()


async def test_unknown_paths_and_methods(env: Any) -> None:
    srv, _ = env
    base = srv.url.replace("ws://", "http://")
    posts = http.KeepAlive(base)
    status, headers, body = await posts.request("DELETE", "/v1/connect", {})
    assert status == 405 and headers["allow"] == "GET"
    status, _, body = await posts.request("GET", "/nowhere", {})
    assert status == 404 and json.loads(body)["error"]["code"] == 40400
    status, headers, body = await posts.request("GET", "/", {})
    assert status == 426 and headers["upgrade"] == "websocket"
    start = time.monotonic()
    status, _, body = await posts.request("GET", "/health", {})
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert time.monotonic() - start < scaled(1.0) and posts.connections == 1
    await posts.close()


async def test_the_events_of_one_read_go_up_together() -> None:
    """As a WebSocket link hands over the frames of a read, so does the SSE link (the
    client decodes them in one pass, consecutive deliveries as one batch); frames before an
    oversized event still go up, then the link ends."""
    batches: list[list[str | bytes]] = []
    lost: list[rtkit.RtkitError] = []
    link = SseLink("ws://127.0.0.1:9", batches.append, lost.append, max_size=None)
    link._opened = True
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    parser = sse.SSEParser(max_line=64, max_event=64)
    link._items(parser.feed(b"id: 1\ndata: a\n\n: keep-alive\n\nid: 2\ndata: b\n\n"), ready)
    assert batches == [["a", "b"]] and lost == []
    link._items(parser.feed(b"id: 3\ndata: c\n\nid: 4\ndata: " + b"x" * 100 + b"\n\n"
                            b"id: 5\ndata: d\n\n"), ready)
    await asyncio.sleep(0)
    assert batches == [["a", "b"], ["c"]]
    assert [e.code for e in lost] == [42902]
