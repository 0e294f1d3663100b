"""Random scenarios for the simulator: operations and faults interleaved, then healed.

A scenario is a seed and a list of :class:`Step`. :func:`generate` draws one from a seed
("swarm" style: each scenario enables a random subset of operation kinds, which finds more
distinct bugs than always mixing everything); :func:`run` plays it — a *safety* phase with
the faults, then a *liveness* phase with the network healed, in which every client must
settle — and returns the continuity violations. :func:`shrink` reduces a failing scenario
to a minimal one, and :func:`reproducer` prints it as code.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from rtkit.core.states import ConnectionState
from rtkit.core.timing import Backoff
from rtkit.errors import RtkitError
from rtkit.sim.check import Violation, check
from rtkit.sim.client import SimClient
from rtkit.sim.world import Simulation

S = ConnectionState
CHANNELS = ("a", "b", "c")
KINDS = ("sub", "unsub", "pub", "drop", "blackhole", "refuse", "partition", "restart",
         "reconnect", "close", "renew", "narrow", "expire", "recover", "lossy", "jitter",
         "authfail", "slowauth", "ackloss", "burst", "unsubclose", "attach", "detach",
         "history", "wait")
#: Faults drawn apart from :data:`KINDS` (by their own random source, so that adding one
#: leaves the scenarios of every seed as they were, with their steps in between).
EXTRA_KINDS = ("wsblock",)
BROKER = {"heartbeat_interval": 1.0}
CLIENT: dict[str, Any] = {"backoff": Backoff(base=0.2, cap=1.0), "heartbeat_grace": 0.5,
          "connect_timeout": 2.0, "suspended_retry_interval": 3.0, "request_timeout": 5.0,
          "auth_timeout": 1.0, "transport_retry_interval": 2.0}


@dataclass(frozen=True)
class Step:
    """Wait ``dt`` virtual seconds, then do ``op`` (a kind from :data:`KINDS`)."""

    dt: float
    op: str
    client: int = 0
    channel: str = "a"
    n: float = 0

    def __repr__(self) -> str:
        return f"Step({self.dt!r}, {self.op!r}, {self.client}, {self.channel!r}, {self.n!r})"


@dataclass(frozen=True)
class Scenario:
    seed: int
    clients: int
    tokens: tuple[bool, ...]
    history_size: int
    steps: tuple[Step, ...]
    #: Clients' clocks are off by up to this many seconds (tokens live 4 s).
    skew: float = 2.0
    #: The broker's publish rate limit (publishes per second per connection).
    publish_rate: int = 10_000
    connection_state_ttl: float = 8.0


def generate(seed: int, max_steps: int = 24) -> Scenario:
    """A random scenario, fully determined by ``seed``."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS if rng.random() < 0.6] or ["pub"]
    kinds += ["sub", "pub", "pub", "wait"]  # always some traffic to check
    clients = rng.randint(2, 4)
    tokens = tuple(rng.random() < 0.4 for _ in range(clients))
    history = rng.choice([1000, 1000, 1000, 20])
    steps = []
    for _ in range(rng.randint(4, max_steps)):
        op = rng.choice(kinds)
        n: float = 0
        if op in ("pub", "burst"):
            n = rng.randint(1, 8) if op == "pub" else rng.randint(10, 40)
        elif op in ("blackhole", "refuse", "partition"):
            n = round(rng.uniform(0.3, 4.0), 2)
        elif op in ("restart", "ackloss"):
            n = round(rng.uniform(0.1, 2.0), 2)
        elif op in ("sub", "attach"):
            n = rng.choice([0, 0, 0, 2, 5])
        elif op in ("lossy", "unsub", "jitter", "unsubclose"):
            n = round(rng.random(), 2)
        elif op == "authfail":
            n = rng.randint(1, 4)
        dt = 0.0 if rng.random() < 0.15 else round(rng.uniform(0.0, 1.5), 2)
        steps.append(Step(dt, op, rng.randrange(clients), rng.choice(CHANNELS), n))
    extra = random.Random(seed * 7919 + 17)
    if extra.random() < 0.3:  # a proxy refuses WebSocket upgrades for a while
        for _ in range(extra.randint(1, 2)):
            steps.insert(extra.randint(0, len(steps)), Step(
                round(extra.uniform(0.0, 1.0), 2), "wsblock", extra.randrange(clients),
                "a", round(extra.uniform(0.5, 6.0), 2)))
    return Scenario(seed, clients, tokens, history, tuple(steps),
                    skew=rng.choice([2.0, 2.0, 3.0]),
                    publish_rate=rng.choice([10_000, 10_000, 40]),
                    connection_state_ttl=rng.choice([8.0, 8.0, 3.0]))


class Runner:
    """Plays one scenario on a fresh simulation."""

    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        # history_size: about how many small messages a channel's history budget holds.
        self.sim = Simulation(scenario.seed,
                              max_channel_history_bytes=scenario.history_size * 450,
                              publish_rate=scenario.publish_rate,
                              publish_burst=max(10, scenario.publish_rate // 4),
                              connection_state_ttl=scenario.connection_state_ttl, **BROKER)
        self.attach_ops: list[tuple[SimClient, int]] = []
        self.slots: list[SimClient] = []
        self.generation = [0] * scenario.clients
        for i in range(scenario.clients):
            self.slots.append(self._make(i))

    def _make(self, i: int, **extra: Any) -> SimClient:
        self.generation[i] += 1
        name = f"c{i}" if self.generation[i] == 1 else f"c{i}.{self.generation[i]}"
        token = self.sc.tokens[i]
        opts: dict[str, Any] = dict(CLIENT)
        if token:
            opts["token_ttl"] = 4.0
        skew = self.sim.rng.uniform(-self.sc.skew, self.sc.skew)
        return self.sim.client(name, client_id=f"id{i}", clock_skew=skew, **opts, **extra)

    def play(self) -> list[Violation]:
        sim = self.sim
        for step in self.sc.steps:
            sim.run(step.dt)
            self.do(step)
        sim.run(0.5)
        violations = check(sim, final=False)
        sim.heal()
        for c in self.slots:
            c.auth_delay, c.auth_failures = 0.01, 0  # the token service recovers too
            if c.core is not None and c.state is S.INITIALIZED:
                c.connect()
        if not sim.settle(120.0):
            violations.append(Violation("sim", "did not settle within 120 s after healing"))
        # A frame lost by a lossy relay at the very end of a stream is only noticed when
        # the next message arrives: send one on every channel.
        probe = sim.client("probe", **CLIENT)
        sim.settle(60.0)
        for ch in CHANNELS:
            probe.publish(ch, "probe")
        sim.settle(60.0)
        return violations + check(sim, final=True)

    def do(self, step: Step) -> None:
        sim, c = self.sim, self.slots[step.client]
        op = step.op
        if c.core is None:
            return
        if op == "sub":
            c.subscribe(step.channel, rewind=int(step.n) or None)
        elif op == "unsub":
            live = [s for s in c.record.subs.values()
                    if s.removed_at is None and s.channel == step.channel]
            if live:
                c.unsubscribe(live[int(step.n * len(live)) % len(live)].id)
        elif op == "pub":
            for k in range(int(step.n)):
                c.publish(step.channel, {"k": k})
        elif op == "drop":
            sim.network.drop(None if step.n else c.name)
        elif op == "blackhole":
            sim.network.blackhole(step.n)
        elif op == "refuse":
            sim.network.refuse(step.n)
            sim.network.drop()
        elif op == "partition":
            sim.network.partition(c.name, step.n)
        elif op == "wsblock":  # a proxy refuses WebSocket upgrades: clients move to SSE
            sim.network.block_websockets(step.n)
            if step.client % 2:
                sim.network.drop()
        elif op == "restart":
            sim.restart_broker(step.n)
        elif op == "reconnect":
            c.reconnect()
        elif op == "close":
            if c.state in (S.CLOSED, S.FAILED):
                c.connect()
            else:
                c.close()
        elif op == "renew":
            c.renew()
        elif op == "narrow":
            sim.narrow(f"id{step.client}", {ch: ["*"] for ch in CHANNELS
                                            if ch != step.channel})
            c.renew()
        elif op == "expire":
            sim.broker.expire_tokens(f"id{step.client}")
        elif op == "recover":
            self._recover(step.client)
        elif op == "lossy":
            sim.network.faults.lose_message = 0.3 * step.n
        elif op == "jitter":
            sim.network.faults.jitter = 0.2 * step.n
        elif op == "authfail":
            c.auth_failures += int(step.n)
        elif op == "ackloss":
            # The broker stores a publish and sends it on, the publisher's ack is held,
            # and the broker dies: the publisher resends to the new incarnation.
            c.publish(step.channel, "ackloss")
            sim.run(0.007)
            sim.network.partition(c.name, 0.3)
            sim.run(0.02)
            sim.restart_broker(0.2 + step.n)
        elif op == "burst":
            sim.network.faults.jitter = 0.2
            for k in range(int(step.n)):
                c.publish(step.channel, {"b": k})
        elif op == "unsubclose":  # in the same instant
            for sub in [s for s in c.record.subs.values()
                        if s.removed_at is None and s.channel == step.channel]:
                c.unsubscribe(sub.id)
            if c.state not in (S.CLOSED, S.FAILED, S.INITIALIZED):
                c.close()
        elif op == "attach":
            op_id = c.attach(step.channel, rewind=int(step.n) or None)
            if op_id is not None:
                self.attach_ops.append((c, op_id))
        elif op == "detach":
            c.detach(step.channel)
        elif op == "history":
            c.history(step.channel)
        elif op == "slowauth":
            c.auth_delay = 3.0 if c.auth_delay < 1 else 0.01  # beyond auth_timeout

    def _recover(self, i: int) -> None:
        """The client's process dies; a new one resumes from its recovery key."""
        old = self.slots[i]
        try:
            key = old.recovery_key()
        except RtkitError:
            key = None
        channels = {s.channel: s.rewind for s in old.record.subs.values()
                    if s.removed_at is None}
        old.vanish()
        new = self._make(i, recover=key, connect=False) if key else self._make(i, connect=False)
        for ch in channels:
            new.subscribe(ch)
        new.connect()
        self.slots[i] = new


def run(scenario: Scenario) -> list[Violation]:
    """Play ``scenario``; the violations found (empty when all is well)."""
    return Runner(scenario).play()


def signature(scenario: Scenario) -> str | None:
    """What kind of failure ``scenario`` shows (None: it passes)."""
    try:
        violations = run(scenario)
    except Exception as exc:  # a crash is a failure too
        return f"crash {type(exc).__name__}"
    if not violations:
        return None
    what = violations[0].what
    for kind in ("twice", "out of order", "skipped", "epoch changed", "never delivered",
                 "never answered", "stuck", "settle", "publish failed"):
        if kind in what or kind in violations[0].client:
            return kind
    return what


def shrink(scenario: Scenario, budget: int = 400) -> Scenario:
    """The smallest list of steps (delta debugging) that still fails the same way."""
    target = signature(scenario)
    steps = list(scenario.steps)
    chunk = max(1, len(steps) // 2)
    tries = 0
    while chunk >= 1 and tries < budget:
        i, changed = 0, False
        while i < len(steps) and tries < budget:
            candidate = steps[:i] + steps[i + chunk:]
            tries += 1
            if candidate and signature(dataclasses.replace(
                    scenario, steps=tuple(candidate))) == target:
                steps, changed = candidate, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return dataclasses.replace(scenario, steps=tuple(steps))


def reproducer(scenario: Scenario) -> str:
    """Python code that replays ``scenario``."""
    steps = ",\n        ".join(repr(s) for s in scenario.steps)
    sc = scenario
    return (f"from rtkit.sim.scenario import Scenario, Step, run\n"
            f"print(run(Scenario({sc.seed}, {sc.clients}, {sc.tokens!r}, "
            f"{sc.history_size}, (\n        {steps},\n), skew={sc.skew}, "
            f"publish_rate={sc.publish_rate}, "
            f"connection_state_ttl={sc.connection_state_ttl})))")
