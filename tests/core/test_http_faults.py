"""The fault proxy's HTTP faults, sans I/O: stripping Upgrade, buffering responses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtkit.core.faults import FaultPlan, ResponseBuffer, is_websocket_upgrade, strip_upgrade

UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, "
           b"Upgrade\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n")


def response(body: bytes, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"\r\n" + body


def test_strip_upgrade_keeps_the_rest_of_the_request() -> None:
    stripped = strip_upgrade(UPGRADE + b"trailing")
    assert not is_websocket_upgrade(stripped)
    assert b"Upgrade: websocket" not in stripped and b"Connection: keep-alive\r\n" in stripped
    assert b"Sec-WebSocket-Key: abc" in stripped and stripped.endswith(b"\r\n\r\ntrailing")
    only = strip_upgrade(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert only == b"GET / HTTP/1.1\r\n\r\n"
    assert strip_upgrade(b"GET / HTTP/1.1\r\nUpgr") == b"GET / HTTP/1.1\r\nUpgr"


def test_heal_clears_the_http_faults() -> None:
    plan = FaultPlan(strip_upgrade=True, buffering=("all", 10), idle_timeout=1.0)
    assert plan.describe(0.0)["buffering"] == "all:10"
    plan.heal()
    assert (plan.strip_upgrade, plan.buffering, plan.idle_timeout) == (False, None, None)


def test_a_buffering_proxy_holds_a_response_until_its_end_or_the_threshold() -> None:
    buf = ResponseBuffer("all", 1000)
    whole = response(b"x" * 10, b"Content-Length: 10")
    assert buf.feed(whole[:-5]) == b""
    assert buf.feed(whole[-5:]) == whole  # the end: released
    # A stream without a length: released in blocks of the threshold, the rest at the close.
    stream = response(b"", b"Content-Type: text/event-stream")
    assert buf.feed(stream + b"a" * 500) == b""
    out = buf.feed(b"b" * 600)
    assert out == stream + b"a" * 500 + b"b" * 600
    assert buf.feed(b"c" * 10) == b""
    assert buf.end() == b"c" * 10


def test_x_accel_buffering_no_passes_when_honoured() -> None:
    stream = response(b"event", b"X-Accel-Buffering: no")
    assert ResponseBuffer("all", 1000).feed(stream) == stream
    assert ResponseBuffer("all", 1000, honor_header=False).feed(stream) == b""
    # A proxy that only holds the start ignores the header; 2 KB of padding gets through.
    start = ResponseBuffer("start", 2048)
    assert start.feed(stream) == b""
    padded = b":" + b" " * 2046 + b"\n"
    assert start.feed(padded).endswith(padded)
    assert start.feed(b"data: 1\n\n") == b"data: 1\n\n"  # streaming from then on


def test_keep_alive_responses_and_upgrades() -> None:
    buf = ResponseBuffer("all", 10_000)
    two = response(b"ab", b"Content-Length: 2") + response(b"", status=b"204 No Content")
    assert buf.feed(two) == two
    switch = response(b"", b"Upgrade: websocket", status=b"101 Switching Protocols")
    assert buf.feed(switch + b"\x81\x01a") == switch + b"\x81\x01a"
    assert buf.feed(b"frames") == b"frames"  # a tunnel from then on
    with pytest.raises(ValueError):
        ResponseBuffer("some", 1)


@given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=30),
       st.sampled_from(["all", "start"]), st.integers(min_value=1, max_value=3000))
def test_buffering_never_loses_reorders_or_invents_bytes(cuts: list[int], mode: str,
                                                         size: int) -> None:
    data = (response(b"0123456789", b"Content-Length: 10")
            + response(b"stream " * 300, b"Content-Type: text/event-stream"))
    buf = ResponseBuffer(mode, size)
    out, i = [], 0
    for n in cuts:
        out.append(buf.feed(data[i:i + n]))
        i += n
    out.append(buf.feed(data[i:]))
    out.append(buf.end())
    assert b"".join(out) == data
