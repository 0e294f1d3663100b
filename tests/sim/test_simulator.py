"""The simulator's own parts: the clock, the network's faults, reproducibility, the storm."""

from __future__ import annotations

import itertools

from rtkit.core.states import ConnectionState
from rtkit.core.timing import Backoff
from rtkit.sim import Clock, Simulation, check
from rtkit.sim.scenario import Runner, generate
from rtkit.sim.storm import reconnect_storm

S = ConnectionState
FAST = {"backoff": Backoff(base=0.2, cap=1.0), "heartbeat_grace": 0.5, "connect_timeout": 2.0}


def test_clock_runs_events_in_time_order_and_ties_in_scheduling_order() -> None:
    clock, seen = Clock(), []
    for name, at in (("b", 2.0), ("a", 1.0), ("c", 2.0), ("past", -5.0)):
        clock.at(at, lambda name=name: seen.append((clock.now, name)))
    assert clock.run_until(1.5) is False
    assert seen == [(0.0, "past"), (1.0, "a")] and clock.now == 1.5
    clock.run_until(10.0)
    assert seen[2:] == [(2.0, "b"), (2.0, "c")]


def test_a_blackhole_holds_frames_and_silence_is_noticed() -> None:
    sim = Simulation(seed=1, heartbeat_interval=1.0)
    c = sim.client("c", **FAST)
    sim.run(0.5)
    sim.network.blackhole(3.0)
    sim.run(2.0)
    assert c.state is not S.CONNECTED  # the heartbeats stopped: the link was dropped
    assert any("no heartbeat" in s.reason for s in c.record.states)
    sim.run(3.0)
    assert c.state is S.CONNECTED


def test_a_partition_swallows_new_links_until_the_connect_timeout() -> None:
    sim = Simulation(seed=2, heartbeat_interval=1.0)
    c = sim.client("c", **FAST)
    sim.run(0.5)
    sim.network.partition("c", 6.0)
    sim.network.drop("c")
    sim.run(5.0)
    reasons = [s.reason for s in c.record.states]
    assert any("did not open within 2 s" in r for r in reasons)
    sim.run(4.0)
    assert c.state is S.CONNECTED


def test_a_refusal_fails_attempts_at_once_and_backoff_stays_under_its_cap() -> None:
    sim = Simulation(seed=3, heartbeat_interval=1.0)
    c = sim.client("c", backoff=Backoff(base=0.5, cap=2.0))
    sim.run(0.5)
    sim.network.refuse(10.0)
    sim.network.drop()
    sim.run(10.0)
    attempts = [s.at for s in c.record.states if s.current is S.CONNECTING]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) >= 6 and max(gaps) <= 2.0 + 0.1
    sim.run(2.5)
    assert c.state is S.CONNECTED  # within the cap of the refusal's end


def test_the_same_seed_replays_the_same_run() -> None:
    def run(seed: int) -> tuple[int, float, list[int]]:
        runner = Runner(generate(seed))
        runner.play()
        serials = [serial for c in runner.sim.clients.values()
                   for entries in c.record.timeline.values() for e in entries
                   for _, serial, _ in e.messages]
        return runner.sim.clock.events, runner.sim.now, serials

    for seed in (11, 12, 13):
        assert run(seed) == run(seed)


def test_a_restart_is_announced_and_the_new_epoch_recovered() -> None:
    sim = Simulation(seed=4, heartbeat_interval=1.0)
    pub, sub = sim.client("pub", **FAST), sim.client("sub", **FAST)
    sim.run(0.2)
    sub.subscribe("news")
    sim.run(0.2)
    pub.publish("news", 1)
    sim.run(0.2)
    sim.restart_broker(1.0)
    for i in range(3):
        pub.publish("news", i)  # queued, sent to the new broker
    sim.run(0.5)
    assert sim.settle(30)
    assert check(sim) == []
    entries = sub.record.timeline["news"]
    assert [e.loss.reason for e in entries if e.loss] == ["the channel was recreated (new "
                                                          "epoch)"]
    new_epoch = [serial for e in entries if e.messages for epoch, serial, _ in e.messages
                 if epoch != entries[0].messages[0][0]]
    assert new_epoch == [1, 2, 3]


def test_jitter_spreads_the_reconnect_storm() -> None:
    jittered = reconnect_storm(500, backoff=Backoff(), seconds=8.0)
    plain = reconnect_storm(500, backoff=Backoff(jitter="none"), seconds=8.0)
    back = 4.0  # restart at 2 s, down for 2 s
    peak_j = jittered.timeline[jittered.timeline.index >= back]["accepted"].max()
    peak_p = plain.timeline[plain.timeline.index >= back]["accepted"].max()
    assert peak_p == 500 and peak_j < 250  # everyone at once, against a spread crowd
    assert jittered.recovered_after is not None and jittered.recovered_after <= 2.5
    assert plain.recovered_after is not None


def test_ten_thousand_clients_reconnect_after_a_restart() -> None:
    storm = reconnect_storm(10_000, seconds=7.0)
    assert storm.recovered_after is not None and storm.recovered_after <= 2.5
    assert storm.timeline["accepted"].sum() >= 20_000  # everyone joined, and came back
