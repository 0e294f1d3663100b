"""Continuity under random interleavings of operations and faults, in the simulator.

* A seeded swarm: at least 10,000 generated scenarios per run (two worker processes),
  each with a safety phase (faults) and a liveness phase (faults healed, everything must
  settle), checked by :func:`rtkit.sim.check`. A failure prints its seed and a minimal
  reproducer. ``RTKIT_SIM_SEED`` and ``RTKIT_SIM_SCENARIOS`` explore other seeds.
* A hypothesis state machine over the same operations, which shrinks what it finds.
"""

from __future__ import annotations

import multiprocessing
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from rtkit.core.states import CHANNEL_TRANSITIONS, TRANSITIONS, ConnectionState
from rtkit.sim import Simulation, check
from rtkit.sim.scenario import (
    BROKER,
    CHANNELS,
    CLIENT,
    Runner,
    generate,
    reproducer,
    run,
    shrink,
)

SCENARIOS = int(os.environ.get("RTKIT_SIM_SCENARIOS", "10000"))
BASE_SEED = int(os.environ.get("RTKIT_SIM_SEED", "0"))
S = ConnectionState


def _run_range(bounds: tuple[int, int]) -> list[tuple[int, list[str]]]:
    failing = []
    for seed in range(*bounds):
        try:
            violations = [str(v) for v in run(generate(seed))]
        except Exception as exc:  # a crash is a failure, reported with its seed
            violations = [f"crash: {exc!r}"]
        if violations:
            failing.append((seed, violations[:5]))
    return failing


def test_ten_thousand_scenarios_keep_continuity() -> None:
    workers = min(2, os.cpu_count() or 1)
    step = -(-SCENARIOS // workers)
    ranges = [(BASE_SEED + i * step, BASE_SEED + min(SCENARIOS, (i + 1) * step))
              for i in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        failing = [f for part in pool.map(_run_range, ranges) for f in part]
    if failing:
        seed, violations = failing[0]
        minimal = shrink(generate(seed))
        raise AssertionError(
            f"{len(failing)} of {SCENARIOS} scenarios failed; first: seed {seed}:\n  "
            + "\n  ".join(violations) + "\nminimal reproducer:\n" + reproducer(minimal))


def test_every_state_change_is_in_the_transition_tables() -> None:
    """Scenarios run through the real state machines, which raise on any transition not
    in the tables; spot-check that the record agrees."""
    for seed in range(BASE_SEED, BASE_SEED + 50):
        runner = Runner(generate(seed))
        runner.play()
        for client in runner.sim.clients.values():
            for change in client.record.states:
                assert TRANSITIONS[change.previous][change.trigger] is change.current
    assert CHANNEL_TRANSITIONS  # the channel table is applied by ChannelCore the same way


class Continuity(RuleBasedStateMachine):
    """Random operations and faults on three clients; continuity checked at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.sim = Simulation(0, **BROKER)
        self.clients = [self.sim.client(f"c{i}", client_id=f"id{i}",
                                        token_ttl=4.0 if i == 2 else None, **CLIENT)
                        for i in range(3)]

    @initialize(seed=st.integers(0, 2**32))
    def seed(self, seed: int) -> None:
        self.sim.rng.seed(seed)
        self.sim.network.rng.seed(seed)

    @rule(c=st.integers(0, 2), ch=st.sampled_from(CHANNELS), rewind=st.sampled_from([0, 3]))
    def subscribe(self, c: int, ch: str, rewind: int) -> None:
        self.clients[c].subscribe(ch, rewind=rewind or None)

    @rule(c=st.integers(0, 2), i=st.integers(0, 10))
    def unsubscribe(self, c: int, i: int) -> None:
        live = [s for s in self.clients[c].record.subs.values() if s.removed_at is None]
        if live:
            self.clients[c].unsubscribe(live[i % len(live)].id)

    @rule(c=st.integers(0, 2), ch=st.sampled_from(CHANNELS), n=st.integers(1, 5))
    def publish(self, c: int, ch: str, n: int) -> None:
        for k in range(n):
            self.clients[c].publish(ch, {"k": k})

    @rule(dt=st.floats(0.0, 3.0))
    def wait(self, dt: float) -> None:
        self.sim.run(dt)

    @rule(c=st.none() | st.integers(0, 2))
    def drop(self, c: int | None) -> None:
        self.sim.network.drop(None if c is None else self.clients[c].name)

    @rule(seconds=st.floats(0.2, 4.0))
    def blackhole(self, seconds: float) -> None:
        self.sim.network.blackhole(seconds)

    @rule(seconds=st.floats(0.2, 4.0))
    def refuse(self, seconds: float) -> None:
        self.sim.network.refuse(seconds)
        self.sim.network.drop()

    @rule(c=st.integers(0, 2), seconds=st.floats(0.2, 4.0))
    def partition(self, c: int, seconds: float) -> None:
        self.sim.network.partition(self.clients[c].name, seconds)

    @rule(down=st.floats(0.1, 2.0))
    def restart(self, down: float) -> None:
        self.sim.restart_broker(down)

    @rule(c=st.integers(0, 2))
    def reconnect(self, c: int) -> None:
        self.clients[c].reconnect()

    @rule(c=st.integers(0, 2))
    def close_or_reopen(self, c: int) -> None:
        client = self.clients[c]
        if client.state in (S.CLOSED, S.FAILED):
            client.connect()
        else:
            client.close()

    @rule(ch=st.sampled_from(CHANNELS))
    def narrow_and_renew(self, ch: str) -> None:
        self.sim.narrow("id2", {other: ["*"] for other in CHANNELS if other != ch})
        self.clients[2].renew()

    @rule()
    def expire(self) -> None:
        self.sim.broker.expire_tokens("id2")

    @rule(lossy=st.floats(0.0, 0.5))
    def lossy_relay(self, lossy: float) -> None:
        self.sim.network.faults.lose_message = lossy

    def teardown(self) -> None:
        """The liveness phase: heal, then everything must settle and check out."""
        sim = self.sim
        safety = check(sim, final=False)
        assert not safety, safety[:5]
        sim.heal()
        assert sim.settle(120.0), "did not settle after healing"
        probe = sim.client("probe", **CLIENT)
        sim.settle(60.0)
        for ch in CHANNELS:
            probe.publish(ch, "probe")
        sim.settle(60.0)
        violations = check(sim, final=True)
        assert not violations, violations[:5]


Continuity.TestCase.settings = settings(
    max_examples=int(os.environ.get("RTKIT_SIM_EXAMPLES", "150")),
    stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestContinuity = Continuity.TestCase
