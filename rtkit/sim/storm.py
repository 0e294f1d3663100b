"""The reconnect storm: thousands of clients, one broker restart, and what the broker sees.

:func:`reconnect_storm` runs the real client and broker cores in the simulator: ``clients``
clients join over the first second and subscribe to a channel; the broker dies at
``restart_at`` and comes back ``down_for`` seconds later; every client reconnects with its
``backoff`` (with or without jitter) and resumes. The result is the broker's load over time.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from rtkit.core.states import ConnectionState
from rtkit.core.timing import Backoff
from rtkit.sim.world import Simulation

S = ConnectionState


@dataclass
class Storm:
    """What a reconnect storm looked like. ``timeline``: one row per ``resolution`` seconds
    with the connection ``attempts`` made (refused ones included), the ``accepted``
    connections, the broker's ``frames_in`` and ``frames_out``, and ``connected`` clients."""

    timeline: pd.DataFrame
    clients: int
    restart_at: float
    down_for: float
    #: Seconds from the broker's return until every client was connected again.
    recovered_after: float | None
    #: The busiest bucket's attempts, after the restart.
    peak_attempts: int
    #: Wall-clock seconds the simulation took.
    took: float


def reconnect_storm(clients: int = 2000, *, backoff: Backoff | None = None,
                    restart_at: float = 2.0, down_for: float = 2.0, seconds: float = 20.0,
                    resolution: float = 0.1, seed: int = 1,
                    heartbeat_interval: float = 15.0, **client_options: Any) -> Storm:
    """Simulate ``clients`` clients through a broker restart; see :class:`Storm`."""
    started = time.perf_counter()
    sim = Simulation(seed, heartbeat_interval=heartbeat_interval)
    sim.broker.stats.resolution = resolution
    sim.network.attempt_resolution = resolution
    options = {"backoff": backoff or Backoff(), **client_options}
    made = []

    def join(i: int) -> None:
        c = sim.client(f"c{i}", connect=False, **options)
        c.subscribe("room")
        c.connect()
        made.append(c)

    for i in range(clients):
        sim.clock.at(sim.rng.random(), functools.partial(join, i))
    connected: dict[int, int] = {}

    def sample() -> None:
        bucket = round(sim.now / resolution)
        connected[bucket] = sum(1 for c in made if c.state is S.CONNECTED)
        if sim.now + resolution <= seconds:
            sim.clock.after(resolution, sample)

    sim.clock.at(0.0, sample)
    sim.clock.at(restart_at, lambda: sim.restart_broker(down_for))
    sim.run(seconds)
    back = restart_at + down_for
    recovered = None
    for bucket in sorted(connected):
        t = bucket * resolution
        if t >= back and connected[bucket] == clients:
            recovered = round(t - back, 6)
            break
    buckets = range(int(seconds / resolution) + 1)
    load = sim.broker.stats.load
    rows = [{
        "t": round(b * resolution, 6),
        "attempts": sim.network.attempts.get(b, 0),
        "accepted": load[b].connects if b in load else 0,
        "frames_in": load[b].frames_in if b in load else 0,
        "frames_out": load[b].frames_out if b in load else 0,
        "connected": connected.get(b, 0),
    } for b in buckets]
    timeline = pd.DataFrame(rows).set_index("t")
    after = timeline[timeline.index >= restart_at]
    return Storm(timeline, clients, restart_at, down_for, recovered,
                 int(after["attempts"].max()) if len(after) else 0,
                 time.perf_counter() - started)
