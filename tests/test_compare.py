"""rtkit.compare without the network: the arithmetic, the tallies, the checks of input, and
that the MQTT packages are loaded only when used."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtkit import compare
from rtkit.compare import Bytes, Comparison, ProtocolResult, percentile
from rtkit.compare.streams import Tally


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200),
       st.sampled_from([0, 1, 25, 50, 90, 99, 99.9, 100]))
def test_percentile_agrees_with_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)),
                                                  rel=1e-9, abs=1e-6)


def test_percentile_of_known_values() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile(values, 99) == pytest.approx(4.96)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1, 100.5, math.nan])
def test_percentile_refuses_bad_input(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], q)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def result(protocol: str = "WebSocket", idle_seconds: float = 2.0) -> ProtocolResult:
    return ProtocolResult(protocol=protocol, sent=4, latencies=(0.001, 0.002, 0.003, 0.010),
                          connect=Bytes(100, 300), idle=Bytes(30, 70),
                          idle_seconds=idle_seconds, stream=Bytes(40, 760))


def test_a_result_in_milliseconds_and_bytes_per_message() -> None:
    r = result()
    assert r.received == 4
    assert r.p50_ms == pytest.approx(2.5)
    assert r.p99_ms == pytest.approx(9.79)
    assert r.bytes_per_message == 200.0  # (40 + 760) / 4, both ways
    assert r.idle_bytes_per_second == 50.0
    assert math.isnan(result(idle_seconds=0).idle_bytes_per_second)
    assert math.isnan(r.empty_poll_bytes)  # no polls: a push protocol
    polled = ProtocolResult("HTTP polling", 4, (0.05,) * 4, Bytes(), Bytes(300, 500), 1.0,
                            Bytes(600, 1400), idle_polls=4, stream_polls=5)
    assert polled.empty_poll_bytes == 200.0 and polled.bytes_per_message == 500.0
    assert Bytes(10, 20) - Bytes(4, 5) == Bytes(6, 15) and Bytes(6, 15).total == 21


def test_a_comparison_as_a_table() -> None:
    c = Comparison((result("SSE"), result("MQTT")), sent=4, rate=20.0, payload=50,
                   poll_every=0.1)
    assert c.protocols == ["SSE", "MQTT"] and c["MQTT"].protocol == "MQTT"
    with pytest.raises(KeyError):
        c["UDP"]
    frame = c.frame()
    assert list(frame.index) == ["SSE", "MQTT"]
    assert list(frame.columns) == ["p50_ms", "p99_ms", "bytes_per_message", "connect_bytes",
                                   "idle_bytes_per_s", "received"]
    assert frame.loc["SSE", "connect_bytes"] == 400 and frame.loc["MQTT", "received"] == 4


async def test_a_tally_counts_its_own_run_until_it_is_done() -> None:
    tally = Tally()
    tally.note({"run": "a", "sent": 1.0}, 2.0)  # before arm: nothing counts
    tally.arm("a", 2)
    for data in ({"run": "b", "sent": 1.0}, {"run": "a"}, {"run": "a", "sent": "1"}, [1], None):
        tally.note(data, 2.0)
    assert tally.latencies == [] and not tally.done.is_set()
    tally.note({"run": "a", "sent": 1.0}, 1.5)
    assert tally.latencies == [0.5] and not tally.done.is_set()
    tally.note({"run": "a", "sent": 2, "i": 1}, 2.25)
    assert tally.latencies == [0.5, 0.25] and tally.done.is_set()
    tally.arm("c", 1)  # a new run starts afresh
    assert tally.latencies == [] and not tally.done.is_set()
    tally.fail(ConnectionError("gone"))
    assert tally.done.is_set() and isinstance(tally.error, ConnectionError)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, "n must be at least 1"),
    ({"rate": 0}, "rate must be a positive"),
    ({"rate": math.inf}, "rate must be a positive"),
    ({"poll_every": -0.1}, "poll_every must be a positive"),
    ({"poll_every": math.nan}, "poll_every must be a positive"),
    ({"idle": -1}, "idle must be >= 0"),
    ({"qos": 3}, "qos must be 0, 1 or 2"),
    ({"protocols": ("WebSocket", "UDP")}, "protocols must be some of"),
    ({"protocols": ("SSE", "SSE")}, "protocols must be some of"),
    ({"protocols": ()}, "protocols must be some of"),
    ({"protocols": ("MQTT",)}, "give mqtt=rtkit.compare.mqtt_broker()"),
])
async def test_measure_refuses_bad_input_before_starting_anything(
        kwargs: dict[str, Any], message: str) -> None:
    before = {t.get_name() for t in asyncio.all_tasks()}
    with pytest.raises(ValueError, match=message):
        await compare.measure(None, **kwargs)  # type: ignore[arg-type]  # never reached
    assert {t.get_name() for t in asyncio.all_tasks()} == before


def test_importing_rtkit_compare_loads_no_mqtt_package() -> None:
    code = ("import sys, rtkit, rtkit.compare\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('iotcore', 'paho')]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_missing_mqtt_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "iotcore", None)  # import iotcore now fails
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'rtkit\[dev\]'"):
        compare.mqtt_broker()
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    with pytest.raises(ModuleNotFoundError, match="paho-mqtt is not installed"):
        compare.mqtt.MqttClient("x")
