"""Broker nodes sharing channels through a real Redis (started by the tests, see
``tests/conftest.py``): fan-out across nodes, shared history, presence and idempotent
publishes, a node killed and another restarted under a stream of messages, Redis losing its
data, the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rtkit
from rtkit.aio import http
from rtkit.core import sse
from tests.conftest import eventually, scaled, within

KEY = "root:" + "s" * 40
FAST = {"heartbeat_interval": 0.5, "connection_state_ttl": 20.0, "node_timeout": 1.5}


@pytest.fixture
def nodes(redis_url: str) -> Iterator[list[rtkit.Server]]:
    """Three nodes on one Redis (more can be appended), stopped afterwards."""
    servers = [rtkit.serve(backplane=redis_url, root_key=KEY, **FAST) for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


def client(url: str, others: list[str] = (), **kwargs: Any) -> rtkit.Client:  # type: ignore[assignment]
    return rtkit.Client(url, fallback_urls=others, key=KEY, heartbeat_grace=0.5,
                        backoff=rtkit.Backoff(base=0.1, cap=0.5), **kwargs)


async def test_nodes_share_channels_history_presence_and_publish_ids(
        nodes: list[rtkit.Server]) -> None:
    a, b, c = nodes
    pub = client(a.url, client_id="pub")
    sub = client(b.url, client_id="sub")
    watcher = client(c.url, client_id="watcher")
    clients = [pub, sub, watcher]
    try:
        for cl in clients:
            await within(cl.connect())
        got: list[tuple[int, Any]] = []
        await within(sub.channel("x").subscribe(lambda m: got.append((m.serial, m.data))))
        changes: list[tuple[str, str]] = []
        watcher.channel("x").presence.on_change(
            lambda ch: changes.append((ch.type, ch.member.client_id)))
        await within(watcher.channel("x").attach())
        results = await within(asyncio.gather(
            *(pub.channel("x").publish("n", i, id=f"m{i}") for i in range(200))))
        assert [r.serial for r in results] == list(range(1, 201))
        await eventually(lambda: len(got) == 200, what="200 messages through another node")
        assert got == [(i + 1, i) for i in range(200)]
        # history and rewind on a third node
        history = await within(watcher.channel("x").history(limit=5))
        assert [m.serial for m in history] == [196, 197, 198, 199, 200]
        # the same publish id from the same client, through another node: a duplicate
        again = client(c.url, client_id="pub")
        clients.append(again)
        await within(again.connect())
        dup = await within(again.channel("x").publish("n", 3, id="m3"))
        assert dup.serial == 4 and dup.duplicate
        # presence entered on one node is seen on the others
        await within(sub.channel("x").presence.enter({"seat": 1}))
        await eventually(lambda: ("enter", "sub") in changes, what="a remote enter")
        members = await within(watcher.channel("x").presence.get())
        assert [m.client_id for m in members] == ["sub"]
        await eventually(lambda: len(a.stats()["cluster"]["nodes"]) == 3, what="3 nodes")
        top = a.stats()
        stats = top["cluster"]
        assert stats["node"] == a.node_id
        assert {n["url"] for n in stats["nodes"]} == {a.url, b.url, c.url}
        assert top["nodes"] == stats["nodes"]  # also at the top
        assert all({"connections", "publish_rate", "receive_rate"} <= n.keys()
                   for n in stats["nodes"])
        assert stats["connected"] and stats["backplane_gaps"] == 0
    finally:
        for cl in clients:
            await cl.close()


async def test_a_killed_node_s_members_leave_after_the_node_timeout(
        nodes: list[rtkit.Server]) -> None:
    a, b, _ = nodes
    watcher = client(a.url, client_id="watcher")
    ana = client(b.url, client_id="ana", connection_state_ttl=1.0)
    try:
        await within(watcher.connect())
        await within(ana.connect())
        changes: list[tuple[str, str]] = []
        watcher.channel("room").presence.on_change(
            lambda ch: changes.append((ch.type, ch.member.client_id)))
        await within(watcher.channel("room").attach())
        await within(ana.channel("room").presence.enter())
        await eventually(lambda: changes == [("enter", "ana")], what="ana entering")
        started = time.monotonic()
        b.crash()  # no goodbye: only the node timeout tells the others
        await eventually(lambda: ("leave", "ana") in changes, timeout=10,
                         what="ana's leave after node b's timeout")
        waited = time.monotonic() - started
        assert 1.0 < waited < scaled(6.0)
        assert await within(watcher.channel("room").presence.get()) == []
    finally:
        await watcher.close()
        await ana.close()


async def test_a_stream_survives_a_killed_node_and_a_restarted_one(
        nodes: list[rtkit.Server], redis_url: str) -> None:
    """Nine subscribers spread over three nodes, a publisher on the node that is killed
    abruptly a third of the way through; later a second node is stopped and started again.
    Every subscriber ends with every message exactly once and in order; the clients of the
    dead node resume on the others within the continuity window (no continuity loss)."""
    total = 6000
    urls = [n.url for n in nodes]

    def others(i: int) -> list[str]:
        return [u for j, u in enumerate(urls) if j != i]

    subs = [client(urls[i % 3], others(i % 3), client_id=f"sub{i}") for i in range(9)]
    # (no client id: its publish ids are scoped by its connection, a scope that moves)
    pub = client(urls[1], others(1))
    got: list[list[int]] = [[] for _ in subs]
    losses: list[Any] = []
    try:
        for i, sub in enumerate(subs):
            await within(sub.connect())
            ch = sub.channel("stream")
            ch.on_continuity_lost(losses.append)
            await within(ch.subscribe(lambda m, i=i: got[i].append(m.data)))
        await within(pub.connect())
        channel = pub.channel("stream")
        killed = restarted = False
        moved_to_old = 0
        for start in range(0, total, 100):
            await within(asyncio.gather(*(channel.publish("n", i, id=f"m{i}")
                                          for i in range(start, start + 100))), 30)
            if not killed and start >= total // 3:
                killed = True
                nodes[1].crash()  # the publisher's node, and three subscribers'
            if not restarted and start >= 2 * total // 3:
                restarted = True
                port = nodes[2].port
                moved_to_old = nodes[2].stats()["moved_here"]
                nodes[2].stop()
                nodes[2] = rtkit.serve(port=port, backplane=redis_url, root_key=KEY, **FAST)
            await asyncio.sleep(0.01)
        await eventually(lambda: all(len(g) >= total for g in got), timeout=30,
                         what="every subscriber to catch up")
        for g in got:
            assert g == list(range(total))  # once each, in order
        assert losses == []
        moved = [s for s in subs[1::3]]  # the killed node's subscribers
        assert all(s.current_url != urls[1] for s in moved)
        assert pub.current_url != urls[1]
        # the publisher and the killed node's subscribers continued their connections
        # (each at least once: a client may move again when node 2 restarts)
        moved = moved_to_old + sum(n.stats()["moved_here"] for n in (nodes[0], nodes[2]))
        assert moved >= 4
        assert all(s.state is rtkit.ConnectionState.CONNECTED for s in subs)
        # nothing was published twice: the channel holds exactly `total` messages
        last = await within(subs[0].channel("stream").history(limit=1))
        assert last[0].serial == total
    finally:
        for cl in [*subs, pub]:
            await cl.close()


async def test_redis_losing_its_data_is_a_continuity_loss_not_silence(
        redis_server: rtkit.cluster.RedisServer, redis_url: str) -> None:
    node = rtkit.serve(backplane=redis_url, root_key=KEY, **FAST)
    sub = client(node.url, client_id="sub")
    pub = client(node.url, client_id="pub")
    try:
        await within(sub.connect())
        await within(pub.connect())
        got: list[int] = []
        losses: list[rtkit.ContinuityLoss] = []
        ch = sub.channel("x")
        ch.on_continuity_lost(losses.append)
        await within(ch.subscribe(lambda m: got.append(m.data)))
        for i in range(10):
            await within(pub.channel("x").publish("n", i))
        await eventually(lambda: len(got) == 10)
        redis_server.restart()  # empty: every channel's history is gone
        # the node reconnects to Redis; the next publishes start a new epoch
        deadline = time.monotonic() + scaled(15)
        i = 10
        while not losses and time.monotonic() < deadline:
            try:
                await within(pub.channel("x").publish("n", i))
                i += 1
            except rtkit.ServerError:
                pass  # the backplane is not back yet: refused, the client may retry
            await asyncio.sleep(0.05)
        assert losses, "the subscriber was not told that history was lost"
        assert losses[0].epoch != "" and got[:10] == list(range(10))
        await within(pub.channel("x").publish("n", "after"))
        await eventually(lambda: got[-1] == "after", what="delivery after the new epoch")
    finally:
        await sub.close()
        await pub.close()
        node.stop()


def test_rtkit_serve_joins_a_cluster_from_the_command_line(redis_url: str) -> None:
    env = {**os.environ, "RTKIT_KEY": KEY}
    procs = []
    try:
        urls = []
        for _ in range(2):
            proc = subprocess.Popen(
                [sys.executable, "-m", "rtkit.cli", "serve", "--port", "0", "--backplane",
                 redis_url, "--node-timeout", "2"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            procs.append(proc)
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(3)]
            url = next(line.split()[-1] for line in lines if "ws://" in line)
            assert any(line.startswith("node ") and redis_url in line for line in lines)
            urls.append(url)

        async def roundtrip() -> list[int]:
            sub = rtkit.Client(urls[0], key=KEY)
            pub = rtkit.Client(urls[1], key=KEY)
            await sub.connect()
            await pub.connect()
            got: list[int] = []
            await sub.channel("cli").subscribe(lambda m: got.append(m.data))
            for i in range(5):
                await pub.channel("cli").publish("n", i)
            await eventually(lambda: len(got) == 5)
            await sub.close()
            await pub.close()
            return got

        assert asyncio.run(roundtrip()) == [0, 1, 2, 3, 4]
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=10)
    bad = subprocess.run([sys.executable, "-m", "rtkit.cli", "serve", "--port", "0",
                          "--backplane", "redis://127.0.0.1:1/0"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert bad.returncode == 1 and "cannot use the backplane" in bad.stderr


async def test_keys_made_and_revoked_on_one_node_hold_on_every_node(
        nodes: list[rtkit.Server], redis_url: str) -> None:
    a, b, c = nodes
    key = a.create_key({"news:*": ["subscribe", "publish"]})
    key_id = key.partition(":")[0]
    user = rtkit.Client(b.url, key=key, client_id="user")  # made on a, used on b

    async def connected() -> bool:
        try:
            await within(user.connect())
        except rtkit.AuthError:
            return False
        return True

    deadline = time.monotonic() + scaled(5)
    while not await connected():  # the key reaches b through the backplane
        assert time.monotonic() < deadline, "node b never learnt the key made on node a"
        user = rtkit.Client(b.url, key=key, client_id="user")
        await asyncio.sleep(0.05)
    try:
        await within(user.channel("news:today").publish("n", 1))
        with pytest.raises(rtkit.CapabilityError):
            await within(user.channel("other").publish("n", 1))
        errors: list[rtkit.RtkitError] = []
        user.on_error(errors.append)
        assert c.revoke_key(key_id) == 0  # revoked on c: the connection on b ends too
        await eventually(lambda: user.state is rtkit.ConnectionState.FAILED, timeout=5,
                         what="the revoked key's connection to end")
        assert any(e.code == 40108 for e in errors)
        late = rtkit.serve(backplane=redis_url, root_key=KEY, **FAST)  # started afterwards
        nodes.append(late)
        refused = rtkit.Client(late.url, key=key)
        with pytest.raises(rtkit.AuthError) as info:
            await within(refused.connect())
        assert info.value.code == 40108
        await refused.close()
    finally:
        await user.close()


async def test_rest_and_sse_clients_on_clustered_nodes(nodes: list[rtkit.Server]) -> None:
    """REST publishes, history and presence, SSE-transport clients and a channel's event
    stream, each on another node of the cluster."""
    a, b, c = nodes
    auth = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}
    rest = {n: http.KeepAlive(n.url.replace("ws://", "http://")) for n in nodes}

    async def call(node: rtkit.Server, method: str, path: str, body: Any = None
                   ) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        status, _, answer = await within(rest[node].request(method, path, auth, data))
        return status, json.loads(answer)

    sub = client(b.url, [a.url, c.url], client_id="sse-sub", transports=("sse",))
    member = client(c.url, client_id="sse-member", transports=("sse",))
    events = await within(http.request("GET", c.url.replace("ws://", "http://")
                                       + "/channels/r/events", headers=auth))
    try:
        got: list[Any] = []
        await within(sub.connect())
        await within(member.connect())
        assert sub.transport == member.transport == "sse"
        await within(sub.channel("r").subscribe(lambda m: got.append(m.data)))
        await within(member.channel("r").presence.enter({"seat": 2}))
        for i in range(5):
            status, ack = await call(a, "POST", "/channels/r/messages",
                                     {"name": "n", "data": i, "id": f"r{i}"})
            assert status == 201 and ack["serial"] == i + 1
        status, again = await call(b, "POST", "/channels/r/messages",  # another node
                                   {"name": "n", "data": 1, "id": "r1"})
        assert status == 200 and again["duplicate"] and again["serial"] == 2
        await eventually(lambda: got == list(range(5)), what="REST publishes over SSE")
        status, members = await call(a, "GET", "/channels/r/presence")
        assert [m["client_id"] for m in members["members"]] == ["sse-member"]
        # history on a node that never had these messages: read from Redis
        status, page = await call(a, "GET", "/channels/r/messages?limit=3")
        assert status == 200 and [m["data"] for m in page["messages"]] == [2, 3, 4]
        assert page["more"]  # older ones, in Redis
        status, page = await call(a, "GET", "/channels/r/messages?before=3")
        assert [m["data"] for m in page["messages"]] == [0, 1] and not page["more"]
        status, page = await call(b, "GET", "/channels/r/messages?after=1&limit=2")
        assert [m["serial"] for m in page["messages"]] == [2, 3] and page["more"]
        parser, seen = sse.SSEParser(), []
        async with asyncio.timeout(scaled(5)):
            async for chunk in events.chunks():
                seen += [e for e in parser.feed(chunk) if isinstance(e, sse.Event)]
                if len(seen) >= 6:
                    break
        assert [json.loads(e.data)["data"] for e in seen[1:6]] == list(range(5))
        b.crash()  # the SSE subscriber moves to another node and resumes there
        await call(a, "POST", "/channels/r/messages", {"name": "n", "data": 5})
        await eventually(lambda: got == list(range(6)), timeout=10,
                         what="the SSE client resuming on another node")
        assert sub.current_url != b.url and sub.transport == "sse"
    finally:
        await events.close()
        for cl in (sub, member):
            await cl.close()
        for conn in rest.values():
            await conn.close()
