"""rtkit.compare on loopback: four protocols measured on one stream, each at its own relay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import rtkit
from rtkit import compare
from rtkit.compare.streams import PollingReceiver
from tests.conftest import eventually, scaled, within

TOPIC = "compare"


@pytest.fixture(scope="module")
def mqtt() -> Iterator[compare.MqttBroker]:
    with compare.mqtt_broker() as broker:
        yield broker
    assert not broker.running


@pytest.fixture
def srv() -> Iterator[rtkit.Server]:
    with rtkit.serve() as server:  # default heartbeats (15 s): none during a short idle
        yield server


async def test_four_protocols_on_one_stream(srv: rtkit.Server, mqtt: compare.MqttBroker
                                            ) -> None:
    n = 20
    result = await within(compare.measure(srv, mqtt, n=n, rate=40, poll_every=0.2, idle=0.5,
                                          channel=TOPIC, timeout=scaled(5)), timeout=30)
    assert result.protocols == list(compare.PROTOCOLS)
    for r in result.results:
        assert r.received == n and all(0 < lat < scaled(2) for lat in r.latencies)
        assert r.connect.up > 0 and r.connect.down > 0, r.protocol  # handshakes counted
    poll, sse, ws, mq = (result[p] for p in compare.PROTOCOLS)
    # Polling waits for the next poll (0 to 200 ms); the others are told at once.
    assert poll.p50_ms > max(sse.p50_ms, ws.p50_ms, mq.p50_ms)
    # Idle: polling keeps asking (about 2-3 polls in 0.5 s); the others send nothing.
    assert poll.idle.up > 0 and poll.idle.down > 0
    assert sse.idle.total == ws.idle.total == mq.idle.total == 0
    assert poll.idle_polls >= 1 and poll.stream_polls >= 1
    assert 150 < poll.empty_poll_bytes < 1000  # a request and an empty page, with headers
    assert all(r.idle_polls == r.stream_polls == 0 for r in (sse, ws, mq))
    # The relay counts what is on the wire, exactly: with QoS 1, one 4-byte PUBACK per
    # message goes up; down, each PUBLISH is 2 + (2 + topic) + 2 (packet id) + payload.
    assert mq.stream.up == 4 * n
    payloads = mq.stream.down - n * (2 + 2 + len(TOPIC) + 2)
    assert abs(payloads / n - result.payload) <= 4  # the payload's length varies a little
    # Framing and headers: a WebSocket frame is a few bytes, an SSE event adds its
    # "id:"/"data:" lines; every rtkit message carries its envelope (id, serial, ...).
    assert mq.bytes_per_message < ws.bytes_per_message < sse.bytes_per_message
    assert poll.bytes_per_message > ws.bytes_per_message
    await eventually(lambda: srv.stats()["connections"] == 0, what="subscribers closed")
    assert srv.stats()["sse_sessions"] == 0
    assert mqtt.running


async def test_mqtt_at_qos_0_sends_nothing_back(srv: rtkit.Server, mqtt: compare.MqttBroker
                                                ) -> None:
    result = await within(compare.measure(srv, mqtt, n=10, rate=50, idle=0, qos=0,
                                          protocols=("MQTT", "WebSocket"), channel=TOPIC,
                                          timeout=scaled(5)), timeout=30)
    assert result.protocols == ["MQTT", "WebSocket"]
    assert result["MQTT"].stream.up == 0 and result["MQTT"].received == 10
    assert result["MQTT"].idle == compare.Bytes(0, 0)


async def test_a_protocol_that_misses_messages_times_out(srv: rtkit.Server) -> None:
    with pytest.raises(TimeoutError, match=r"HTTP polling: 0 of 3"):
        await within(compare.measure(srv, n=3, rate=100, poll_every=30, idle=0,
                                     protocols=("HTTP polling",), timeout=0.3), timeout=30)
    await eventually(lambda: srv.stats()["connections"] == 0, what="subscribers closed")


async def test_a_poller_that_is_refused_says_why(srv: rtkit.Server) -> None:
    poller = PollingReceiver(srv.url, "nobody:secret", "x", 0.1)
    try:
        with pytest.raises(RuntimeError, match="answered 401"):
            await within(poller.open())
    finally:
        await poller.close()
