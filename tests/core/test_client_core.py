"""The client core on its own (effects in, effects out) and paired with a broker core in
the simulator. No sockets, no clock: every time here is virtual."""

from __future__ import annotations

import random
from typing import Any

import pytest

from rtkit.core import client_events as ev
from rtkit.core.client import ClientConfig, ClientCore
from rtkit.core.states import ChannelState, ConnectionState
from rtkit.core.timing import Backoff
from rtkit.errors import AuthError, CapabilityError, LimitExceeded, ProtocolError
from rtkit.sim import Simulation, check
from rtkit.sim.broker import WALL_START
from rtkit.sim.world import ROOT

S = ConnectionState


def core(**options: Any) -> ClientCore:
    config = ClientConfig(url="ws://test", key=ROOT.value, **options)
    return ClientCore(config, 0.0, random.Random(1), wall_offset=WALL_START)


def kinds(items: list[ev.Output]) -> list[str]:
    return [type(i).__name__ for i in items]


def connected_frame(ref: int = 1, **extra: Any) -> str:
    import json

    frame = {"action": "connected", "ref": ref, "connection_id": "c1", "connection_key": "c1!k",
             "client_id": None, "heartbeat_interval": 1000, "connection_state_ttl": 5000,
             "server_time": int((WALL_START + 30) * 1000),
             "limits": {"publish_rate": 100, "publish_burst": 10}, **extra}
    return json.dumps(frame)


def open_and_connect(c: ClientCore, now: float = 0.0) -> None:
    c.connect(now)
    c.link_opened(c.link_id, now)
    c.take()
    c.receive(connected_frame(), now)
    c.take()


def test_connect_asks_for_a_link_then_says_who_it_is() -> None:
    c = core(client_id="me")
    c.connect(0.0)
    out = c.take()
    assert kinds(out) == ["StateChanged", "OpenLink"]
    c.link_opened(c.link_id, 0.01)
    [send] = c.take()
    assert isinstance(send, ev.Send) and '"action":"connect"' in send.text
    assert '"client_id":"me"' in send.text and ROOT.value in send.text
    c.receive(connected_frame(), 0.02)
    out = c.take()
    assert c.state is S.CONNECTED
    assert any(isinstance(o, ev.Send) and '"heartbeat"' in o.text for o in out) or \
        c.next_deadline() == 0.02  # the first RTT probe goes out at once


def test_the_broker_clock_offset_is_measured_on_connect() -> None:
    c = core()
    open_and_connect(c, 0.0)
    assert c.session is not None
    assert abs(c.session.server_time_offset - 30.0) < 1e-6
    assert abs(c.credentials.broker_wall(0.0) - (WALL_START + 30)) < 1e-6


def test_stale_link_events_are_ignored() -> None:
    c = core()
    c.connect(0.0)
    first = c.link_id
    c.take()
    c.timer(10.0)  # the link did not open within connect_timeout: the attempt failed
    assert c.state is S.DISCONNECTED
    c.timer(11.0)
    assert c.state is S.CONNECTING and c.link_id != first
    c.link_opened(first, 11.1)  # the old link finally answers: ignored
    c.link_lost(first, ProtocolError("late"), 11.2)
    assert c.state is S.CONNECTING and not [o for o in c.take() if isinstance(o, ev.Send)]


def test_backoff_follows_the_seeded_random_source_and_its_cap() -> None:
    c = core(backoff=Backoff(base=0.5, cap=2.0))
    c.connect(0.0)
    now, waits = 0.0, []
    for _ in range(8):
        c.take()
        c.link_failed(c.link_id, ProtocolError("refused"), now)
        assert c.state is S.DISCONNECTED
        at = c.next_deadline()
        assert at is not None
        waits.append(at - now)
        now = at
        c.timer(now)
    rng = random.Random(1)
    expected = [Backoff(base=0.5, cap=2.0).delay(i, rng) for i in range(1, 9)]
    assert waits == pytest.approx(expected) and max(waits) <= 2.0


def test_silence_drops_the_link_but_a_stalled_loop_gets_a_grace() -> None:
    c = core(heartbeat_grace=0.5)
    open_and_connect(c, 0.0)
    c.timer(0.25)
    c.timer(0.5)
    # The driver was blocked for 5 s (a busy notebook cell): do not judge the link yet.
    c.timer(5.5)
    assert c.state is S.CONNECTED
    c.timer(5.6)  # still nothing heard: now the link is dead
    assert c.state is S.DISCONNECTED
    assert any(isinstance(o, ev.AbortLink) for o in c.take())


def test_publishes_are_encoded_at_once_bounded_in_bytes_and_paced() -> None:
    c = core(max_queued_bytes=4000)
    data = {"v": 1}
    c.connect(0.0)
    c.publish("ch", "n", data, "m1", 0.0)
    data["v"] = 2
    c.link_opened(c.link_id, 0.0)
    c.receive(connected_frame(), 0.0)  # pacing: rate 100/s * 0.9, burst 10 * 0.5
    sent = [o.text for o in c.take() if isinstance(o, ev.Send) and "publish" in o.text]
    assert sent and '"data":{"v":1}' in sent[0]
    for i in range(20):
        c.publish("ch", "n", {"i": i}, f"x{i}", 0.0)
    assert len([o for o in c.take() if isinstance(o, ev.Send)]) == 4  # the burst left
    now, sent_at = 0.0, []
    while c.outbox.unsent:
        at = c.next_deadline()
        assert at is not None
        now = at
        c.timer(now)
        sent_at += [now for o in c.take() if isinstance(o, ev.Send) and "publish" in o.text]
    # The other 16 follow at the paced rate (90/s): 1/90 s apart, in publish order.
    assert len(sent_at) == 16 and sent_at[-1] == pytest.approx(16 / 90, abs=0.02)
    try:
        c.publish("ch", "n", "x" * 5000, "big", 0.3)
    except LimitExceeded as exc:
        assert exc.code == 42905
    else:  # pragma: no cover
        raise AssertionError("the byte budget was not enforced")


def test_bad_publishes_are_refused_before_queuing() -> None:
    c = core()
    open_and_connect(c)
    for bad, code in (({"x": float("nan")}, 40003), ({"x": object()}, 40003),
                      ("\ud800", 40001)):
        try:
            c.publish("ch", "n", bad, "m", 0.0)
        except ProtocolError as exc:
            assert exc.code == code
        else:  # pragma: no cover
            raise AssertionError(f"{bad!r} was accepted")
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    try:
        c.publish("ch", "n", deep, "m", 0.0)
    except ProtocolError as exc:
        assert exc.code == 40003
    assert len(c.outbox) == 0


def test_a_token_is_fetched_when_needed_and_the_attempt_waits_for_it() -> None:
    config = ClientConfig(url="ws://test", renewable=True, auth_timeout=1.0)
    c = ClientCore(config, 0.0, random.Random(1), wall_offset=WALL_START)
    c.connect(0.0)
    [_, fetch] = c.take()
    assert isinstance(fetch, ev.FetchToken)
    c.timer(1.5)  # the callback hangs: the fetch times out, the attempt fails
    out = c.take()
    problems = [o.error for o in out if isinstance(o, ev.Problem)]
    assert problems and isinstance(problems[0], AuthError) and problems[0].code == 40170
    assert c.state is S.DISCONNECTED


def test_renew_token_without_a_callback_is_refused() -> None:
    c = core()
    try:
        c.renew_token(0.0)
    except AuthError as exc:
        assert exc.code == 40170
    else:  # pragma: no cover
        raise AssertionError("renewed without a callback")


# ---------------------------------------------------------------------- with the simulator


def test_subscribe_publish_deliver_in_the_simulator() -> None:
    sim = Simulation(seed=1, heartbeat_interval=1.0)
    a, b = sim.client("a", client_id="a"), sim.client("b")
    sim.run(0.1)
    b.subscribe("news")
    sim.run(0.1)
    for i in range(5):
        a.publish("news", {"i": i})
    assert sim.settle(10)
    [entry] = b.record.timeline["news"]
    assert [serial for _, serial, _ in entry.messages] == [1, 2, 3, 4, 5]
    assert check(sim) == []


def test_resume_after_drop_blackhole_refusal_and_restart() -> None:
    sim = Simulation(seed=2, heartbeat_interval=1.0, connection_state_ttl=10.0)
    a = sim.client("a", backoff=Backoff(base=0.2, cap=1.0), heartbeat_grace=0.5)
    b = sim.client("b", backoff=Backoff(base=0.2, cap=1.0), heartbeat_grace=0.5)
    sim.run(0.1)
    b.subscribe("s")
    sim.run(0.1)

    def burst() -> None:
        for i in range(10):
            a.publish("s", i)
            sim.run(0.05)

    burst()
    sim.network.drop()
    burst()
    sim.network.blackhole(3.0)
    burst()
    sim.run(3.0)
    sim.network.refuse(2.0)
    sim.network.drop()
    burst()
    sim.restart_broker(1.0)
    burst()
    sim.heal()
    assert sim.settle(60)
    assert check(sim) == []
    losses = [e.loss for e in b.record.timeline["s"] if e.loss is not None]
    assert len(losses) == 1 and "new epoch" in losses[0].reason  # only the restart


def test_a_narrowed_channel_fails_alone() -> None:
    sim = Simulation(seed=3, heartbeat_interval=1.0)
    c = sim.client("c", client_id="t", token_ttl=30.0)
    sim.run(0.2)
    c.subscribe("x")
    c.subscribe("y")
    sim.run(0.2)
    sim.narrow("t", {"x": ["*"]})
    c.renew()
    sim.run(0.5)
    assert c.core.channels["y"].state is ChannelState.FAILED
    assert isinstance(c.core.channels["y"].error, CapabilityError)
    sim.network.drop()
    assert sim.settle(20)
    assert c.core.channels["x"].state is ChannelState.ATTACHED
    assert [s.current for s in c.record.states].count(S.CONNECTED) == 2


def test_a_lagging_client_clock_renews_in_time() -> None:
    sim = Simulation(seed=4, heartbeat_interval=1.0)
    c = sim.client("late", client_id="late", token_ttl=3.0, clock_skew=-60.0)
    sim.run(20)
    assert c.state is S.CONNECTED
    assert not [p for p in c.record.problems if p.code == 40140]
    assert [s.current for s in c.record.states] == [S.CONNECTING, S.CONNECTED]
