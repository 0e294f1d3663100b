"""The broker's fast publish decoder agrees with the full decoder on everything it accepts."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rtkit.core import frames as fr
from rtkit.core.intake import fast_publish
from rtkit.errors import ProtocolError

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
field_values: st.SearchStrategy[Any] = (
    st.text(max_size=300) | st.integers() | st.none() | st.booleans() | st.floats()
    | st.lists(st.integers(), max_size=2)
)


def full(text: str) -> fr.Publish | None:
    try:
        f = fr.decode_client_frame(text)
    except ProtocolError:
        return None
    return f if isinstance(f, fr.Publish) else None


def check_agrees(text: str) -> bool:
    """Whatever the fast path accepts, the full decoder accepts with the same content (and
    its data re-encodes to the same value). Returns whether the fast path answered."""
    fast = fast_publish(text)
    if fast is None:
        return False
    p, data = fast
    slow = full(text)
    assert slow is not None, text
    assert (p.ref, p.channel, p.name, p.id) == (slow.ref, slow.channel, slow.name, slow.id)
    assert type(p.ref) is type(slow.ref)
    assert json.loads(data) == slow.data
    fr.dumps(slow.data)  # the full path could encode it: no infinity slipped through
    return True


@settings(max_examples=400, deadline=None)
@given(
    channel=st.text(max_size=12) | st.sampled_from(["room", "a:b", "x" * 257]),
    name=field_values, data=json_values, ident=field_values, ref=field_values,
    extra=st.dictionaries(st.text(max_size=5), scalars, max_size=2),
    ascii_only=st.booleans(), first=st.booleans(),
)
def test_fast_publish_agrees_with_the_full_decoder(
    channel: str, name: Any, data: Any, ident: Any, ref: Any, extra: dict[str, Any],
    ascii_only: bool, first: bool,
) -> None:
    obj: dict[str, Any] = {**extra, "channel": channel, "name": name, "data": data, "id": ident,
                           "ref": ref}
    obj = {"action": "publish", **obj} if first else {**obj, "action": "publish"}
    try:
        text = json.dumps(obj, ensure_ascii=ascii_only)
    except ValueError:
        return
    check_agrees(text)


@settings(max_examples=400, deadline=None)
@given(data=json_values, cut=st.integers(0, 200), junk=st.text(max_size=3))
def test_damaged_frames_never_pass_the_fast_path_wrongly(data: Any, cut: int, junk: str) -> None:
    text = json.dumps({"action": "publish", "channel": "c", "name": "n", "data": data,
                       "ref": 1}, separators=(",", ":"))
    cut = min(cut, len(text))
    check_agrees(text[:cut] + junk + text[cut:])
    check_agrees(text[:cut] + text[cut + 1:])


DOUBTFUL = [
    '{"action":"publish","channel":"c","name":"n","data":1e999}',
    '{"action":"publish","channel":"c","name":"n","data":-1E+400}',
    '{"action":"publish","channel":"c","name":"n","data":' + "1" * 400 + '.0}',
    '{"action":"publish","channel":"c","name":"n","data":' + "1" * 5000 + "}",
    '{"action":"publish","channel":"c","name":"n","data":"\\ud800"}',
    '{"action":"publish","channel":"c","name":"n","data":"\\udc00x"}',
    '{"action":"publish","channel":"c","name":"\\uDBFF","data":1}',
    '{"action":"publish","channel":"c","name":"n","data":' + "[" * 70 + "]" * 70 + "}",
    '{"action":"publish","channel":"c","name":"n","data":NaN}',
    '{"action":"publish","channel":"c","name":"n","data":Infinity}',
    '{"action":"publish","channel":"c","name":"n","data":"a\nb"}',
    '{"action":"publish","channel":"c","name":"n","data":01}',
    '{"action":"publish","channel":"c","name":"n","data":1}x',
    '{"action":"publish","channel":"c","name":"n","ref":1.0}',
    '{"action":"publish","channel":"c","name":"n","ref":true}',
    '{"action":"publish","channel":"c","name":"n","id":""}',
    '{"action":"publish","channel":"c","name":null}',
    '{"action":"publish","channel":"a b","name":"n"}',
    '{"action":"publish","channel":"","name":"n"}',
    '{"action":"publish","channel":"c*","name":"n"}',
    '{"action":"publish","channel":"c","name":"' + "n" * 257 + '"}',
    '{"action":"publish","channel":"c","name":"n","ref":"' + "r" * 65 + '"}',
    '["publish"]',
    '{"action":"attach","channel":"publish"}',
]


def test_doubtful_frames_take_the_full_path_and_get_its_answer() -> None:
    for text in DOUBTFUL:
        fast = fast_publish(text)
        if fast is not None:  # only when the full decoder agrees
            assert check_agrees(text), text


def test_ordinary_publishes_take_the_fast_path() -> None:
    """rtkit's client frames, other key orders, whitespace and unicode escapes all qualify."""
    frames = [
        fr.encode(fr.Publish(ref=7, channel="room", name="tick", data={"x": 1.5, "s": "é"},
                             id="p-1")),
        json.dumps({"data": [1, 2, {"a": None}], "name": "", "channel": "a:b",
                    "action": "publish"}),
        json.dumps({"action": "publish", "channel": "c", "name": "n",
                    "data": "caf\u00e9 \U0001f600", "ref": "r"}, ensure_ascii=True),
        '{"action":"publish","channel":"c","name":"n","data":-0.0,"id":null,"ref":null}',
        '{"action":"publish","channel":"c","name":"n","data":1e10}',
    ]
    for text in frames:
        assert check_agrees(text), text
    assert not math.isinf(json.loads(fast_publish(frames[-1])[1]))  # type: ignore[index]


def test_data_is_relayed_as_its_publisher_encoded_it_on_either_path() -> None:
    """Subscribers get the publisher's JSON text for ``data`` (no re-encoding), and the size
    limit counts those bytes, whether the fast or the full decoder read the frame."""
    from tests.core.harness import Harness

    h = Harness(max_message_size=64)
    pub, sub = h.connect("p"), h.connect("s")
    h.send(sub, {"action": "attach", "ref": 1, "channel": "c"})
    h.take(sub)
    fast = '{"action":"publish","ref":1,"channel":"c","name":"n","data":{"a": [1, 2.50]}}'
    # A valid surrogate pair sends the frame down the full path.
    full = '{"action":"publish","ref":2,"channel":"c","name":"n","data":"\\ud83d\\ude00 \\u00e9"}'
    escaped = ('{"action":"publish","ref":3,"channel":"c","name":"n","data":"'
               + "\\u00e9" * 11 + '"}')
    for text in (fast, full, escaped):
        h.send(pub, text)
    acks = h.take(pub)
    assert [a["action"] for a in acks] == ["ack", "ack", "nack"]
    assert acks[2]["error"]["code"] == 42901  # 66 bytes as sent, though 22 as UTF-8
    raw = "".join(h.raw[sub][-1:])
    assert '"data":{"a": [1, 2.50]}' in raw and '"data":"\\ud83d\\ude00 \\u00e9"' in raw
    [frame] = h.take(sub)
    assert [m["data"] for m in frame["messages"]] == [{"a": [1, 2.5]}, "\U0001f600 é"]
