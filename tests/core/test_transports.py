"""Transport selection, sans I/O: the picker alone, the client core's effects, and the real
cores in the simulator with WebSockets blocked."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from rtkit.core import client_events as ev
from rtkit.core.client import ClientConfig, ClientCore
from rtkit.core.states import ConnectionState
from rtkit.core.timing import Backoff
from rtkit.core.transports import TransportPicker, check_transports
from rtkit.errors import ConnectionFailed, Disconnected, RequestTimeout, error
from rtkit.sim import Simulation, check
from rtkit.sim.broker import WALL_START
from rtkit.sim.world import ROOT
from tests.core.test_client_core import connected_frame

S = ConnectionState
REFUSED = ConnectionFailed("the broker refused the WebSocket upgrade (HTTP 403)", code=80004)
FAST = {"backoff": Backoff(base=0.2, cap=1.0), "heartbeat_grace": 0.5, "connect_timeout": 2.0,
        "transport_retry_interval": 3.0}


def core(**options: Any) -> ClientCore:
    config = ClientConfig(url="ws://test", key=ROOT.value, **options)
    return ClientCore(config, 0.0, random.Random(1), wall_offset=WALL_START)


def opened(c: ClientCore) -> list[ev.OpenLink]:
    return [o for o in c.take() if isinstance(o, ev.OpenLink)]


def answer_connect(c: ClientCore, now: float) -> None:
    """Open the link asked for and answer its connect frame (whatever its ref)."""
    c.link_opened(c.link_id, now)
    [send] = [o for o in c.take() if isinstance(o, ev.Send)]
    ref = json.loads(send.text)["ref"]
    c.receive(connected_frame(ref=ref), now)
    assert c.state is S.CONNECTED


def test_transport_lists_are_checked() -> None:
    assert check_transports("sse") == ("sse",)
    assert check_transports(["websocket", "sse"]) == ("websocket", "sse")
    for bad in ((), ("websocket", "websocket"), ("polling",)):
        with pytest.raises(ValueError):
            check_transports(bad)
    with pytest.raises(ValueError):
        TransportPicker(retry_interval=0)


def test_a_refusal_or_a_timeout_falls_back_at_once_other_failures_after_n() -> None:
    p = TransportPicker()
    assert p.attempt_failed("websocket", REFUSED) == "websocket refused: trying sse"
    assert p.current == "sse"
    p = TransportPicker()
    assert p.attempt_failed("websocket", RequestTimeout("no", code=40801)) is not None
    p = TransportPicker(fallback_after=3)
    reset = ConnectionFailed("connection reset")
    # A host that cannot be reached at all: no transport would do better.
    assert {p.attempt_failed("websocket", reset, opened=False) for _ in range(5)} == {None}
    # A link that opened and broke before 'connected', three times: the next transport.
    assert [p.attempt_failed("websocket", reset) for _ in range(2)] == [None, None]
    assert p.attempt_failed("websocket", reset) == "websocket failed 3 times in a row: " \
                                                   "trying sse"
    # The broker's own refusals say nothing about the transport.
    p = TransportPicker(fallback_after=1)
    for code in (42911, 42912, 40301, 40101, 40140, 50001):
        assert p.attempt_failed("websocket", error(code)) is None
    assert p.current == "websocket"
    # A fallback that keeps failing gives way to the next transport (wrapping around).
    p = TransportPicker(fallback_after=2)
    p.attempt_failed("websocket", REFUSED)
    p.attempt_failed("sse", reset)
    assert p.attempt_failed("sse", reset) is not None and p.current == "websocket"
    # One transport: nothing to fall back to.
    p = TransportPicker(("sse",))
    assert p.attempt_failed("sse", reset) is None and p.current == "sse"


def test_probes_run_only_on_a_fallback_and_every_interval() -> None:
    p = TransportPicker(retry_interval=5.0)
    p.connected("websocket", 0.0)
    assert p.deadline() is None and not p.probe_due(100.0)
    p.attempt_failed("websocket", REFUSED)
    p.connected("sse", 10.0)
    assert p.deadline() == 15.0 and not p.probe_due(14.9)
    assert p.probe_due(15.0) and not p.probe_due(15.1)  # one at a time
    assert p.probe_result(False, 15.2) is False and p.deadline() == 20.2
    assert p.probe_due(20.2) and p.probe_result(True, 20.3) is True
    assert p.current == "websocket" and p.deadline() is None
    p.reset()
    assert p.current == "websocket"


def test_the_core_falls_back_moves_back_and_shows_it_in_the_state_history() -> None:
    c = core(transport_retry_interval=5.0)
    c.connect(0.0)
    [link] = opened(c)
    assert link.transport == "websocket" and c.link_transport == "websocket"
    c.link_failed(c.link_id, REFUSED, 0.01)
    c.timer(0.01)  # retried at once, over SSE: no backoff for a known cause
    [link] = opened(c)
    assert link.transport == "sse"
    c.link_opened(c.link_id, 0.02)
    c.receive(connected_frame(), 0.03)
    c.take()
    assert c.state is S.CONNECTED
    history = c.machine.history
    assert "websocket refused: trying sse" in history[1].reason
    assert history[1].transport == "websocket" and history[2].transport == "sse"
    assert history[-1].transport == "sse" and "over sse" in history[-1].reason
    # Connected over the fallback: the preferred transport is probed every interval.
    assert c.next_deadline() is not None and c.next_deadline() <= 5.03
    c.timer(5.03)
    probes = [o for o in c.take() if isinstance(o, ev.Probe)]
    assert probes == [ev.Probe("ws://test", "websocket")]
    c.probe_done(False, 5.05)
    assert c.state is S.CONNECTED and not any(isinstance(o, ev.AbortLink) for o in c.take())
    c.receive('{"action":"heartbeat"}', 9.0)
    c.timer(10.05)
    assert any(isinstance(o, ev.Probe) for o in c.take())
    c.probe_done(True, 10.06)
    out = c.take()
    assert any(isinstance(o, ev.AbortLink) for o in out)
    assert c.state is S.DISCONNECTED
    assert "moving back to websocket" in c.machine.history[-1].reason
    c.timer(10.06)
    [link] = opened(c)
    assert link.transport == "websocket"
    c.link_opened(c.link_id, 10.07)
    sent = [o.text for o in c.take() if isinstance(o, ev.Send)]
    assert '"resume":"c1!k"' in sent[0]  # the move is an ordinary resume


def test_a_drop_keeps_the_transport_and_reconnect_starts_from_the_preferred() -> None:
    c = core()
    c.connect(0.0)
    opened(c)
    c.link_failed(c.link_id, REFUSED, 0.01)
    c.timer(0.01)
    opened(c)
    answer_connect(c, 0.02)
    c.link_lost(c.link_id, Disconnected("dropped"), 1.0)
    c.timer(5.0)
    assert [o.transport for o in opened(c)] == ["sse"]
    answer_connect(c, 5.01)
    c.reconnect(6.0)
    c.timer(6.0)
    assert [o.transport for o in opened(c)] == ["websocket"]


def test_in_the_simulator_a_blocked_websocket_costs_nothing() -> None:
    sim = Simulation(seed=5, heartbeat_interval=1.0)
    sim.network.block_websockets(8.0)
    pub, sub = sim.client("pub", **FAST), sim.client("sub", **FAST)
    sim.run(0.5)
    assert pub.state is S.CONNECTED and pub.transport == "sse"
    sub.subscribe("t")
    sim.run(0.2)
    for i in range(30):
        pub.publish("t", i)
        sim.run(0.2)
        if i == 10:
            sim.network.drop()
    assert sim.network.blocked >= 2
    sim.run(6.0)  # the block ended at 8 s: the next probe finds it gone
    assert pub.transport == "websocket" and sub.transport == "websocket"
    assert sim.settle(30)
    assert check(sim) == []
    got = [m for e in sub.record.timeline["t"] for m in e.messages]
    assert len(got) == 30
