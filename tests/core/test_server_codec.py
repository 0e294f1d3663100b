"""The client's frame decoder (msgspec): the same verdicts as the general decoder, faster.

Every bad input gets its documented code; on any input, both decoders accept the same
frames with the same content, or refuse them with the same code; the fast path is the one
taken for what a broker sends; the messages users get are plain :class:`rtkit.Message`.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtkit
from rtkit.core import client_events as ev
from rtkit.core import frames as fr
from rtkit.core import server_codec as sc
from rtkit.core.continuity import Tracker, Verdict
from rtkit.errors import ProtocolError
from tests.core.test_client_core import core, open_and_connect
from tests.core.test_frames import MSG, SERVER_SAMPLES, json_values

ITEM = {"id": "m1", "name": "tick", "data": {"p": 1.5}, "serial": 1, "timestamp": 2,
        "client_id": "ana"}


def outcome(decode: Any, text: str | bytes) -> tuple[str, Any]:
    try:
        frame = decode(text)
    except ProtocolError as exc:
        return "refused", exc.code
    try:
        return type(frame).__name__, fr.encode(frame)
    except ValueError:  # data the stdlib parser reads as infinity: not JSON any more
        return type(frame).__name__, repr(frame)


def both(text: str | bytes) -> tuple[str, Any]:
    """Decode with the codec and with the reference; they must agree. The codec's verdict."""
    mine, reference = outcome(sc.decode, text), outcome(fr.decode_server_frame, text)
    assert mine == reference, text
    return mine


def frame(action: str = "message", **fields: Any) -> str:
    if action == "message":
        fields = {"channel": "chat", "messages": [ITEM], **fields}
    return json.dumps({"action": action, **fields})


def item(**fields: Any) -> str:
    return frame(messages=[{**ITEM, **fields}])


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("sample", SERVER_SAMPLES, ids=lambda f: f.ACTION)
def test_every_server_frame_decodes_as_the_reference_does(sample: fr.Frame) -> None:
    kind, text = both(fr.encode(sample))
    assert kind == type(sample).__name__ and text == fr.encode(sample)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", 40001),
        ('{"action": "message"', 40001),
        ("[" * 100_000, 40001),
        ("[1, 2]", 40000),
        ('"message"', 40000),
        ('{"ref": 1}', 40002),
        ('{"action": 5}', 40002),
        ('{"action": "explode"}', 40002),
        ('{"action": "publish", "channel": "x", "name": "n"}', 40002),  # client-only
        ('{"action": "message", "channel": "x", "messages": [], "action": "boom"}', 40002),
        (frame(channel=7), 40003),
        (frame(channel="a b"), 40007),
        (frame(channel="chat:*"), 40007),
        (frame(channel=""), 40007),
        ('{"action": "message", "messages": []}', 40003),
        (frame(messages={"0": ITEM}), 40003),
        (frame(messages=[1]), 40003),
        (item(id=""), 40003),
        (item(id="x" * 129), 40003),
        (item(id=None), 40003),
        (item(name=3), 40003),
        (item(name="n" * 257), 40003),
        (item(serial=0), 40003),
        (item(serial=True), 40003),
        (item(serial=1.0), 40003),
        (item(serial="1"), 40003),
        (item(timestamp=-1), 40003),
        (item(client_id=5), 40003),
        (item(client_id="c" * 129), 40003),
        (item(data=float("nan")), 40001),
        (item(data=float("inf")), 40001),
        (item(data=json.loads(nested(65))), 40011),
        (item(data={"deep": json.loads(nested(64))}), 40011),
        (item(ignored=json.loads(nested(65))), 40011),
        (frame(messages=[ITEM, {**ITEM, "serial": 2, "data": json.loads(nested(65))}]),
         40011),
        (item(data="\\ud800").replace("\\\\ud800", "\\ud800"), 40001),  # lone surrogate
        (item(ignored="\\udc00").replace("\\\\udc00", "\\udc00"), 40001),
        (frame("history_result", ref=1, channel="c", messages=[], more="yes"), 40003),
        (frame("history_result", ref=1, channel="c", messages=[], more=None), 40003),
        (frame("history_result", ref=True, channel="c", messages=[]), 40003),
        (frame("history_result", ref="r" * 65, channel="c", messages=[]), 40003),
        (frame("history_result", ref=1, channel="c", messages=[{**ITEM, "serial": -1}]),
         40003),
        (frame("ack", ref=1, channel="c", serial=1, timestamp=2), 40003),
        (frame("ack", ref=1, channel="c", id="m", serial=0, timestamp=2), 40003),
        (frame("ack", ref=1, channel="c", id="m", serial=1, timestamp="2"), 40003),
        (frame("ack", ref=1, channel="c", id="m", serial=1, timestamp=2, duplicate=None),
         40003),
        (frame("ack", ref=1, channel="a b", id="m", serial=1, timestamp=2), 40007),
        (frame("heartbeat", ref=[1]), 40003),
        (frame("heartbeat", ref=False), 40003),
        (frame("attached", ref=1, channel="c", epoch="e"), 40003),
        (frame("connected", ref=1, connection_id="c"), 40003),
        (b'{"action": "heartbeat"}', 40004),
    ],
)
def test_bad_frames_get_their_documented_codes(text: str | bytes, code: int) -> None:
    assert both(text) == ("refused", code)


@pytest.mark.parametrize("text", [
    item(data=json.loads(nested(64))),  # as deep as allowed
    frame(messages=[{**ITEM, "serial": s, "data": {"a": {"b": [s]}}} for s in range(1, 200)]),
    frame(messages=[{**ITEM, "serial": s, "data": "[{[{"} for s in range(1, 50)]),
    item(data=None), item(data=False), item(data=0), item(data=""), item(data=[]),
    item(client_id=None), item(name=""),
    '{"action":"message","channel":"c","messages":[{"id":"m","name":"n","serial":1,'
    '"timestamp":2}]}',  # data and client_id absent: None
    item(future={"x": [1]}), frame(future=1),  # unknown fields are ignored
    item(data=0).replace('"data": 0', '"data": 1e400'),  # inf, as the stdlib parser reads
    item(data=10**30), item(data=-0.0), item(data=5e-324),
    '{"action":"message","channel":"c","messages":[{"id":"a","id":"b","name":"n",'
    '"serial":1,"timestamp":2,"data":1,"client_id":null}]}',  # the last key wins
    '{"channel":"c","messages":[],"action":"message"}',
    item(data="\\ud83d\\ude00").replace("\\\\u", "\\u"),  # an escaped surrogate pair
    frame("ack", ref="r", channel="c", id="m", serial=5, timestamp=6, duplicate=True),
    frame("heartbeat"), frame("heartbeat", ref=2**70),
    frame("history_result", ref=1, channel="c", messages=[ITEM], more=True),
])
def test_unusual_but_valid_frames_decode_the_same(text: str) -> None:
    kind, _ = both(text)
    assert kind != "refused"


def test_the_fast_path_is_taken_for_what_the_broker_sends(monkeypatch: Any) -> None:
    def reference(text: str | bytes) -> fr.Frame:
        raise AssertionError(f"took the general path: {text!r}")

    texts = [fr.encode(f) for f in SERVER_SAMPLES if f.ACTION in (
        "message", "history_result", "ack", "heartbeat")]
    texts.append(frame(messages=[{**ITEM, "serial": s} for s in range(1, 101)]))
    texts.append(item(data={"nested": {"levels": [1, {"ok": True}]}}))
    monkeypatch.setattr(fr, "decode_server_frame", reference)
    for text in texts:
        sc.decode(text)


def test_messages_are_plain_public_messages() -> None:
    decoded = sc.decode_frame(fr.encode(fr.Messages(channel="chat", messages=(MSG,))))
    assert isinstance(decoded, sc.MessageFrame) and decoded.channel == "chat"
    [msg] = decoded.messages
    assert type(msg) is rtkit.Message and msg == MSG
    assert repr(msg) == repr(MSG)
    assert dataclasses.asdict(msg) == dataclasses.asdict(MSG)  # type: ignore[call-overload]
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.serial = 8  # type: ignore[misc]
    hashable = sc.decode_frame(item(data="x")).messages[0]  # type: ignore[union-attr]
    assert hash(hashable) == hash(rtkit.Message("m1", "chat", "tick", "x", 1, 2, "ana"))


# ------------------------------------------------------------------ any input: agreement

channels = st.sampled_from(["chat", "a:b-c_d.e", "x" * 256, "x" * 257, "a b", "c*", "",
                            "é", "\u2028", "tab\t"])
small_ints = st.integers(-3, 3) | st.integers(0, 2**70)
field_values = json_values | small_ints | st.text(max_size=5) | st.just(None)
deep_values = st.integers(60, 70).map(lambda n: json.loads(nested(n)))


@st.composite
def message_items(draw: st.DrawFn) -> Any:
    obj = dict(ITEM, id=draw(st.text(min_size=1, max_size=6)), serial=draw(small_ints),
               data=draw(json_values | deep_values), client_id=draw(st.none() | st.text()))
    if draw(st.integers(0, 3)) == 0:  # break a field, drop one, or add one
        key = draw(st.sampled_from([*sorted(ITEM), "extra"]))
        if draw(st.booleans()):
            obj[key] = draw(field_values | deep_values)
        else:
            obj.pop(key, None)
    return obj if draw(st.integers(0, 20)) else draw(field_values)


@st.composite
def server_frames(draw: st.DrawFn) -> str:
    action = draw(st.sampled_from(["message", "message", "history_result", "ack", "heartbeat",
                                   "attached", "presence_event", "nope"]))
    obj: dict[str, Any] = {"action": action, "channel": draw(channels),
                           "messages": draw(st.lists(message_items(), max_size=5)),
                           "ref": draw(st.none() | small_ints | st.text(max_size=70)),
                           "id": draw(st.text(max_size=3)), "serial": draw(small_ints),
                           "timestamp": draw(small_ints), "epoch": "e"}
    for key in draw(st.lists(st.sampled_from(sorted(obj)), max_size=3)):
        if key != "action":
            obj[key] = draw(field_values) if draw(st.booleans()) else obj.pop(key)
    if draw(st.booleans()):
        obj["more" if action == "history_result" else "duplicate"] = draw(field_values)
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if draw(st.integers(0, 9)) == 0:  # a damaged text
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["", "\\ud800", "]", "{", "NaN", '"'])) \
            + text[at + draw(st.integers(0, 3)):]
    return text


@settings(max_examples=1500, deadline=None)
@given(server_frames())
def test_both_decoders_agree_on_generated_frames(text: str) -> None:
    both(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=50))
def test_both_decoders_agree_on_arbitrary_text(text: str | bytes) -> None:
    both(text)


# ------------------------------------------------------------------ the client's side


def test_accept_run_delivers_what_check_would_one_by_one() -> None:
    """``accept_run`` takes the run ``check``/``accept`` would deliver one by one; the ids of
    at least the last ``id_window`` messages are remembered (older ones may be)."""
    rng = random.Random(7)
    for _ in range(2000):
        window = rng.choice([2, 5, 1000])
        fast, slow = Tracker("c", window), Tracker("c", window)
        position = rng.randint(0, 5)
        for t in (fast, slow):
            t.restore(position, "e")
        history = [f"i{rng.randint(0, 12)}" for _ in range(rng.randint(0, 8))]
        for t in (fast, slow):  # the same ids seen before
            for n, msg_id in enumerate(history):
                t.accept(fr.Message(msg_id, "c", "n", None, t.serial + 1, n))
        start = fast.serial + rng.choice([-1, 0, 0, 0, 1, 2])
        batch = [fr.Message(f"i{rng.randint(0, 15)}", "c", "n", None,
                            start + n + 1 + (rng.random() < 0.1), n)
                 for n in range(rng.randint(0, 6))]
        taken = fast.accept_run(batch)
        expected = 0
        for msg in batch:
            if slow.check(msg) is not Verdict.DELIVER:
                break
            slow.accept(msg)
            expected += 1
        accepted = history + [m.id for m in batch[:taken]]
        if taken < expected:  # an older copy than the window: remembered a little longer
            assert batch[taken].id in accepted[:-window]
            continue
        assert taken == expected
        assert (fast.serial, fast.delivered) == (slow.serial, slow.delivered)
        for msg_id in {m.id for m in batch} | set(history) | {"new"}:
            probe = fr.Message(msg_id, "c", "n", None, fast.serial + 1, 0)
            # Ids of the last `window` messages are remembered (older ones may be too).
            if msg_id in accepted[-window:]:
                assert fast.check(probe) is slow.check(probe) is Verdict.SEEN
            elif msg_id not in accepted:
                assert fast.check(probe) is slow.check(probe) is Verdict.DELIVER


def message_text(channel: str, serials: list[int], bad: set[int] | None = None) -> str:
    items: list[Any] = [{**ITEM, "id": f"m{s}", "serial": s} for s in serials]
    for n, s in enumerate(serials):
        if bad and s in bad:
            items[n] = {**items[n], "name": 5}
    return json.dumps({"action": "message", "channel": channel, "messages": items})


def attached_core() -> tuple[Any, int]:
    c = core()
    open_and_connect(c)
    sub, _op = c.subscribe("chat", 0.0)
    [attach] = [o for o in c.take() if isinstance(o, ev.Send) and '"attach"' in o.text]
    ref = json.loads(attach.text)["ref"]
    c.receive(json.dumps({"action": "attached", "ref": ref, "channel": "chat", "serial": 0,
                          "epoch": "e"}), 0.0)
    c.take()
    return c, sub


def test_frames_read_together_are_delivered_as_one_batch() -> None:
    c, sub = attached_core()
    for first in (1, 4, 5):
        c.receive(message_text("chat", list(range(first, first + (3 if first == 1 else 1)))),
                  0.1)
    [deliver] = [o for o in c.take() if isinstance(o, ev.Deliver)]
    assert [m.serial for m in deliver.messages] == [1, 2, 3, 4, 5] and deliver.subs == (sub,)
    assert all(type(m) is rtkit.Message for m in deliver.messages)
    c.receive(message_text("chat", [6]), 0.2)
    [deliver] = [o for o in c.take() if isinstance(o, ev.Deliver)]
    assert [m.serial for m in deliver.messages] == [6]


def test_one_undecodable_message_does_not_lose_the_others() -> None:
    c, _sub = attached_core()
    c.receive(message_text("chat", [1, 2, 3], bad={2}), 0.1)
    out = c.take()
    delivered = [m.serial for o in out if isinstance(o, ev.Deliver) for m in o.messages]
    assert delivered == [1, 3]
    problems = [o for o in out if isinstance(o, ev.Problem)]
    assert any(p.error.code == 40003 for p in problems)
    [lost] = [o.loss for o in out if isinstance(o, ev.Lost)]
    assert (lost.first_lost, lost.last_lost) == (2, 2)
    assert c.stats["malformed"] == 1


def test_a_copy_inside_a_batch_is_dropped_once_seen() -> None:
    c, _sub = attached_core()
    text = json.dumps({"action": "message", "channel": "chat", "messages": [
        {**ITEM, "id": "a", "serial": 1}, {**ITEM, "id": "b", "serial": 2},
        {**ITEM, "id": "a", "serial": 3}, {**ITEM, "id": "c", "serial": 4}]})
    c.receive(text, 0.1)
    delivered = [m.id for o in c.take() if isinstance(o, ev.Deliver) for m in o.messages]
    assert delivered == ["a", "b", "c"] and c.channels["chat"].tracker.serial == 4
    assert c.channels["chat"].tracker.duplicates == 1
