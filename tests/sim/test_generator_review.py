"""Review of issue 8: a prototype of scenario kinds the generator (rtkit.sim.scenario) lacks,
and of checks rtkit.sim.check lacks. Each found a real defect (see test_core_review.py);
the swarm here fails on this branch.

New kinds:

* ``ackloss``: a restart right after a publish reached the broker and its subscribers,
  while the publisher's ack is held (asymmetric loss around a crash);
* ``ratepub``: a burst through a jittery network against a broker with a low publish rate
  (the swarm runs with publish_rate=10,000, so 42900 and its retry never happen);
* ``unsubclose``: unsubscribe then close in the same instant (steps never have dt=0);
* ``attachrw``: ``attach(rewind=N)`` on a channel (explicit attach/detach are never
  generated);
* ``bigskew`` (per scenario): client clocks off by up to 3/4 of the token lifetime (the
  swarm's +-2 s against 4 s tokens never reaches the renewal margin).

New checks (:func:`strict`): a loss must not name a message the subscription received;
one publisher's messages enter a channel in publish order; no channel ends ``failed``
unless its capability was narrowed; no client ends ``failed``; no attach op times out
while connected; token fetches and connection attempts stay under a rate (a livelock that
eventually settles passes rtkit.sim.check).
"""

from __future__ import annotations

import os
import random
from typing import Any

from rtkit.core.states import ConnectionState
from rtkit.errors import RequestTimeout
from rtkit.sim.client import SimClient
from rtkit.sim.scenario import BROKER, CHANNELS, CLIENT, KINDS, Runner, Scenario, Step

S = ConnectionState
EXTRA = ("ackloss", "ratepub", "unsubclose", "attachrw")
SCENARIOS = int(os.environ.get("RTKIT_REVIEW_SCENARIOS", "25"))


def generate(seed: int, max_steps: int = 24) -> tuple[Scenario, bool]:
    rng = random.Random(seed)
    kinds = [k for k in (*KINDS, *EXTRA) if rng.random() < 0.5] or ["pub"]
    kinds += ["sub", "pub", "pub", "wait"]
    clients = rng.randint(2, 4)
    tokens = tuple(rng.random() < 0.5 for _ in range(clients))
    history = rng.choice([1000, 1000, 20])
    steps = []
    for _ in range(rng.randint(4, max_steps)):
        op = rng.choice(kinds)
        n: float = 0
        if op == "pub":
            n = rng.randint(1, 8)
        elif op in ("blackhole", "refuse", "partition"):
            n = round(rng.uniform(0.3, 4.0), 2)
        elif op == "restart":
            n = round(rng.uniform(0.1, 2.0), 2)
        elif op in ("sub", "attachrw"):
            n = rng.choice([0, 0, 2, 5])
        elif op in ("lossy", "unsub", "jitter", "ackloss"):
            n = round(rng.random(), 2)
        elif op == "authfail":
            n = rng.randint(1, 4)
        steps.append(Step(round(rng.uniform(0.0, 1.5), 2), op, rng.randrange(clients),
                          rng.choice(CHANNELS), n))
    return Scenario(seed, clients, tokens, history, tuple(steps)), rng.random() < 0.3


class XRunner(Runner):
    def __init__(self, scenario: Scenario, bigskew: bool) -> None:
        self.bigskew = bigskew
        self.attach_ops: list[tuple[SimClient, int]] = []
        saved = dict(BROKER)
        BROKER.update(publish_rate=40, publish_burst=10)  # low enough for 42900
        try:
            super().__init__(scenario)
        finally:
            BROKER.clear()
            BROKER.update(saved)

    def _make(self, i: int, **extra: Any) -> SimClient:
        self.generation[i] += 1
        name = f"c{i}" if self.generation[i] == 1 else f"c{i}.{self.generation[i]}"
        opts: dict[str, Any] = dict(CLIENT)
        skew = self.sim.rng.uniform(-2, 2)
        if self.sc.tokens[i]:
            opts["token_ttl"] = 4.0
            if self.bigskew:
                skew = self.sim.rng.uniform(-3.0, 3.0)  # up to 3/4 of the token lifetime
        return self.sim.client(name, client_id=f"id{i}", clock_skew=skew, **opts, **extra)

    def do(self, step: Step) -> None:
        sim, c = self.sim, self.slots[step.client]
        if c.core is None:
            return
        op = step.op
        if op == "ackloss":
            c.publish(step.channel, "ackloss")
            sim.run(0.007)  # the broker has it, the subscribers are about to
            sim.network.partition(c.name, 0.3)  # the publisher's ack is held ...
            sim.run(0.02)
            sim.restart_broker(0.2 + step.n)  # ... and lost with the broker
        elif op == "ratepub":
            sim.network.faults.jitter = 0.2
            for k in range(12):
                c.publish(step.channel, {"r": k})
        elif op == "unsubclose":
            for s in [s for s in c.record.subs.values()
                      if s.removed_at is None and s.channel == step.channel]:
                c.unsubscribe(s.id)
            if c.state not in (S.CLOSED, S.FAILED, S.INITIALIZED):
                c.close()
        elif op == "attachrw":
            try:
                o = c.core.attach(step.channel, sim.now, rewind=int(step.n) or None)
            except Exception:  # refused at once (closed, ...): fine
                return
            c._ops[o] = ("attach", None)
            self.attach_ops.append((c, o))
            c._pump()
        else:
            super().do(step)


def strict(runner: XRunner) -> list[str]:
    sc, sim = runner.sc, runner.sim
    out: list[str] = []
    narrowed = {(f"id{s.client}", s.channel) for s in sc.steps if s.op == "narrow"}
    by_id = {p.id: (p.epoch, p.serial) for c in sim.clients.values()
             for p in c.record.published.values() if p.serial is not None}
    for c in sim.clients.values():
        for ch, entries in c.record.timeline.items():
            got: dict[int, set[tuple[str | None, int]]] = {}
            for e in entries:
                for ep, serial, mid in e.messages:
                    for sub in e.subs:
                        got.setdefault(sub, set()).add((ep, serial))
                        if mid in by_id:
                            got[sub].add(by_id[mid])
            for e in entries:
                loss = e.loss
                if loss is None or loss.first_lost is None or loss.last_lost is None:
                    continue
                for sub, seen in got.items():
                    rec = c.record.subs.get(sub)
                    if rec is None or not rec.made <= e.at <= (rec.removed_at or 1e18):
                        continue
                    hit = [s for s in range(loss.first_lost, loss.last_lost + 1)
                           if (loss.epoch, s) in seen]
                    if hit:
                        out.append(f"{c.name}/sub{sub}: loss {loss.reason!r} names "
                                   f"{hit[:3]} on {ch}, which it received")
        last: dict[tuple[str, str | None], tuple[int, str]] = {}
        for p in c.record.published.values():
            if p.serial is None:
                continue
            key = (p.channel, p.epoch)
            if key in last and p.serial < last[key][0]:
                out.append(f"{c.name}: {p.id} got serial {p.serial} after {last[key][1]} "
                           f"got {last[key][0]} (publish order)")
            last[key] = (p.serial, p.id)
        if c.core is None:
            continue
        if c.state is S.FAILED:
            out.append(f"{c.name}: ended failed: {c.record.states[-1].reason}")
        for name, ch_core in c.core.channels.items():
            if ch_core.state.value == "failed" and (c.client_id, name) not in narrowed:
                out.append(f"{c.name}: {name} failed without a narrowing: {ch_core.error!r}")
        fetches = c.core.credentials.renewals
        if fetches > 10 + sim.now:  # 4 s tokens: about one a 2.7 s
            out.append(f"{c.name}: {fetches} tokens in {sim.now:.0f} s")
        attempts = sum(1 for s in c.record.states if s.current is S.CONNECTING)
        if attempts > 20 + 2 * sim.now:
            out.append(f"{c.name}: {attempts} connection attempts in {sim.now:.0f} s")
    for c, op in runner.attach_ops:
        if c.core is not None and op in c._ops:
            out.append(f"{c.name}: attach op {op} never answered")
    return out


def play(seed: int) -> list[str]:
    scenario, bigskew = generate(seed)
    runner = XRunner(scenario, bigskew)
    original = SimClient._op_outcome

    def outcome(self: SimClient, item: Any, now: float) -> None:
        kind, _ = self._ops.get(item.op, (None, None))
        if kind == "attach":
            self._ops.pop(item.op)
            if hasattr(item, "error") and isinstance(item.error, RequestTimeout) and \
                    self.state is S.CONNECTED:
                runner_errors.append(f"{self.name}: attach(rewind) timed out while "
                                     f"connected")
            return
        original(self, item, now)

    runner_errors: list[str] = []
    SimClient._op_outcome = outcome  # type: ignore[method-assign]
    try:
        violations = [str(v) for v in runner.play()]
        runner.sim.run(6.0)  # past request_timeout: every attach op has its outcome
    except Exception as exc:  # a crash is a finding, with its seed
        return [f"crash: {exc!r}"]
    finally:
        SimClient._op_outcome = original  # type: ignore[method-assign]
    return violations + strict(runner) + runner_errors


def test_extended_swarm_keeps_continuity() -> None:
    failing = {}
    for seed in range(SCENARIOS):
        found = play(seed)
        if found:
            failing[seed] = sorted(set(found))[:3]
    assert not failing, "\n".join(f"seed {s}: {v}" for s, v in list(failing.items())[:12])

