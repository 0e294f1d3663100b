"""Broker session logic driven directly, without the network."""

from __future__ import annotations

import json

import pytest

from tests.core.harness import ROOT, Harness


def codes(frames: list[dict]) -> list[int]:
    return [f["error"]["code"] for f in frames if "error" in f]


def test_connect_announces_session_and_limits() -> None:
    h = Harness(heartbeat_interval=2.0, connection_state_ttl=30.0)
    s = h.open()
    h.send(s, {"action": "connect", "ref": 1, "key": ROOT.value, "client_id": "alice"})
    [reply] = h.take(s)
    assert reply["action"] == "connected" and reply["ref"] == 1
    assert reply["client_id"] == "alice"
    assert reply["heartbeat_interval"] == 2000 and reply["connection_state_ttl"] == 30000
    assert reply["connection_key"].startswith(reply["connection_id"])
    assert reply["limits"]["max_message_size"] == 64 * 1024


@pytest.mark.parametrize(
    ("creds", "code"),
    [
        ({}, 40106),
        ({"key": "root:nope"}, 40101),
        ({"token": "garbage"}, 40102),
        ({"key": ROOT.value, "token": "x.y.z"}, 40003),
    ],
)
def test_refused_credentials_are_fatal_with_their_code(creds: dict, code: int) -> None:
    h = Harness()
    s = h.open()
    h.send(s, {"action": "connect", "ref": 1, **creds})
    [reply] = h.take(s)
    assert reply == {"action": "error", "ref": 1, "fatal": True,
                     "error": {"code": code, "message": reply["error"]["message"]}}
    assert h.disconnects[s].close_code == 4000 + (code // 100) % 1000
    assert h.disconnects[s].reason.startswith(str(code))


def test_token_client_id_cannot_be_overridden() -> None:
    h = Harness()
    s = h.open()
    h.send(s, {"action": "connect", "ref": 1, "token": h.token(client_id="bob"),
               "client_id": "mallory"})
    assert codes(h.take(s)) == [40107]


def test_expired_token_refused_at_connect() -> None:
    h = Harness()
    token = h.token(ttl=1)
    h.now += 2
    s = h.open()
    h.send(s, {"action": "connect", "ref": 1, "token": token})
    assert codes(h.take(s)) == [40140]


def test_frames_before_connect_are_refused() -> None:
    h = Harness()
    s = h.open()
    h.send(s, {"action": "attach", "ref": 1, "channel": "x"})
    h.send(s, {"action": "publish", "ref": 2, "channel": "x", "name": "n"})
    assert codes(h.take(s)) == [40005, 40005]


def test_publish_fans_out_one_batch_per_flush_with_increasing_serials() -> None:
    h = Harness()
    pub = h.connect("p")
    subs = [h.connect(f"s{i}") for i in range(3)]
    for s in subs:
        h.send(s, {"action": "attach", "ref": 1, "channel": "ticks"})
        [attached] = h.take(s)
        assert attached["action"] == "attached" and attached["serial"] == 0
    sends_before = h.sends
    for i in range(5):
        h.send(pub, {"action": "publish", "ref": i, "channel": "ticks", "name": "t", "data": i})
    acks = h.take(pub)
    assert [a["serial"] for a in acks] == [1, 2, 3, 4, 5]
    assert all(a["action"] == "ack" for a in acks)
    # one encoded batch for all three subscribers, plus the five acks
    assert h.sends - sends_before == 6
    texts = {h.raw[s][-1] for s in subs}
    assert len(texts) == 1
    [frame] = h.take(subs[0])
    assert frame["action"] == "message" and frame["channel"] == "ticks"
    assert [m["serial"] for m in frame["messages"]] == [1, 2, 3, 4, 5]
    assert [m["data"] for m in frame["messages"]] == [0, 1, 2, 3, 4]
    assert all(m["client_id"] == "p" and m["id"] for m in frame["messages"])


def test_batches_never_exceed_the_frame_limit() -> None:
    h = Harness(max_frame_size=4096, max_message_size=1024, publish_burst=1000)
    pub, sub = h.connect("p"), h.connect("s")
    h.send(sub, {"action": "attach", "ref": 1, "channel": "c"})
    h.take(sub)
    for i in range(50):
        h.send(pub, {"action": "publish", "ref": i, "channel": "c", "name": "n", "data": "x" * 900})
    h.flush()
    frames = h.take(sub)
    assert len(frames) > 1
    assert all(len(t) <= 4096 for t in h.raw[sub][1:])
    assert [m["serial"] for f in frames for m in f["messages"]] == list(range(1, 51))


def test_attach_sees_only_messages_after_its_serial_and_rewind_replays() -> None:
    h = Harness()
    pub, late = h.connect("p"), h.connect("late")
    for i in range(4):
        h.send(pub, {"action": "publish", "ref": i, "channel": "c", "name": "n", "data": i})
    h.send(late, {"action": "attach", "ref": 1, "channel": "c", "rewind": 2})
    attached, replay = h.take(late)
    assert attached["serial"] == 4
    assert [m["serial"] for m in replay["messages"]] == [3, 4]
    h.send(pub, {"action": "publish", "ref": 9, "channel": "c", "name": "n"})
    [live] = h.take(late)
    assert [m["serial"] for m in live["messages"]] == [5]


def test_attach_in_the_same_iteration_as_publishes_does_not_duplicate() -> None:
    h = Harness()
    pub, early, late = h.connect("p"), h.connect("e"), h.connect("l")
    h.send(early, {"action": "attach", "ref": 1, "channel": "c"})
    h.take(early)
    h.send(pub, {"action": "publish", "ref": 1, "channel": "c", "name": "n"})
    h.send(late, {"action": "attach", "ref": 1, "channel": "c"})  # before the flush
    h.send(pub, {"action": "publish", "ref": 2, "channel": "c", "name": "n"})
    h.flush()
    late_frames = h.take(late)
    assert late_frames[0]["serial"] == 1
    assert [m["serial"] for m in late_frames[1]["messages"]] == [2]
    early_serials = [m["serial"] for f in h.take(early) for m in f["messages"]]
    assert early_serials == [1, 2]


def test_idempotent_publish_with_client_id() -> None:
    h = Harness()
    pub, sub = h.connect("p"), h.connect("s")
    h.send(sub, {"action": "attach", "ref": 1, "channel": "c"})
    h.take(sub)
    for ref in (1, 2):
        h.send(pub, {"action": "publish", "ref": ref, "channel": "c", "name": "n", "id": "m-1"})
    first, second = h.take(pub)
    assert first["serial"] == second["serial"] == 1
    assert second["duplicate"] is True and "duplicate" not in first
    assert [m["id"] for f in h.take(sub) for m in f["messages"]] == ["m-1"]


def test_history_answers_are_capped_by_history_size_and_messages_expire() -> None:
    # history_size caps what one request returns; storage is bounded by time and bytes.
    h = Harness(history_size=3, history_ttl=10.0, connection_state_ttl=5.0)
    s = h.connect("p")
    for i in range(5):
        h.send(s, {"action": "publish", "ref": i, "channel": "c", "name": "n", "data": i})
    h.take(s)
    h.send(s, {"action": "history", "ref": 7, "channel": "c", "limit": 10})
    [res] = h.take(s)
    assert res["action"] == "history_result" and res["ref"] == 7
    assert [m["data"] for m in res["messages"]] == [2, 3, 4]
    h.send(s, {"action": "history", "ref": 8, "channel": "c", "limit": 1, "before": 4})
    assert [m["serial"] for m in h.take(s)[0]["messages"]] == [3]
    h.now += 11
    h.send(s, {"action": "history", "ref": 9, "channel": "c"})
    assert h.take(s)[0]["messages"] == []
    h.send(s, {"action": "history", "ref": 10, "channel": "never-used"})
    assert h.take(s)[0]["messages"] == []


def test_capabilities_are_enforced_per_operation_and_connection_survives() -> None:
    h = Harness()
    token = h.token(client_id="t", capabilities={"chat:*": ["subscribe"]})
    s = h.connect(token=token)
    h.send(s, {"action": "publish", "ref": 1, "channel": "chat:a", "name": "n"})
    h.send(s, {"action": "attach", "ref": 2, "channel": "news"})
    h.send(s, {"action": "history", "ref": 3, "channel": "chat:a"})
    h.send(s, {"action": "presence", "ref": 4, "channel": "chat:a", "op": "enter"})
    h.send(s, {"action": "attach", "ref": 5, "channel": "chat:a"})
    replies = h.take(s)
    assert [r["action"] for r in replies] == ["nack", "error", "error", "error", "attached"]
    assert codes(replies) == [40300] * 4
    assert s not in h.disconnects


def test_limits_message_size_and_publish_rate() -> None:
    h = Harness(max_message_size=100, publish_rate=10, publish_burst=3)
    s = h.connect("p")
    # every attempt counts against the rate, refused ones too (a flood is a flood)
    h.send(s, {"action": "publish", "ref": 1, "channel": "c", "name": "n", "data": "x" * 200})
    for ref in (2, 3, 4):
        h.send(s, {"action": "publish", "ref": ref, "channel": "c", "name": "n"})
    replies = h.take(s)
    assert [r["action"] for r in replies] == ["nack", "ack", "ack", "nack"]
    assert codes(replies) == [42901, 42900]
    h.now += 0.2
    h.send(s, {"action": "publish", "ref": 5, "channel": "c", "name": "n"})
    assert h.take(s)[0]["action"] == "ack"


def test_protocol_errors_are_answered_then_the_connection_is_cut() -> None:
    h = Harness(max_protocol_errors=3)
    s = h.connect("p")
    h.send(s, "garbage")
    h.send(s, b"\x00\x01")
    h.send(s, {"action": "attach", "ref": "r1"})
    replies = h.take(s)
    assert codes(replies) == [40001, 40004, 40003]
    assert replies[2]["ref"] == "r1"
    assert s not in h.disconnects
    h.send(s, {"action": "nope"})
    replies = h.take(s)
    assert codes(replies) == [42904] and replies[0]["fatal"] is True
    assert h.disconnects[s].close_code == 4429


def test_presence_enter_update_leave_and_auto_leave() -> None:
    h = Harness()
    a, b, watcher = h.connect("a"), h.connect("b"), h.connect("w")
    h.send(watcher, {"action": "attach", "ref": 1, "channel": "room"})
    h.take(watcher)
    h.send(a, {"action": "presence", "ref": 1, "channel": "room", "op": "enter", "data": {"s": 1}})
    h.send(a, {"action": "presence", "ref": 2, "channel": "room", "op": "update", "data": {"s": 2}})
    h.send(b, {"action": "presence", "ref": 1, "channel": "room", "op": "enter"})
    h.take(a)
    h.send(b, {"action": "presence", "ref": 2, "channel": "room", "op": "get"})
    [res] = [f for f in h.take(b) if f["ref"] == 2]
    assert {m["client_id"] for m in res["members"]} == {"a", "b"}
    h.core.session_lost(a, h.now)
    events = [e for f in h.take(watcher) for e in f["events"]]
    assert [(e["type"], e["client_id"]) for e in events] == [
        ("enter", "a"), ("update", "a"), ("enter", "b"), ("leave", "a")]
    assert [e["data"] for e in events[:2]] == [{"s": 1}, {"s": 2}]


def test_presence_needs_a_client_id() -> None:
    h = Harness()
    s = h.connect(None)
    h.send(s, {"action": "presence", "ref": 1, "channel": "room", "op": "enter"})
    assert codes(h.take(s)) == [40010]


def test_heartbeats_and_echo() -> None:
    h = Harness(heartbeat_interval=1.0)
    s = h.connect("p")
    h.send(s, {"action": "heartbeat", "ref": 42})
    assert h.take(s) == [{"action": "heartbeat", "ref": 42}]
    h.tick(0.5)
    assert h.take(s) == []
    h.tick(0.6)
    assert h.take(s) == [{"action": "heartbeat"}]


def test_token_expiry_disconnects_and_renewal_extends() -> None:
    h = Harness()
    s = h.connect(token=h.token(client_id="a", ttl=5))
    h.tick(3)
    h.send(s, {"action": "auth", "ref": 1, "token": h.token(client_id="a", ttl=5)})
    [auth] = [f for f in h.take(s) if f["action"] != "heartbeat"]
    assert auth["action"] == "authorized" and auth["token_expires"] == round((h.now + 5) * 1000)
    h.tick(3)
    assert s not in h.disconnects
    h.tick(3)
    assert codes(h.take(s)) == [40140]
    assert h.disconnects[s].close_code == 4401


def test_renewal_for_another_client_is_refused_and_narrower_token_detaches() -> None:
    h = Harness()
    s = h.connect(token=h.token(client_id="a", capabilities={"*": ["*"]}))
    h.send(s, {"action": "attach", "ref": 1, "channel": "secret"})
    h.send(s, {"action": "auth", "ref": 2, "token": h.token(client_id="b")})
    h.send(s, {"action": "auth", "ref": 3,
               "token": h.token(client_id="a", capabilities={"public": ["subscribe"]})})
    replies = h.take(s)
    assert [r["action"] for r in replies] == ["attached", "error", "detached", "authorized"]
    assert codes(replies) == [40107, 40300]


def test_auth_timeout_and_close() -> None:
    h = Harness(auth_timeout=1.0)
    idle = h.open()
    h.tick(2)
    assert codes(h.take(idle)) == [40005]
    s = h.connect("p")
    h.send(s, {"action": "close", "ref": 1})
    assert h.take(s) == [{"action": "closed", "ref": 1}]
    assert h.disconnects[s].close_code == 1000


def test_channel_limits() -> None:
    h = Harness(max_channels_per_connection=2, max_channels=3)
    s = h.connect("p")
    for i, name in enumerate(["a", "b", "c"]):
        h.send(s, {"action": "attach", "ref": i, "channel": name})
    assert codes(h.take(s)) == [42906]
    other = h.connect("q")
    h.send(other, {"action": "publish", "ref": 1, "channel": "x", "name": "n"})
    h.send(other, {"action": "publish", "ref": 2, "channel": "y", "name": "n"})
    assert codes(h.take(other)) == [42908]


def test_idle_channels_are_forgotten_after_their_history_expires() -> None:
    h = Harness(history_ttl=1.0, connection_state_ttl=1.0)
    s = h.connect("p")
    h.send(s, {"action": "publish", "ref": 1, "channel": "c", "name": "n"})
    h.take(s)
    h.tick(0.5)
    assert "c" in h.core.channels
    h.tick(1.0)
    assert "c" not in h.core.channels
    # Used again: same epoch, numbering continues, so a resume from serial 1 loses nothing.
    h.send(s, {"action": "attach", "ref": 2, "channel": "c", "from_serial": 1,
               "epoch": h.core.registry.tombstones["c"][0]})
    [attached] = h.take(s)
    assert attached["serial"] == 1 and "lost" not in attached


def test_shutdown_says_goodbye() -> None:
    h = Harness()
    s = h.connect("p")
    h.core.shutdown()
    [closed] = h.take(s)
    assert closed["action"] == "closed" and closed["error"]["code"] == 50001
    assert h.disconnects[s].close_code == 1001


def test_encoded_fragments_are_valid_json() -> None:
    h = Harness()
    s = h.connect("p")
    data = {"quote": 'he said "hi"\n', "emoji": "\u2603", "nested": [1, {"a": None}]}
    h.send(s, {"action": "publish", "ref": 1, "channel": "c", "name": "n\"ame", "data": data})
    h.send(s, {"action": "history", "ref": 2, "channel": "c"})
    res = h.take(s)[-1]
    assert json.loads(h.raw[s][-1]) == res
    assert res["messages"][0]["data"] == data and res["messages"][0]["name"] == 'n"ame'
