"""Frames: round trips, strict validation, and decoding that never crashes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtkit.core import frames as fr
from rtkit.errors import ProtocolError, RtkitError

MSG = fr.Message("m1", "chat", "greet", {"a": [1, 2.5, None]}, 7, 1700000000000, "alice")

CLIENT_SAMPLES: list[fr.Frame] = [
    fr.Connect(ref=1, key="root:secretsecret", client_id="alice"),
    fr.Connect(ref="r", token="a.b.c"),
    fr.Heartbeat(ref=3),
    fr.Heartbeat(),
    fr.Attach(ref=4, channel="chat:lobby", rewind=10),
    fr.Detach(ref=5, channel="chat:lobby"),
    fr.Publish(ref=6, channel="chat", name="greet", data={"x": 1}, id="abc"),
    fr.Publish(ref=7, channel="chat", name="", data=None),
    fr.History(ref=8, channel="chat", limit=5, before=100),
    fr.Presence(ref=9, channel="chat", op="enter", data={"status": "here"}),
    fr.Auth(ref=10, token="x.y.z"),
    fr.Close(ref=11),
]
SERVER_SAMPLES: list[fr.Frame] = [
    fr.Connected(ref=1, connection_id="c1", connection_key="c1!k", client_id="a",
                 heartbeat_interval=15000, connection_state_ttl=120000, server_time=5,
                 token_expires=99, limits={"max_message_size": 65536}),
    fr.Attached(ref=2, channel="chat", serial=0, epoch="e1"),
    fr.Detached(ref=3, channel="chat"),
    fr.Ack(ref=4, channel="chat", id="m1", serial=1, timestamp=2, duplicate=True),
    fr.Nack(ref=5, error=ProtocolError(code=40003)),
    fr.Messages(channel="chat", messages=(MSG,)),
    fr.HistoryResult(ref=6, channel="chat", messages=(MSG,)),
    fr.PresenceResult(ref=7, channel="chat", members=(fr.PresenceMember("a", "c1", None, 3),)),
    fr.PresenceEvent(channel="chat", changes=(
        fr.PresenceChange("enter", fr.PresenceMember("a", "c1", {"s": 1}, 3)),)),
    fr.Authorized(ref=8, client_id="a", token_expires=5),
    fr.Error(ref=9, error=RtkitError(code=50000), fatal=True),
    fr.Closed(),
    fr.Heartbeat(),
]


def _same(a: fr.Frame, b: fr.Frame) -> bool:
    return fr.encode(a) == fr.encode(b)


@pytest.mark.parametrize("frame", CLIENT_SAMPLES, ids=lambda f: f.ACTION)
def test_client_frames_round_trip(frame: fr.Frame) -> None:
    assert _same(fr.decode_client_frame(fr.encode(frame)), frame)


@pytest.mark.parametrize("frame", SERVER_SAMPLES, ids=lambda f: f.ACTION)
def test_server_frames_round_trip(frame: fr.Frame) -> None:
    assert _same(fr.decode_server_frame(fr.encode(frame)), frame)


def test_message_messages_keep_channel_from_frame() -> None:
    text = fr.encode(fr.Messages(channel="chat", messages=(MSG,)))
    decoded = fr.decode_server_frame(text)
    assert isinstance(decoded, fr.Messages)
    assert decoded.messages == (MSG,)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", 40001),
        ('{"action": "publish"', 40001),
        ("[1, 2]", 40000),
        ("42", 40000),
        ('{"ref": 1}', 40002),
        ('{"action": 5}', 40002),
        ('{"action": "explode"}', 40002),
        ('{"action": "message", "channel": "x", "messages": []}', 40002),  # server-only
        ('{"action": "attach", "ref": 1}', 40003),
        ('{"action": "attach", "channel": 7}', 40003),
        ('{"action": "attach", "channel": "a b"}', 40007),
        ('{"action": "attach", "channel": "chat:*"}', 40007),
        ('{"action": "attach", "channel": ""}', 40007),
        ('{"action": "attach", "channel": "x", "rewind": -1}', 40003),
        ('{"action": "attach", "channel": "x", "rewind": true}', 40003),
        ('{"action": "attach", "channel": "x", "ref": [1]}', 40003),
        ('{"action": "attach", "channel": "x", "ref": true}', 40003),
        ('{"action": "publish", "channel": "x"}', 40003),
        ('{"action": "publish", "channel": "x", "name": 3}', 40003),
        ('{"action": "publish", "channel": "x", "name": "n", "id": ""}', 40003),
        ('{"action": "presence", "channel": "x", "op": "dance"}', 40003),
        ('{"action": "history", "channel": "x", "limit": 0}', 40003),
        ('{"action": "connect", "protocol": "one"}', 40003),
        ('{"action": "publish", "channel": "x", "name": "n", "data": NaN}', 40001),
        ('{"action": "publish", "channel": "x", "name": "n", "data": Infinity}', 40001),
        ("[" * 100000, 40001),
    ],
)
def test_bad_client_frames_get_documented_codes(text: str, code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        fr.decode_client_frame(text)
    assert info.value.code == code


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        fr.decode_client_frame(b'{"action": "heartbeat"}')
    assert info.value.code == 40004


def test_unknown_fields_are_ignored() -> None:
    f = fr.decode_client_frame('{"action": "heartbeat", "ref": 1, "future": {"x": 1}}')
    assert f == fr.Heartbeat(ref=1)


def test_publish_keeps_falsy_data() -> None:
    for data in (None, False, 0, "", [], {}):
        text = fr.encode(fr.Publish(ref=1, channel="c", name="n", data=data))
        assert json.loads(text)["data"] == data
        decoded = fr.decode_client_frame(text)
        assert isinstance(decoded, fr.Publish)
        assert decoded.data == data


def test_is_json_value() -> None:
    assert fr.is_json_value({"a": [1, "x", None, True]})
    assert not fr.is_json_value(float("nan"))
    assert not fr.is_json_value({1, 2})
    assert not fr.is_json_value(object())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(["action", "ref", "channel", "name", "data", "id", "op",
                                     "limit", "rewind", "token", "key", "before", "protocol",
                                     "messages", "serial", "epoch", "error", "fatal"]),
                    json_values, max_size=8).map(json.dumps),
    st.builds(lambda a, rest: json.dumps({"action": a, **rest}),
              st.sampled_from(sorted(set(fr.CLIENT_FRAMES) | set(fr.SERVER_FRAMES))),
              st.dictionaries(st.sampled_from(["ref", "channel", "name", "data", "id", "op",
                                               "limit", "rewind", "messages", "serial",
                                               "epoch", "error", "members", "events"]),
                              json_values, max_size=6)),
))
def test_decoding_arbitrary_input_only_raises_protocol_errors(data: Any) -> None:
    for decode in (fr.decode_client_frame, fr.decode_server_frame):
        try:
            frame = decode(data)
        except ProtocolError as exc:
            assert 40000 <= exc.code < 40100
        else:
            assert isinstance(frame, fr.Frame)
            fr.encode(frame)  # whatever decodes can be encoded again


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=40), data=json_values,
       ref=st.integers(0, 2**40) | st.text(max_size=10))
def test_publish_round_trips_for_any_json(name: str, data: Any, ref: Any) -> None:
    frame = fr.Publish(ref=ref, channel="c", name=name, data=data)
    assert fr.decode_client_frame(fr.encode(frame)) == frame
