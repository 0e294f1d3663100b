"""A node's view of channels shared through a backplane, without Redis: serial checks, gaps
and their repair, duplicates, epochs, positions, loads into the node's copy, presence
across nodes and the expiry of dead nodes (``rtkit.core.backplane``,
``rtkit.core.cluster_ops``)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from rtkit.core import backplane as bp
from tests.core.cluster_harness import MemoryBackplane, Node, messages, publish
from tests.core.harness import ROOT


def frag(serial: int) -> str:
    return f'{{"serial":{serial}}}'


def live_view(limit: int = 500) -> bp.NodeView:
    view = bp.NodeView("n1", read_limit=limit)
    view.follow("x")
    [follow] = view.take()
    assert follow == bp.Follow("x", follow.gen)
    assert view.followed("x", follow.gen, "E1", 10) == []
    return view


def delivered(actions: list[bp.Action]) -> list[int]:
    return [a.serial for a in actions if isinstance(a, bp.Deliver)]


# ---------------------------------------------------------------- the view alone


def test_next_serial_is_delivered_and_repeats_are_dropped() -> None:
    view = live_view()
    assert delivered(view.message("x", "E1", 11, 0, frag(11))) == [11]
    assert delivered(view.message("x", "E1", 12, 0, frag(12))) == [12]
    assert view.message("x", "E1", 12, 0, frag(12)) == []
    assert view.message("x", "E1", 3, 0, frag(3)) == []
    assert view.stats["backplane_duplicates"] == 2
    assert view.take() == []


def test_a_gap_holds_later_messages_until_the_repair_brings_the_missing_ones() -> None:
    view = live_view()
    assert view.message("x", "E1", 14, 0, frag(14)) == []
    [read] = view.take()
    assert read == bp.Read(read.token, "x", 11, 13, 500, False)
    assert view.message("x", "E1", 15, 0, frag(15)) == []  # held: the repair comes first
    assert view.message("x", "E1", 12, 0, frag(12)) == []
    out = view.repaired("x", read.token, "E1", 15, [(11, 0, frag(11)), (12, 0, frag(12)),
                                                     (13, 0, frag(13))])
    assert delivered(out) == [11, 12, 13, 14, 15]
    assert view.feeds["x"].serial == 15 and not view.feeds["x"].ahead
    assert view.stats["backplane_gaps"] == 1 and view.stats["backplane_repaired"] == 3


def test_what_history_no_longer_holds_is_skipped_in_order() -> None:
    view = live_view()
    view.message("x", "E1", 16, 0, frag(16))
    [read] = view.take()
    out = view.repaired("x", read.token, "E1", 16, [(13, 0, frag(13)), (15, 0, frag(15))])
    assert out == [bp.Skip(12), bp.Deliver(13, 0, frag(13)), bp.Skip(14),
                   bp.Deliver(15, 0, frag(15)), bp.Deliver(16, 0, frag(16))]
    assert view.stats["backplane_skipped"] == 3


def test_a_long_repair_is_read_in_parts() -> None:
    view = live_view(limit=2)
    view.message("x", "E1", 16, 0, frag(16))
    [read] = view.take()
    assert (read.first, read.last, read.limit) == (11, 15, 2)
    out = view.repaired("x", read.token, "E1", 16, [(11, 0, frag(11)), (12, 0, frag(12))])
    assert delivered(out) == [11, 12]
    [read] = view.take()
    assert (read.first, read.last) == (13, 15)
    out = view.repaired("x", read.token, "E1", 16, [(13, 0, frag(13)), (14, 0, frag(14))])
    [read] = view.take()
    out += view.repaired("x", read.token, "E1", 16, [(15, 0, frag(15))])
    assert delivered(out) == [13, 14, 15, 16]


def test_a_stale_or_failed_repair_changes_nothing_and_the_next_check_repairs() -> None:
    view = live_view()
    view.message("x", "E1", 13, 0, frag(13))
    [read] = view.take()
    assert view.repaired("x", read.token + 100, "E1", 13, []) == []
    view.repair_failed("x", read.token)
    assert view.feeds["x"].ahead  # kept for the next repair
    view.check()
    [check] = view.take()
    assert check == bp.Check(("x",))
    assert view.position("x", "E1", 13) == []
    [read] = view.take()
    assert (read.first, read.last) == (11, 13)
    out = view.repaired("x", read.token, "E1", 13, [(11, 0, frag(11)), (12, 0, frag(12)),
                                                     (13, 0, frag(13))])
    assert delivered(out) == [11, 12, 13]


def test_another_epoch_means_the_history_was_lost_and_old_epochs_stay_retired() -> None:
    view = live_view()
    out = view.message("x", "E2", 1, 0, frag(1))
    assert out == [bp.NewEpoch("E2", 0), bp.Deliver(1, 0, frag(1))]
    assert view.message("x", "E1", 11, 0, frag(11)) == []  # late, from the old epoch
    assert delivered(view.message("x", "E2", 2, 0, frag(2))) == [2]
    assert view.position("x", "E1", 50) == []
    assert view.stats["backplane_epochs"] == 1


def test_positions_catch_lost_tails_lost_writes_and_new_epochs() -> None:
    view = live_view()
    assert view.position("x", "E1", 10) == [] and view.take() == []
    view.position("x", "E1", 12)  # the last messages of a burst never came
    [read] = view.take()
    assert (read.first, read.last) == (11, 12)
    view.repaired("x", read.token, "E1", 12, [(11, 0, frag(11)), (12, 0, frag(12))])
    view.position("x", "E1", 5)  # went back: an asynchronous replica was promoted
    assert view.take() == [bp.Rebase("x", "E1", 12)]
    assert view.position("x", "E9", 3) == [bp.NewEpoch("E9", 3)]


def test_messages_before_the_position_wait_for_it() -> None:
    view = bp.NodeView("n1")
    view.follow("x")
    [follow] = view.take()
    for serial in (9, 10, 11, 12):
        assert view.message("x", "E1", serial, 0, frag(serial)) == []
    assert view.followed("x", follow.gen + 1, "E1", 10) is None  # stale
    out = view.followed("x", follow.gen, "E1", 10)
    assert delivered(out or []) == [11, 12]
    assert view.followed("x", follow.gen, "E1", 14) == []  # again: a position check
    assert isinstance(view.take()[0], bp.Read)


def test_unfollowed_channels_ignore_late_answers() -> None:
    view = live_view()
    view.unfollow("x")
    assert view.take() == [bp.Unfollow("x")]
    assert view.message("x", "E1", 11, 0, frag(11)) == []
    assert view.position("x", "E1", 20) == [] and view.take() == []


def test_node_table_decides_who_is_gone_on_the_backplane_clock() -> None:
    table = bp.NodeTable("me", timeout=10)
    assert table.update({"me": {"seen": 0}, "a": {"seen": 95_000},
                         "b": {"seen": 99_000}}, 100_000) == []
    assert set(table.alive) == {"me", "a", "b"}
    assert table.update({"me": {"seen": 0}, "a": {"seen": 95_000},
                         "b": {"seen": 109_500}}, 110_000) == ["a"]
    assert table.is_gone("a") and not table.is_gone("me")
    assert table.update({"me": {"seen": 0}, "b": {"seen": 109_500}}, 111_000) == []
    # a record that had already expired when first seen is gone too; so is one removed
    assert table.update({"me": {"seen": 0}, "c": {"seen": 1}}, 111_000) == ["b", "c"]


# ---------------------------------------------------------------- nodes on one backplane


def cluster(n: int = 3, **config: Any) -> tuple[MemoryBackplane, list[Node]]:
    b = MemoryBackplane()
    return b, [Node(b, **config) for _ in range(n)]


def attach(node: Node, s: Any, channel: str = "x", **fields: Any) -> dict[str, Any]:
    node.send(s, {"action": "attach", "ref": "a", "channel": channel, **fields})
    node.backplane.settle()
    frames = node.take(s)
    [attached] = [f for f in frames if f["action"] in ("attached", "error")]
    attached["_messages"] = messages(frames)
    return attached


def test_every_node_delivers_every_message_once_in_order() -> None:
    b, nodes = cluster(3)
    subs = [(node, node.connect(f"s{i}")) for i, node in enumerate(nodes)]
    for node, s in subs:
        assert attach(node, s)["serial"] == 0
    pub = nodes[0].connect("pub")
    publish(nodes[0], pub, "x", 20)
    b.settle()
    acks = [f for f in nodes[0].take(pub) if f["action"] == "ack"]
    assert [a["serial"] for a in acks] == list(range(1, 21))
    assert [a["ref"] for a in acks] == list(range(20))
    for node, s in subs:
        frames = node.take(s)
        assert messages(frames) == list(range(1, 21))
        first = frames[0]["messages"][0]
        assert first["id"] == "m0" and first["data"] == {"i": 0}
        assert first["client_id"] == "pub" and first["timestamp"] > 0


def test_a_retried_publish_is_a_duplicate_on_any_node() -> None:
    b, (a, c, _) = cluster(3)
    s1 = a.connect("pub")
    publish(a, s1, "x", 3)
    b.settle()
    acks = [f for f in a.take(s1) if f["action"] == "ack"]
    s2 = c.connect("pub")  # the same client, moved to another node, sends again
    publish(c, s2, "x", 4)
    b.settle()
    again = [f for f in c.take(s2) if f["action"] == "ack"]
    assert [f["serial"] for f in again] == [1, 2, 3, 4]
    assert [f.get("duplicate", False) for f in again] == [True, True, True, False]
    assert [f["timestamp"] for f in again[:3]] == [f["timestamp"] for f in acks]
    other = c.connect("someone-else")  # ids are scoped per publisher
    publish(c, other, "x", 1)
    b.settle()
    assert [f["serial"] for f in c.take(other) if f["action"] == "ack"] == [5]


def test_a_connection_moving_to_other_nodes_keeps_the_scope_of_its_publish_ids() -> None:
    b, (a, c, d) = cluster(3)
    key = {"key": ROOT.value}  # no client id: publish ids are scoped by the connection

    def connect(node: Node, **fields: Any) -> tuple[Any, dict[str, Any]]:
        s = node.h.open()
        node.send(s, {"action": "connect", "ref": 0, **key, **fields})
        [hello] = node.take(s)
        return s, hello

    pub, hello = connect(a)
    publish(a, pub, "x", 3)
    for effect in a.view.take():  # stored in the backplane, then node a dies unanswered
        b.perform(a, effect)
    a.later.clear()
    b.nodes.remove(a)
    moved, again = connect(c, resume=hello["connection_key"])
    assert not again.get("resumed") and again["connection_id"] != hello["connection_id"]
    publish(c, moved, "x", 4)  # sent again, with the same ids
    b.settle()
    acks = [f for f in c.take(moved) if f["action"] == "ack"]
    assert [(f["serial"], f.get("duplicate", False)) for f in acks] == [
        (1, True), (2, True), (3, True), (4, False)]
    assert c.h.core.stats["moved_here"] == 1
    # and on to a third node, with the key node c gave it: still the same scope
    c.h.core.session_lost(moved, c.h.now)
    third, _ = connect(d, resume=again["connection_key"])
    publish(d, third, "x", 5)
    b.settle()
    acks = [f for f in d.take(third) if f["action"] == "ack"]
    assert [f["serial"] for f in acks if not f.get("duplicate")] == [5]
    # a key the cluster did not sign, or one presented by another client, scopes nothing
    mac = hello["connection_key"][-4:]
    forged = hello["connection_key"][:-4] + ("AAAA" if mac != "AAAA" else "BBBB")
    for creds in ({"resume": forged}, {"resume": hello["connection_key"], "client_id": "eve"}):
        other, _ = connect(d, **creds)
        publish(d, other, "x", 1)
        b.settle()
        assert not [f for f in d.take(other) if f.get("duplicate")]
    assert d.h.core.stats["moved_here"] == 1


def test_a_client_resumes_on_another_node_from_its_last_serial() -> None:
    b, (a, c, _) = cluster(3)
    sub = a.connect("sub")
    epoch = attach(a, sub)["epoch"]
    pub = a.connect("pub")
    publish(a, pub, "x", 10)
    b.settle()
    assert messages(a.take(sub)) == list(range(1, 11))
    moved = c.connect("sub")  # node a died; c has never seen channel x
    reply = attach(c, moved, from_serial=4, epoch=epoch)
    assert reply["serial"] == 10 and not reply.get("lost")
    assert reply["_messages"] == list(range(5, 11))
    publish(a, pub, "x", 2, start=10)
    b.settle()
    assert messages(c.take(moved)) == [11, 12]
    reads = b.reads
    other = c.connect("sub2")  # the node's copy now reaches back: no read needed
    assert attach(c, other, from_serial=6, epoch=epoch)["_messages"] == list(range(7, 13))
    assert b.reads == reads


def test_a_long_resume_is_loaded_in_parts() -> None:
    b, (a, c) = cluster(2, read_limit=7)
    pub = a.connect("pub")
    publish(a, pub, "x", 40)
    b.settle()
    sub = c.connect("sub")
    epoch = b.channels["x"].epoch
    reply = attach(c, sub, from_serial=2, epoch=epoch)
    assert reply["_messages"] == list(range(3, 41)) and not reply.get("lost")
    assert b.reads >= 6


def test_messages_the_backplane_no_longer_holds_are_reported_lost() -> None:
    b, (a, c) = cluster(2)
    pub = a.connect("pub")
    publish(a, pub, "x", 10)
    b.settle()
    st = b.channels["x"]
    st.entries = [e for e in st.entries if e[0] > 6]  # trimmed by time or bytes
    sub = c.connect("sub")
    reply = attach(c, sub, from_serial=2, epoch=st.epoch)
    assert reply["lost"] and (reply["lost_from"], reply["lost_to"]) == (3, 6)
    assert reply["_messages"] == [7, 8, 9, 10]
    s2 = c.connect("sub2")
    reply = attach(c, s2, from_serial=1, epoch=st.epoch)  # known now: no new read needed
    assert (reply["lost_from"], reply["lost_to"]) == (2, 6)
    assert reply["_messages"] == [7, 8, 9, 10]
    s3 = c.connect("sub3")
    st.entries = []
    reply = attach(c, s3, from_serial=0, epoch=st.epoch)
    assert reply["_messages"] == list(range(7, 11))  # the node's copy still has them


def test_rewind_and_history_reach_into_the_shared_history() -> None:
    b, (a, c) = cluster(2)
    pub = a.connect("pub")
    publish(a, pub, "x", 30)
    b.settle()
    sub = c.connect("sub")
    assert attach(c, sub, rewind=5)["_messages"] == list(range(26, 31))
    c.send(sub, {"action": "history", "ref": "h", "channel": "x", "limit": 10, "before": 12})
    b.settle()
    [answer] = c.take(sub)
    assert [m["serial"] for m in answer["messages"]] == list(range(2, 12))
    reader = a.connect("reader")  # a node that does not follow x
    a.send(reader, {"action": "history", "ref": "h", "channel": "x", "limit": 3,
                    "after": 20})
    b.settle()
    [answer] = a.take(reader)
    assert [m["serial"] for m in answer["messages"]] == [21, 22, 23]


def test_lost_and_late_pubsub_messages_are_repaired_in_order() -> None:
    rng = random.Random(7)
    b, nodes = cluster(3)
    b.fate = lambda node, channel, payload: rng.choice(
        ["deliver"] * 6 + ["drop", "hold"])
    subs = [(node, node.connect(f"s{i}")) for i, node in enumerate(nodes)]
    for node, s in subs:
        attach(node, s)
    pub = nodes[1].connect("pub")
    for i in range(0, 300, 10):
        publish(nodes[1], pub, "x", 10, start=i)
        b.settle()
        if rng.random() < 0.3:
            b.release()
    b.fate = lambda node, channel, payload: "deliver"
    b.release()
    for node in nodes:
        node.view.check()  # the periodic position check finds the lost tails
    b.settle()
    for node, s in subs:
        assert messages(node.take(s)) == list(range(1, 301))
    assert sum(n.view.stats["backplane_gaps"] for n in nodes) > 0
    assert sum(n.view.stats["backplane_duplicates"] for n in nodes) > 0


def test_lost_history_disconnects_subscribers_who_resume_into_a_continuity_loss() -> None:
    b, (a, c) = cluster(2)
    sub = c.connect("sub")
    old = attach(c, sub)["epoch"]
    pub = a.connect("pub")
    publish(a, pub, "x", 5)
    b.settle()
    assert messages(c.take(sub)) == [1, 2, 3, 4, 5]
    b.lose_everything()  # Redis restarted empty
    publish(a, pub, "x", 2, start=5)
    b.settle()
    frames = c.take(sub)
    assert frames[-1] == {"action": "error", "fatal": True, "error": {
        "code": 50002, "message": frames[-1]["error"]["message"]}}
    assert c.h.disconnects[sub].close_code == 4500 and sub.resumable
    again = c.connect("sub")
    reply = attach(c, again, from_serial=5, epoch=old)
    assert reply["lost"] and reply["epoch"] != old and reply["serial"] == 2


def test_a_position_behind_the_node_starts_a_new_epoch() -> None:
    b, (a, c) = cluster(2)
    sub = c.connect("sub")
    attach(c, sub)
    pub = a.connect("pub")
    publish(a, pub, "x", 5)
    b.settle()
    st = b.channels["x"]
    st.serial, st.entries = 3, st.entries[:3]  # a replica that missed the last writes
    c.view.check()
    b.settle()
    assert b.channels["x"].epoch != st.epoch  # rebased
    publish(a, pub, "x", 1, start=5)
    b.settle()
    assert c.take(sub)[-1]["error"]["code"] == 50002


def test_presence_is_shared_and_a_gone_node_s_members_leave() -> None:
    b, (a, c) = cluster(2)
    watcher = c.connect("watcher")
    attach(c, watcher)
    ana = a.connect("ana")
    a.send(ana, {"action": "presence", "ref": 1, "channel": "x", "op": "enter",
                 "data": {"seat": 3}})
    b.settle()
    [result] = a.take(ana)
    assert [m["client_id"] for m in result["members"]] == ["ana"]
    [event] = c.take(watcher)
    assert event["action"] == "presence_event"
    assert [(e["type"], e["client_id"], e["data"]) for e in event["events"]] == [
        ("enter", "ana", {"seat": 3})]
    late = c.connect("late")
    c.send(late, {"action": "presence", "ref": 2, "channel": "x", "op": "get"})
    b.settle()
    [result] = c.take(late)
    assert [m["client_id"] for m in result["members"]] == ["ana"]
    other = Node(b)  # a node that follows x only from now on
    o = other.connect("o")
    other.send(o, {"action": "presence", "ref": 3, "channel": "x", "op": "get"})
    b.settle()
    assert [m["client_id"] for m in other.take(o)[0]["members"]] == ["ana"]
    # node a stops refreshing its record: after the timeout its members leave
    rows = {c.node_id: {"seen": 10_000}, a.node_id: {"seen": 10_000}}
    assert c.ops.nodes_seen(rows, 11_000, False) == []
    rows[c.node_id] = {"seen": 30_000}
    assert c.ops.nodes_seen(rows, 30_000, False) == [a.node_id]
    b.settle()
    [event] = c.take(watcher)
    assert [(e["type"], e["client_id"]) for e in event["events"]] == [("leave", "ana")]
    c.send(late, {"action": "presence", "ref": 4, "channel": "x", "op": "get"})
    b.settle()
    assert c.take(late)[0]["members"] == []


def test_a_node_taken_for_gone_writes_its_members_again() -> None:
    b, (a, _c) = cluster(2)
    ana = a.connect("ana")
    a.send(ana, {"action": "presence", "ref": 1, "channel": "x", "op": "enter"})
    b.settle()
    b.presence["x"].clear()  # removed by another node that took a for gone
    a.ops.nodes_seen({a.node_id: {"seen": 1}}, 2, was_missing=True)
    b.settle()
    assert [node for node, _ in b.presence["x"].values()] == [a.node_id]


def test_leaving_and_closing_remove_members_everywhere() -> None:
    b, (a, c) = cluster(2)
    watcher = c.connect("watcher")
    attach(c, watcher)
    ana = a.connect("ana")
    a.send(ana, {"action": "presence", "ref": 1, "channel": "x", "op": "enter"})
    b.settle()
    c.take(watcher)
    a.h.core.session_lost(ana, a.h.now)  # its connection dropped
    b.settle()
    [event] = c.take(watcher)
    assert [(e["type"], e["client_id"]) for e in event["events"]] == [("leave", "ana")]
    assert b.presence["x"] == {}


def test_close_is_answered_after_the_acks_of_earlier_publishes() -> None:
    b, (a,) = cluster(1)
    pub = a.connect("pub")
    publish(a, pub, "x", 3)
    a.send(pub, {"action": "close", "ref": "bye"})
    assert [f["action"] for f in a.take(pub)] == []
    assert pub.streams  # the driver reads nothing more from this client meanwhile
    b.settle()
    assert [f["action"] for f in a.take(pub)] == ["ack", "ack", "ack", "closed"]
    assert a.h.disconnects[pub].close_code == 1000


def test_backplane_failures_are_transient_errors() -> None:
    _b, (a,) = cluster(1)
    pub = a.connect("pub")
    publish(a, pub, "x", 1)
    [effect] = a.view.take()
    assert isinstance(effect, bp.Publish)
    a.ops.publish_failed(effect.token, "connection refused")
    [nack] = a.take(pub)
    assert nack["action"] == "nack" and nack["error"]["code"] == 50000
    assert "connection refused" in nack["error"]["message"]
    sub = a.connect("sub")
    a.send(sub, {"action": "attach", "ref": "a", "channel": "y"})
    [follow] = a.view.take()
    assert isinstance(follow, bp.Follow)
    a.ops.follow_failed("y", follow.gen, "timeout")
    [error] = a.take(sub)
    assert error["action"] == "error" and error["error"]["code"] == 50000
    a.send(sub, {"action": "attach", "ref": "b", "channel": "y"})  # tries again
    assert [type(e) for e in a.view.take()] == [bp.Unfollow, bp.Follow]


def test_idle_channels_are_unfollowed() -> None:
    b, (a,) = cluster(1)
    sub = a.connect("sub")
    attach(a, sub)
    assert a.following == {"x"}
    a.send(sub, {"action": "detach", "ref": "d", "channel": "x"})
    b.settle()
    assert a.following == set() and "x" not in a.h.core.channels
    pub = a.connect("pub")
    publish(a, pub, "y", 2)  # publishing alone does not follow a channel
    b.settle()
    assert a.following == set()


@pytest.mark.parametrize("seed", range(20))
def test_random_faults_lose_duplicate_or_reorder_nothing(seed: int) -> None:
    """Subscribers on random nodes, publishers on others, PUB/SUB losing and delaying
    messages, subscribers moving between nodes by resuming: each ends with every serial once
    and in order."""
    rng = random.Random(seed)
    b, nodes = cluster(3, read_limit=rng.choice([3, 50]))
    b.fate = lambda node, channel, payload: rng.choice(["deliver"] * 5 + ["drop", "hold"])
    subs: list[list[Any]] = []  # [node, session, received serials, epoch]
    for i in range(4):
        node = rng.choice(nodes)
        s = node.connect(f"s{i}")
        subs.append([node, s, [], attach(node, s)["epoch"]])
    pubs = [(node, node.connect(f"p{i}")) for i, node in enumerate(nodes)]
    total = 0
    for _ in range(30):
        node, pub = rng.choice(pubs)
        n = rng.randint(1, 8)
        publish(node, pub, "x", n, start=total)
        total += n
        b.settle()
        if rng.random() < 0.3:
            b.release()
        for sub in subs:
            sub[2] += messages(sub[0].take(sub[1]))
        if rng.random() < 0.2:  # a subscriber moves to another node
            sub = rng.choice(subs)
            sub[0].h.core.session_lost(sub[1], sub[0].h.now)
            sub[0] = rng.choice(nodes)
            sub[1] = sub[0].connect("moved")
            last = sub[2][-1] if sub[2] else 0
            reply = attach(sub[0], sub[1], from_serial=last, epoch=sub[3])
            assert not reply.get("lost")
            sub[2] += reply["_messages"]
    b.fate = lambda node, channel, payload: "deliver"
    b.release()
    for node in nodes:
        node.view.check()
    b.settle()
    for sub in subs:
        sub[2] += messages(sub[0].take(sub[1]))
        assert sub[2] == list(range(1, total + 1))


def test_only_this_node_s_own_members_keep_a_channel_followed() -> None:
    b, (a, c) = cluster(2)
    ana = a.connect("ana")
    a.send(ana, {"action": "presence", "ref": 1, "channel": "x", "op": "enter"})
    b.settle()
    looker = c.connect("looker")
    c.send(looker, {"action": "presence", "ref": 2, "channel": "x", "op": "get"})
    b.settle()
    assert [m["client_id"] for m in c.take(looker)[0]["members"]] == ["ana"]
    c.h.tick(1.0)  # the sweep: c has no subscriber or member of its own on x
    b.settle()
    assert "x" not in c.following and "x" not in c.h.core.channels
    a.h.tick(1.0)
    assert "x" in a.following  # ana, a's own member, keeps it there
