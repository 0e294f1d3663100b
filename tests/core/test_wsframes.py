"""WebSocket framing: frames built and read back under any chunking, and every violation
refused with the right close code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from rtkit.core import wsframes as ws


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(st.binary(max_size=70_000) | st.text(max_size=300), min_size=1,
                         max_size=6),
       masked=st.booleans(), cuts=st.lists(st.integers(0, 1 << 20), max_size=8))
def test_frames_read_back_whatever_the_chunking(messages: list[bytes | str], masked: bool,
                                               cuts: list[int]) -> None:
    wire = b"".join(ws.text(m, mask=masked) if isinstance(m, str)
                    else ws.frame(ws.OP_BINARY, m, mask=masked) for m in messages)
    reader = ws.FrameReader(masked=masked, max_size=1 << 17)
    got = [m for piece in chunks(wire, cuts) for m in reader.feed(piece)]
    assert [m.data for m in got] == [m.encode() if isinstance(m, str) else m
                                     for m in messages]
    assert [m.opcode for m in got] == [ws.OP_TEXT if isinstance(m, str) else ws.OP_BINARY
                                       for m in messages]


def test_what_websockets_sends_we_read_and_what_we_send_websockets_reads() -> None:
    server = Protocol(Side.SERVER)
    server.send_text("héllo".encode())
    server.send_binary(b"\x00\x01", fin=False)
    server.send_continuation(b"\x02", fin=True)
    server.send_ping(b"hb")
    reader = ws.FrameReader(masked=False)
    got = reader.feed(b"".join(server.data_to_send()))
    assert [(m.opcode, m.data) for m in got] == [
        (ws.OP_TEXT, "héllo".encode()), (ws.OP_BINARY, b"\x00\x01\x02"), (ws.OP_PING, b"hb")]
    client_side = Protocol(Side.SERVER)  # reads masked frames, as a server does
    client_side.receive_data(ws.text("from a client", mask=True) + ws.close_frame(1000, "bye",
                                                                                  mask=True))
    events = client_side.events_received()
    assert isinstance(events[0], Frame) and events[0].opcode is Opcode.TEXT
    assert events[0].data == b"from a client"
    assert client_side.close_rcvd is not None and client_side.close_rcvd.reason == "bye"


@pytest.mark.parametrize(("wire", "masked", "code"), [
    (b"\x81\x05hello", True, ws.PROTOCOL_ERROR),  # a client frame without a mask
    (ws.text("x", mask=True), False, ws.PROTOCOL_ERROR),  # a server frame with one
    (b"\xc1\x00", False, ws.PROTOCOL_ERROR),  # a reserved bit: no extension in use
    (b"\x83\x00", False, ws.PROTOCOL_ERROR),  # an unknown opcode
    (b"\x09\x00", False, ws.PROTOCOL_ERROR),  # a fragmented ping
    (b"\x89\x7e\x00\x80" + b"x" * 128, False, ws.PROTOCOL_ERROR),  # a ping over 125 bytes
    (b"\x80\x00", False, ws.PROTOCOL_ERROR),  # a continuation of nothing
    (b"\x01\x01a\x81\x01b", False, ws.PROTOCOL_ERROR),  # a new message mid-fragments
    (b"\x81\x02\xc3\x28", False, ws.INVALID_DATA),  # text that is not UTF-8
    (b"\x81\x7f" + (1 << 40).to_bytes(8, "big"), False, ws.TOO_BIG),
])
def test_violations_are_refused_with_their_close_code(wire: bytes, masked: bool,
                                                      code: int) -> None:
    with pytest.raises(ws.FrameError) as info:
        ws.FrameReader(masked=masked, max_size=1024).feed(wire)
    assert info.value.code == code


def test_a_fragmented_message_is_bounded_as_a_whole() -> None:
    reader = ws.FrameReader(masked=False, max_size=10)
    assert reader.feed(b"\x01\x06abcdef") == []
    with pytest.raises(ws.FrameError) as info:
        reader.feed(b"\x80\x06ghijkl")
    assert info.value.code == ws.TOO_BIG


def test_close_frames_and_the_accept_key() -> None:
    [msg] = ws.FrameReader(masked=False).feed(ws.close_frame(4403, "40300 no"))
    assert ws.parse_close(msg.data) == (4403, "40300 no")
    assert ws.parse_close(b"") == (1005, "")
    with pytest.raises(ws.FrameError):
        ws.parse_close(b"\x03")
    # RFC 6455 section 1.3's example.
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert ws.valid_key(ws.new_key()) and not ws.valid_key("short") and not ws.valid_key(None)
