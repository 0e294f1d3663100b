"""The REST interface on a node of a cluster, without Redis: publishes acknowledged after
the backplane's answer, history and presence once the node follows the channel (and has
read what its copy lacked), failures of the backplane as transient errors."""

from __future__ import annotations

import base64
import json
from typing import Any

from rtkit.core import backplane as bp
from rtkit.core.broker import Send
from rtkit.core.rest import Reply, RestApi, publish_reply
from tests.core.cluster_harness import MemoryBackplane, Node, publish
from tests.core.harness import ROOT

AUTH = {"authorization": "Basic " + base64.b64encode(ROOT.value.encode()).decode()}


def answers_to(node: Node, caller: Any) -> list[dict[str, Any]]:
    out = node.h.core.outbox.items
    mine = [item for item in out if type(item) is Send and item.targets == (caller,)]
    node.h.core.outbox.items = [item for item in out if item not in mine]
    return [json.loads(item.text) for item in mine]


def body(reply: Reply) -> Any:
    return json.loads(reply.body)


def test_rest_publish_history_and_presence_wait_for_the_backplane() -> None:
    b = MemoryBackplane()
    a, c = Node(b), Node(b)
    api_a, api_c = RestApi(a.h.core), RestApi(c.h.core)
    caller = api_a.caller(AUTH, a.h.now)
    assert api_a.publish(caller, "x", b'{"name":"n","data":0,"id":"p0"}', a.h.now) is None
    b.settle()
    [ack] = answers_to(a, caller)
    reply = publish_reply(ack)
    assert reply.status == 201 and body(reply)["serial"] == 1
    again = api_c.caller(AUTH, c.h.now)  # the same caller (its key) on another node
    assert api_c.publish(again, "x", b'{"name":"n","data":0,"id":"p0"}', c.h.now) is None
    b.settle()
    reply = publish_reply(answers_to(c, again)[0])
    assert reply.status == 200 and body(reply)["duplicate"] and body(reply)["serial"] == 1
    pub = a.connect("pub")
    publish(a, pub, "x", 9, start=1)
    ana = a.connect("ana")
    a.send(ana, {"action": "presence", "ref": 1, "channel": "x", "op": "enter"})
    b.settle()
    # node c never followed x: the answers come once it does (and has read the history)
    replies: list[Reply] = []
    reader = api_c.caller(AUTH, c.h.now)
    assert api_c.history(reader, "x", {"limit": "4"}, c.h.now, replies.append) is None
    assert api_c.presence(reader, "x", replies.append) is None
    assert replies == []
    b.settle()
    members, page = (body(r) for r in replies)  # (the page waited for a read)
    assert [m["serial"] for m in page["messages"]] == [7, 8, 9, 10] and page["more"]
    assert [m["client_id"] for m in members["members"]] == ["ana"]
    assert c.h.core.channels["x"].attaching == 0  # nothing waits any more


def test_a_failing_backplane_is_a_transient_error() -> None:
    b = MemoryBackplane()
    a = Node(b)
    api = RestApi(a.h.core)
    caller = api.caller(AUTH, a.h.now)
    assert api.publish(caller, "x", b'{"name":"n","data":0}', a.h.now) is None
    [effect] = a.view.take()
    assert isinstance(effect, bp.Publish)
    a.ops.publish_failed(effect.token, "connection refused")
    reply = publish_reply(answers_to(a, caller)[0])
    assert reply.status == 503 and body(reply)["error"]["code"] == 50000
    replies: list[Reply] = []
    assert api.history(caller, "y", {}, a.h.now, replies.append) is None
    [follow] = a.view.take()
    assert isinstance(follow, bp.Follow)
    a.ops.follow_failed("y", follow.gen, "connection refused")
    [reply] = replies
    assert reply.status == 503 and body(reply)["error"]["code"] == 50000
    assert "connection refused" in body(reply)["error"]["message"]


def test_a_request_waiting_for_older_messages_is_answered_after_a_new_epoch() -> None:
    b = MemoryBackplane()
    a, c = Node(b), Node(b)
    pub = a.connect("pub")
    publish(a, pub, "x", 5)
    b.settle()
    api = RestApi(c.h.core)
    replies: list[Reply] = []
    reader = api.caller(AUTH, c.h.now)
    assert api.history(reader, "x", {"limit": "3"}, c.h.now, replies.append) is None
    c.step()  # followed at serial 5; c's copy is empty: older ones are read...
    held = c.view.take()  # ...but that read is slow
    assert [type(e) for e in held] == [bp.Read]
    b.lose_everything()  # and meanwhile Redis lost the channel
    publish(a, pub, "x", 1, start=5)
    b.settle()
    [reply] = replies  # answered in the new epoch, not left waiting for the old read
    page = body(reply)
    assert [m["serial"] for m in page["messages"]] == [1] and page["epoch"] != ""
    for effect in held:  # the old read's answer comes at last: ignored
        b.perform(c, effect)
    b.settle()
    assert len(replies) == 1 and c.h.core.channels["x"].attaching == 0
