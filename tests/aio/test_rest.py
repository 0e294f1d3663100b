"""The REST interface against a live broker, beside WebSocket clients on the same port."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

import rtkit
from rtkit.aio import http
from rtkit.core import sse
from tests.conftest import eventually, within


@pytest.fixture
def srv() -> Iterator[rtkit.Server]:
    with rtkit.serve(heartbeat_interval=0.5, publish_rate=200, publish_burst=50) as server:
        yield server


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Api:
    """A REST caller on one kept-alive connection."""

    def __init__(self, srv: rtkit.Server, headers: dict[str, str]) -> None:
        self.base = srv.url.replace("ws://", "http://")
        self.conn = http.KeepAlive(self.base)
        self.headers = headers

    async def call(self, method: str, path: str, body: Any = None,
                   **headers: str) -> tuple[int, Any]:
        data = b"" if body is None else (body if isinstance(body, bytes)
                                         else json.dumps(body).encode())
        status, _, answer = await self.conn.request(method, path, {**self.headers, **headers},
                                                    data)
        return status, json.loads(answer) if answer else None


async def test_publish_history_presence_beside_websocket_clients(srv: rtkit.Server) -> None:
    api = Api(srv, basic(srv.root_key))
    async with rtkit.Client(srv.url, key=srv.root_key, client_id="ws") as ws:
        got: list[Any] = []
        await ws.channel("room").subscribe(lambda m: got.append((m.serial, m.name, m.data)))
        await ws.channel("room").presence.enter({"here": True})
        status, ack = await api.call("POST", "/channels/room/messages",
                                     {"name": "hello", "data": {"x": 1}, "id": "r-1"})
        assert status == 201 and ack["serial"] == 1 and ack["id"] == "r-1"
        status, again = await api.call("POST", "/channels/room/messages",
                                       {"name": "hello", "data": {"x": 1}, "id": "r-1"})
        assert status == 200 and again["duplicate"] is True and again["serial"] == 1
        await ws.channel("room").publish("from-ws", 2)
        await eventually(lambda: len(got) == 2)
        assert got == [(1, "hello", {"x": 1}), (2, "from-ws", 2)]
        status, page = await api.call("GET", "/channels/room/messages?limit=10")
        assert status == 200 and [m["name"] for m in page["messages"]] == ["hello", "from-ws"]
        status, members = await api.call("GET", "/channels/room/presence")
        assert [m["client_id"] for m in members["members"]] == ["ws"]
        status, health = await api.call("GET", "/health")
        assert health["status"] == "ok" and health["connections"] >= 1
    assert api.conn.connections == 1  # one kept-alive connection for every request
    await api.conn.close()


async def test_errors_are_json_with_a_fitting_status(srv: rtkit.Server) -> None:
    root = Api(srv, basic(srv.root_key))
    reader = Api(srv, bearer(srv.issue_token("ro", {"room": ["subscribe"]})))
    anonymous = Api(srv, {})
    forged = Api(srv, bearer(srv.issue_token("x")[:-4] + "AAAA"))
    cases = [
        (anonymous, "GET", "/channels/room/messages", None, 401, 40106),
        (forged, "GET", "/channels/room/messages", None, 401, 40103),
        (Api(srv, basic("root:" + "w" * 40)), "GET", "/channels/room/presence", None, 401,
         40101),
        (reader, "POST", "/channels/room/messages", {"name": "n"}, 403, 40300),
        (reader, "GET", "/channels/room/messages", None, 403, 40300),
        (root, "GET", "/channels/room/nothing", None, 404, 40400),
        (root, "POST", "/channels/room/messages", b"{", 400, 40001),
        (root, "POST", "/channels/room/messages", {"data": 1}, 400, 40003),
        (root, "POST", "/channels/a%20b/messages", {"name": "n"}, 400, 40007),
        (root, "POST", "/channels/room/messages", {"name": "n", "data": "x" * 70_000}, 413,
         42901),
        (root, "GET", "/channels/room/messages?limit=abc", None, 400, 40003),
    ]
    for api, method, path, body, status, code in cases:
        got_status, answer = await api.call(method, path, body)
        assert (got_status, answer["error"]["code"]) == (status, code), (method, path)
        assert isinstance(answer["error"]["message"], str)
    status, answer = await root.call("POST", "/channels/room/messages", b"x" * 300_000)
    assert status == 413
    # Over the caller's rate (every request counts, as every frame of a connection does).
    statuses = [(await root.call("GET", "/channels/room/presence"))[0] for _ in range(80)]
    assert 429 in statuses and statuses[0] == 200
    assert (await reader.call("GET", "/channels/room/presence"))[0] == 200  # its own rate


async def test_channel_event_stream_resumes_with_last_event_id(srv: rtkit.Server) -> None:
    api = Api(srv, basic(srv.root_key))
    base = api.base
    for i in range(5):
        await api.call("POST", "/channels/feed/messages", {"name": "n", "data": i})

    async def read(headers: dict[str, str], n: int) -> list[sse.Event]:
        response = await http.request("GET", base + "/channels/feed/events",
                                      headers={**basic(srv.root_key), **headers})
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        parser, out = sse.SSEParser(), []
        async with asyncio.timeout(5):
            async for chunk in response.chunks():
                out += [e for e in parser.feed(chunk) if isinstance(e, sse.Event)]
                if len(out) >= n:
                    break
        await response.close()
        return out

    live = asyncio.create_task(read({}, 3))
    await asyncio.sleep(0.2)
    await api.call("POST", "/channels/feed/messages", {"name": "n", "data": 5})
    await api.call("POST", "/channels/feed/messages", {"name": "n", "data": 6})
    events = await within(live)
    attached = json.loads(events[0].data)
    assert events[0].event == "attached" and attached["serial"] == 5
    epoch = attached["epoch"]
    assert [(e.id, json.loads(e.data)["data"]) for e in events[1:]] == [
        (f"{epoch}:6", 5), (f"{epoch}:7", 6)]
    resumed = await read({"Last-Event-ID": f"{epoch}:3"}, 5)
    assert [json.loads(e.data)["serial"] for e in resumed[1:]] == [4, 5, 6, 7]
    assert "lost" not in json.loads(resumed[0].data)
    other = await read({"Last-Event-ID": "0123abcd:3"}, 1)
    assert json.loads(other[0].data)["lost"] is True  # another epoch: said so
    bare = await read({"Last-Event-ID": "6"}, 2)
    assert [json.loads(e.data)["serial"] for e in bare[1:]] == [7]
    await eventually(lambda: srv.stats()["event_streams"] == 0)


async def test_a_channel_stream_ends_with_its_token(srv: rtkit.Server) -> None:
    token = srv.issue_token("watcher", {"feed": ["subscribe"]})
    response = await http.request("GET", srv.url.replace("ws://", "http://")
                                  + "/channels/feed/events", headers=bearer(token))
    parser = sse.SSEParser()
    await eventually(lambda: srv.stats()["event_streams"] == 1)
    srv.expire_tokens("watcher")
    events: list[sse.Event] = []
    async with asyncio.timeout(5):
        async for chunk in response.chunks():
            events += [e for e in parser.feed(chunk) if isinstance(e, sse.Event)]
    assert events[-1].event == "error" and json.loads(events[-1].data)["error"]["code"] == 40140
    await response.close()
    await eventually(lambda: srv.stats()["event_streams"] == 0)


async def test_one_flush_to_every_kind_of_subscriber(srv: rtkit.Server) -> None:
    """The same messages reach a WebSocket client, an SSE client and a channel's event
    stream subscribed to one channel: each output is encoded once per kind of target."""
    response = await http.request("GET", srv.url.replace("ws://", "http://")
                                  + "/channels/mix/events", headers=basic(srv.root_key))
    parser, events = sse.SSEParser(), []
    async with rtkit.Client(srv.url, key=srv.root_key) as ws, \
            rtkit.Client(srv.url, key=srv.root_key, transports=("sse",)) as sub:
        got: dict[str, list[int]] = {"ws": [], "sse": []}
        await ws.channel("mix").subscribe(lambda m: got["ws"].append(m.data))
        await sub.channel("mix").subscribe(lambda m: got["sse"].append(m.data))
        await eventually(lambda: srv.stats()["event_streams"] == 1)
        for i in range(50):
            await ws.channel("mix").publish("n", i)
        await eventually(lambda: got["ws"] == got["sse"] == list(range(50)))
        async with asyncio.timeout(5):
            async for chunk in response.chunks():
                events += [e for e in parser.feed(chunk) if isinstance(e, sse.Event)]
                if len(events) >= 51:
                    break
    assert [json.loads(e.data)["data"] for e in events[1:]] == list(range(50))
    await response.close()
