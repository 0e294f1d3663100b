"""``rtkit.sim``: a deterministic simulator of rtkit clients, broker and network.

It runs the very core objects the real drivers use — :class:`~rtkit.core.client.ClientCore`
and :class:`~rtkit.core.broker.BrokerCore` — on a virtual clock and a simulated network, so a
minute with thousands of clients, drops, blackholes, refusals, partitions and broker restarts
takes seconds and replays exactly from its seed. It is a teaching tool (what happens to a
broker when ten thousand clients reconnect at once?) and a test tool (property-based tests
check continuity after random interleavings of operations and faults).

    sim = rtkit.sim.Simulation(seed=1, heartbeat_interval=1.0)
    a, b = sim.client("a"), sim.client("b")
    sim.run(0.5)
    b.subscribe("news")
    sim.run(0.5)
    a.publish("news", {"n": 1})
    sim.network.drop()
    sim.run(5)
    rtkit.sim.check(sim)          # [] when every message arrived once, in order, or its
                                  # loss was announced
"""

from rtkit.sim.broker import WALL_START, BrokerStats, Load, SimBroker
from rtkit.sim.check import Violation, check, settled
from rtkit.sim.client import Published, Record, SimClient, SubRecord
from rtkit.sim.clock import Clock
from rtkit.sim.network import Faults, Link, Network
from rtkit.sim.world import ROOT, Simulation

__all__ = [
    "ROOT",
    "WALL_START",
    "BrokerStats",
    "Clock",
    "Faults",
    "Link",
    "Load",
    "Network",
    "Published",
    "Record",
    "SimBroker",
    "SimClient",
    "Simulation",
    "SubRecord",
    "Violation",
    "check",
    "settled",
]
