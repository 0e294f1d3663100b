"""Review of issue 8 (client protocol in the sans-I/O core, simulator): failing tests, one per
defect found. Each docstring names the root cause. Simulator and core only: no sockets."""

from __future__ import annotations

import json
import random
from typing import Any

from rtkit.core import client_events as ev
from rtkit.core.client import ClientConfig, ClientCore
from rtkit.core.continuity import ContinuityLoss
from rtkit.core.credentials import Credentials
from rtkit.core.states import ChannelState, ConnectionState
from rtkit.core.timing import Backoff
from rtkit.core.tokens import ApiKey, issue_token
from rtkit.errors import CapabilityError
from rtkit.sim import Simulation, check
from rtkit.sim.broker import WALL_START
from rtkit.sim.scenario import Scenario, Step, run
from rtkit.sim.world import ROOT

S = ConnectionState
FAST: dict[str, Any] = {"backoff": Backoff(base=0.2, cap=1.0), "heartbeat_grace": 0.5,
                        "connect_timeout": 2.0}


# ------------------------------------------------------------------ helpers (core alone)


def _core() -> ClientCore:
    config = ClientConfig(url="ws://test", key=ROOT.value, request_timeout=30.0)
    return ClientCore(config, 0.0, random.Random(1), wall_offset=WALL_START)


def _sent(out: list[ev.Output]) -> list[dict[str, Any]]:
    return [json.loads(o.text) for o in out if isinstance(o, ev.Send)]


def _connected(c: ClientCore) -> None:
    c.connect(0.0)
    c.link_opened(c.link_id, 0.0)
    [connect] = _sent(c.take())
    c.receive(json.dumps({
        "action": "connected", "ref": connect["ref"], "connection_id": "c1",
        "connection_key": "c1!k", "client_id": None, "heartbeat_interval": 1000,
        "connection_state_ttl": 5000, "server_time": int(WALL_START * 1000),
        "limits": {}}), 0.0)
    c.take()


# --------------------------------------------------------------------------- state machine


def test_swarm_seed_52820_refusal_after_unsolicited_detach_does_not_crash() -> None:
    """Swarm seed 52820 (RTKIT_SIM_SEED=50000): a renewal narrows channel ``a`` while a
    rewind attach for ``a`` is in flight. The broker detaches ``a`` (unsolicited, with the
    error): ``on_detached`` clears ``inflight`` and fails the channel. Then the broker's
    refusal of the rewind attach arrives: ``on_refused`` ignores that its ref is no longer
    in flight, falls back to kind FRESH and fails the channel again: REFUSED from FAILED ->
    InvalidTransition, raised out of ``ClientCore.receive`` (in the asyncio driver: out of
    ``data_received``, so the transport is torn down)."""
    violations = run(Scenario(52820, 4, (False, True, False, True), 20, (
        Step(1.31, "sub", 1, "a", 0),
        Step(1.17, "blackhole", 2, "b", 0.92),
        Step(0.44, "narrow", 1, "a", 0),
        Step(0.02, "sub", 1, "a", 2),
    )))
    assert violations == []


def test_a_late_refusal_of_an_old_attach_does_not_fail_the_new_one() -> None:
    """``ChannelCore.on_refused`` acts on any refusal, even one whose ref is not the request
    in flight: it clears ``inflight`` and fails the channel. Here an old attach (ref r1) is
    refused after the application subscribed again (attach r2 in flight): the channel goes
    FAILED, and the broker's 'attached' for r2 is then ignored (``inflight`` is None), so
    the broker delivers to a client that drops everything."""
    c = _core()
    _connected(c)
    c.subscribe("x", 0.0)
    [attach1] = _sent(c.take())
    # The broker detaches x on its own (say, a capability narrowed) before answering r1.
    c.receive(json.dumps({"action": "detached", "channel": "x",
                          "error": {"code": 40300, "message": "not permitted"}}), 0.1)
    assert c.channels["x"].state is ChannelState.FAILED
    c.take()
    c.subscribe("x", 0.2)  # the application asks again (the capability came back)
    [attach2] = _sent(c.take())
    assert attach2["ref"] != attach1["ref"]
    # The answer to the first attach, a refusal, arrives only now ...
    c.receive(json.dumps({"action": "error", "ref": attach1["ref"],
                          "error": {"code": 40300, "message": "not permitted"}}), 0.3)
    # ... and the second attach succeeds.
    c.receive(json.dumps({"action": "attached", "ref": attach2["ref"], "channel": "x",
                          "serial": 0, "epoch": "e1"}), 0.4)
    assert c.channels["x"].state is ChannelState.ATTACHED


def test_close_right_after_unsubscribe_does_not_crash_on_the_detach_reply() -> None:
    """``await ch.unsubscribe(); await client.close()`` -- the most ordinary goodbye.
    ``close()`` runs ``requests.fail_all``, which forgets the pending 'detach' request; the
    broker's 'detached' reply then arrives with a ref the core no longer holds, so
    ``Input._dispatch`` takes it for an *unsolicited* detach and calls
    ``on_detached(None, solicited=False)`` -> ``_fail`` -> REFUSED from DETACHED:
    InvalidTransition. With the asyncio driver this is "Fatal error:
    protocol.data_received() call failed" and the close handshake is cut short (the
    broker's 'closed', and acks before it, are never read)."""
    c = _core()
    _connected(c)
    sub_id, _ = c.subscribe("x", 0.0)
    [attach] = _sent(c.take())
    c.receive(json.dumps({"action": "attached", "ref": attach["ref"], "channel": "x",
                          "serial": 0, "epoch": "e1"}), 0.01)
    c.unsubscribe("x", sub_id, 0.02)
    [detach] = _sent(c.take())
    assert detach["action"] == "detach"
    c.close(0.03)
    c.take()
    c.receive(json.dumps({"action": "detached", "ref": detach["ref"], "channel": "x"}), 0.04)


def test_attach_with_rewind_on_an_attached_channel_completes() -> None:
    """``ChannelCore.attach`` completes at once only when ``not rewind``; with a rewind on
    an attached channel it queues a waiter that no request will ever satisfy (reconcile
    has nothing to send), so ``await channel.attach(rewind=3)`` hangs for request_timeout
    and raises RequestTimeout, although the channel is attached."""
    c = _core()
    _connected(c)
    c.attach("x", 0.0)
    [attach] = _sent(c.take())
    c.receive(json.dumps({"action": "attached", "ref": attach["ref"], "channel": "x",
                          "serial": 4, "epoch": "e1"}), 0.01)
    c.take()
    op = c.attach("x", 0.02, rewind=3)
    out = c.take()
    out += [o for t in (1.0, 10.0, 40.0) for o in (c.timer(t), c.take())[1]]
    outcomes = [o for o in out if isinstance(o, ev.OpDone | ev.OpFailed) and o.op == op]
    assert outcomes and isinstance(outcomes[0], ev.OpDone), outcomes


def test_unsubscribing_a_recovered_channel_detaches_it() -> None:
    """A client made with ``recover=`` marks every recovered channel ``explicit`` (as if
    ``attach()`` had been called): once the application's subscriptions on it are gone the
    channel still stays attached, receiving messages for nobody, on every reconnect."""
    from rtkit.core.recovery import RecoveryKey

    config = ClientConfig(url="ws://test", key=ROOT.value)
    key = RecoveryKey("c0!k", {"x": (3, "e1")}).encode()
    c = ClientCore(config, 0.0, random.Random(1), RecoveryKey.decode(key),
                   wall_offset=WALL_START)
    sub_id, _ = c.subscribe("x", 0.0, wait=False)
    c.unsubscribe("x", sub_id, 0.0)
    assert not c.channels["x"].wanted


def test_a_suspended_client_retries_at_the_suspended_interval() -> None:
    """Once suspended, the client must retry every ``suspended_retry_interval`` (README:
    15 s; timing.Backoff: "the suspended state's slower retry ... is what spares a broker
    that stays away"). Each failed attempt from suspended goes CONNECTING -> DISCONNECTED,
    ``_after_failure`` plans a backoff retry (<= cap, 2 s) and ``Schedule.suspend`` keeps
    ``min(retry_at, now + delay)``: the backoff one. Result: a retry every ~1 s forever,
    and the state flaps suspended -> connecting -> disconnected -> suspended."""
    sim = Simulation(seed=5, heartbeat_interval=1.0, connection_state_ttl=5.0)
    c = sim.client("c", backoff=Backoff(base=0.5, cap=2.0), suspended_retry_interval=15.0)
    sim.run(0.5)
    sim.network.refuse(100.0)
    sim.network.drop()
    sim.run(100.0)
    attempts = [s.at for s in c.record.states if s.current is S.CONNECTING and s.at > 20]
    # 80 s while suspended, one attempt per 7.5-15 s: at most ~11.
    assert len(attempts) <= 12, f"{len(attempts)} attempts in 80 s while suspended"


# ------------------------------------------------------------------------------- tokens


def test_a_client_clock_ahead_of_the_broker_still_connects() -> None:
    """A client whose clock is 25 s ahead, with 30 s tokens: every fresh token looks due
    for renewal (renewal at expiry - 10 s), so ``credentials_for_connect`` returns None at
    ``link_opened``; the core aborts the link with TokenExpired, ``_after_failure`` marks
    the token rejected and sets ``retry_now``: fetch, open, abort, with no backoff, forever
    (about 50 links and 50 auth_callback calls a second). The broker's ``server_time``,
    which would correct the clock, is only learnt from a ``connected`` that never comes."""
    sim = Simulation(seed=4, heartbeat_interval=1.0)
    c = sim.client("fast", client_id="fast", token_ttl=30.0, clock_skew=+25.0)
    sim.run(10.0)
    assert c.state is S.CONNECTED
    assert sim.network.connects <= 3 and c.core.credentials.renewals <= 3


def test_a_token_service_lagging_the_broker_does_not_spin_the_client() -> None:
    """The same root cause without any client skew: the token service's clock lags the
    broker's by 25 s (tokens of 30 s), so each token it issues is already 'due' by the
    broker's clock. The client never connects and calls auth_callback in a tight loop."""
    sim = Simulation(seed=4, heartbeat_interval=1.0)
    real_issue = sim.issue_token

    def lagging(client_id: str | None, ttl: float) -> str:
        sim.clock.now -= 25.0
        try:
            return real_issue(client_id, ttl)
        finally:
            sim.clock.now += 25.0

    sim.issue_token = lagging  # type: ignore[method-assign]
    c = sim.client("c", client_id="c", token_ttl=30.0)
    sim.run(10.0)
    assert c.state is S.CONNECTED
    # Each token has 5 s of life left: renewed about every 3.3 s, not in a loop.
    assert c.core.credentials.renewals <= 5, f"{c.core.credentials.renewals} tokens in 10 s"


def test_a_fresh_token_outlived_by_failed_attempts_is_not_presented() -> None:
    """A fresh token is presented as it is (the broker judges it) only while some of its
    lifetime is left by our own clock: a 1 s token fetched during a refusal and kept through
    failed attempts past its expiry is replaced before connecting, not refused."""
    key = ApiKey.generate()
    creds = Credentials(None, None, True, 5.0, Backoff(), random.Random(1))
    fetch = creds.start_fetch("a token is needed to connect", 100.0)
    assert fetch is not None
    # The issuer's clock is 40 s off ours: only the lifetime counts.
    assert creds.obtained(fetch.id, issue_token(key, now=WALL_START - 40, ttl=1.0),
                          100.0) is None
    assert creds.credentials_for_connect(100.5) == {"token": creds.token}
    assert creds.credentials_for_connect(100.9) is None  # fetch a new one instead
    fetch = creds.start_fetch("a token is needed to connect", 100.9)
    assert fetch is not None
    creds.obtained(fetch.id, issue_token(key, now=WALL_START - 40, ttl=1.0), 100.9)
    assert creds.credentials_for_connect(101.0) == {"token": creds.token}


# --------------------------------------------------------------------------- continuity


def test_a_message_seen_in_an_old_epoch_is_not_reported_lost_in_the_new_one() -> None:
    """The broker restarts after a message reached the subscriber but before its ack
    reached the publisher; the publisher resends it (same id) to the new broker, where it
    becomes serial 1 of the new epoch. The subscriber's Tracker drops it as a duplicate by
    id *without advancing its serial*, so serial 2 is a 'gap'; the repair replays serial 1,
    dropped again, and ``_gap`` (``repair_from == tracker.serial``) declares serial 1 LOST:
    a ContinuityLoss for a message the application received. rtkit.sim.check() passes it."""
    sim = Simulation(seed=5, heartbeat_interval=1.0)
    pub, sub = sim.client("pub", **FAST), sim.client("sub", **FAST)
    sim.run(0.2)
    sub.subscribe("x")
    sim.run(0.2)
    pub.publish("x", "first")
    sim.run(0.007)  # the broker has it; its ack is on the way back
    sim.network.partition("pub", 1.0)  # the ack is held ...
    sim.run(0.05)  # ... while the subscriber receives the message
    sim.restart_broker(0.5)  # ... and dies with the broker
    sim.run(3.0)
    pub.publish("x", "second")
    sim.heal()
    assert sim.settle(30)
    assert check(sim) == []
    losses = [e.loss for e in sub.record.timeline["x"] if e.loss is not None]
    assert [loss.reason for loss in losses] == ["the channel was recreated (new epoch)"], losses


def test_a_resume_beyond_history_says_which_messages_were_lost() -> None:
    """docs/protocol.md documents ``attached.lost_to`` and the issue asks that a loss
    name the lost messages precisely, but the broker (channel_ops._on_attach) never sends
    ``lost_to``: the ContinuityLoss says 'from serial 1, every later message' although the
    broker knows exactly that 1..15 are gone and 16..20 follow."""
    sim = Simulation(seed=6, heartbeat_interval=1.0, max_channel_history_bytes=2500)
    pub, sub = sim.client("pub", **FAST), sim.client("sub", **FAST)
    sim.run(0.2)
    sub.subscribe("x")
    sim.run(0.2)
    sim.network.partition("sub", 3.0)
    sim.network.drop("sub")
    for i in range(20):
        pub.publish("x", i)
        sim.run(0.01)
    assert sim.settle(30)
    [loss] = [e.loss for e in sub.record.timeline["x"] if e.loss is not None]
    assert (loss.first_lost, loss.last_lost) == (1, 15)


def test_continuity_spans_the_ttl_not_history_size() -> None:
    """Issue 8, 'Continuity window by time': a client back within connection_state_ttl
    resumes with nothing lost (default settings). The broker still keeps a fixed count of
    messages (BrokerConfig.history_size=1000, a deque(maxlen=...)); there is no time window
    and no byte budget (nothing in server.stats()). A subscriber away for 3 s from a
    1,000 msg/s channel loses about 2,000 messages. (The real-socket regression test
    tests/aio/test_continuity_regressions.py::test_continuity_is_not_bounded_by_a_message_count
    fails on this branch for the same reason.)"""
    sim = Simulation(seed=7)  # default broker options
    pub, sub = sim.client("pub", **FAST), sim.client("sub", **FAST)
    sim.run(0.5)
    sub.subscribe("busy")
    sim.run(0.5)
    sim.network.partition("sub", 3.0)
    sim.network.drop("sub")
    for _ in range(4000):  # 1,000 msg/s for 4 s
        pub.publish("busy", {"p": "x" * 150})
        sim.run(0.001)
    assert sim.settle(60)
    assert check(sim) == []
    losses = [e.loss for e in sub.record.timeline["busy"] if e.loss is not None]
    assert losses == []


# ------------------------------------------------------------------------------ publishing


def test_a_rate_limited_publish_keeps_its_place() -> None:
    """Publishes are documented as sent and entered 'in order'. When network jitter bunches
    paced sends so that the broker's bucket runs dry, it nacks one with 42900;
    ``Outbox.retry`` queues that one again, but the publishes after it are already on the
    wire and take earlier serials: one publisher's messages enter the channel out of
    publish order. The checker does not look at per-publisher order, and the generator runs
    with publish_rate=10,000, so this never shows up in the swarm."""
    sim = Simulation(seed=10, heartbeat_interval=1.0, publish_rate=50, publish_burst=5)
    pub = sim.client("pub", **FAST)
    sim.run(0.5)
    sim.network.faults.jitter = 0.3
    ids = [pub.publish("x", i) for i in range(100)]
    sim.run(1.0)
    sim.heal()
    assert sim.settle(60)
    serials = [pub.record.published[i].serial for i in ids if i is not None]
    assert len(serials) == 100 and serials == sorted(serials), serials[:40]


# ---------------------------------------------------------------------------------- checker


def test_checker_flags_a_loss_naming_messages_that_were_delivered() -> None:
    """rtkit.sim.check never validates a reported loss: a client that announces the loss of
    messages it actually delivered (or announces losses for no reason at all) passes. That
    is how the spurious loss above goes unnoticed by 10,000 scenarios."""
    sim = Simulation(seed=8, heartbeat_interval=1.0)
    pub, sub = sim.client("pub", **FAST), sim.client("sub", **FAST)
    sim.run(0.2)
    sub.subscribe("x")
    sim.run(0.2)
    for i in range(5):
        pub.publish("x", i)
    assert sim.settle(10)
    ch = sub.core.channels["x"]
    ch.report(ContinuityLoss("x", 2, 1, "bogus", sim.now, 4, ch.tracker.epoch))
    sub._pump()
    assert check(sim) != []


def test_checker_flags_a_channel_failed_without_a_refusal() -> None:
    """A channel in ``failed`` exempts all its subscriptions from the completeness check
    (check(): ``gone = ... sub.channel in c.record.failed_channels``), whatever the cause.
    A bug that fails a channel the broker never refused (like the stale-refusal one above)
    hides every message it then drops."""
    sim = Simulation(seed=9, heartbeat_interval=1.0)
    pub, sub = sim.client("pub", **FAST), sim.client("sub", **FAST)
    sim.run(0.2)
    sub.subscribe("x")
    sim.run(0.2)
    sub.core.channels["x"]._fail(CapabilityError("invented by a bug", code=40300))
    sub._pump()
    for i in range(5):
        pub.publish("x", i)
    assert sim.settle(10)
    assert check(sim) != []


def test_checker_flags_a_replayed_message_dropped_after_a_loss() -> None:
    """After a resume that fell short, a loss with no ``last_lost`` (the broker never sends
    lost_to) 'covers' every serial up to the first one delivered afterwards. A client that
    then silently drops replayed messages the broker still had passes the check, because
    the checker takes the client's word for where the loss ended instead of the broker's
    history (which the simulator knows)."""
    sim = Simulation(seed=11, heartbeat_interval=1.0, max_channel_history_bytes=2500)
    pub, sub = sim.client("pub", **FAST), sim.client("sub", **FAST)
    sim.run(0.2)
    sub.subscribe("x")
    sim.run(0.2)
    sim.network.partition("sub", 3.0)
    sim.network.drop("sub")
    for i in range(20):
        pub.publish("x", i)
        sim.run(0.01)
    ch = sub.core.channels["x"]
    deliver = ch.deliver

    def buggy(messages: Any, now: float) -> None:  # a client bug: drops serial 16
        deliver([m for m in messages if m.serial != 16], now)

    ch.deliver = buggy  # type: ignore[method-assign]
    assert sim.settle(30)
    got = [s for e in sub.record.timeline["x"] for _, s, _ in e.messages]
    assert 16 not in got and 17 in got  # the broker replayed 16..20; 16 was dropped
    assert check(sim) != []
