"""A whole simulated system: one broker, a network, any number of clients, one clock."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from rtkit.core.broker import BrokerConfig
from rtkit.core.tokens import ApiKey, Capability, issue_token
from rtkit.sim.broker import WALL_START, SimBroker
from rtkit.sim.client import SimClient
from rtkit.sim.clock import Clock
from rtkit.sim.network import Network

ROOT = ApiKey("root", "sim-root-secret-" + "s" * 32)


class Simulation:
    """A seeded, reproducible world in virtual time.

    ``Simulation(seed=1, heartbeat_interval=1.0, ...)`` takes the broker's options. Make
    clients with :meth:`client`, act on them, break things with :attr:`network` and
    :meth:`restart_broker`, and move time with :meth:`run`. Nothing sleeps: a minute of
    virtual time takes as long as the events in it.
    """

    def __init__(self, seed: int = 0, **broker_options: Any) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.network = Network(self.clock, random.Random(self.rng.random()))
        self.root = ROOT
        self.broker = SimBroker(self.clock, BrokerConfig(**broker_options), ROOT)
        self.network.broker = self.broker
        self.clients: dict[str, SimClient] = {}
        #: Capabilities the simulated token service grants, per client id.
        self.capabilities: dict[str | None, dict[str, list[str]]] = {}
        self._grants: dict[str | None, list[tuple[float, dict[str, list[str]]]]] = {}

    @property
    def now(self) -> float:
        return self.clock.now

    # ---------------------------------------------------------------- clients

    def client(self, name: str | None = None, *, connect: bool = True,
               **options: Any) -> SimClient:
        """A new client (root key unless ``token_ttl=`` asks for renewable tokens)."""
        name = name or f"c{len(self.clients) + 1}"
        c = SimClient(self, name, **options)
        self.clients[name] = c
        if connect:
            c.connect()
        return c

    def clients_named(self, names: Iterable[str]) -> list[SimClient]:
        return [self.clients[n] for n in names]

    def issue_token(self, client_id: str | None, ttl: float) -> str:
        caps = self.capabilities.get(client_id, {"*": ["*"]})
        return issue_token(ROOT, now=WALL_START + self.clock.now, client_id=client_id,
                           capabilities=caps, ttl=ttl)

    # ---------------------------------------------------------------- time

    def run(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass."""
        self.clock.run_until(self.clock.now + seconds)

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Run until ``predicate()`` holds (True) or ``timeout`` virtual seconds pass."""
        if predicate():
            return True
        return self.clock.run_until(self.clock.now + timeout, predicate)

    def settle(self, timeout: float = 120.0) -> bool:
        """Run until the system is quiet: every live client connected with its channels
        attached and its publishes answered, and still so after the frames in flight have
        landed. Returns False if that does not happen within ``timeout`` virtual seconds."""
        from rtkit.sim.check import settled

        deadline = self.clock.now + timeout
        while self.clock.now < deadline:
            if not self.run_until(lambda: settled(self), deadline - self.clock.now):
                return False
            self.run(max(0.05, 4 * self.network.faults.latency))
            if settled(self):
                return True
        return False

    # ---------------------------------------------------------------- faults

    def restart_broker(self, down_for: float = 1.0) -> None:
        """Kill the broker (no goodbye, all state lost) and start a new one later."""
        self.broker.restart(down_for)

    def narrow(self, client_id: str, capabilities: dict[str, list[str]]) -> None:
        """From now on the token service grants ``client_id`` only ``capabilities``."""
        Capability.of(capabilities)  # validate
        self.capabilities[client_id] = capabilities
        self._grants.setdefault(client_id, []).append((self.clock.now, capabilities))

    def always_allowed(self, client_id: str | None, channel: str, since: float) -> bool:
        """Whether every grant the token service made ``client_id`` since ``since`` (and
        the one in force then) allowed subscribing to ``channel``."""
        grants = self._grants.get(client_id, [])
        in_force = [caps for at, caps in grants if at <= since][-1:]
        later = [caps for at, caps in grants if at > since]
        return all(Capability.of(caps).allows("subscribe", channel)
                   for caps in in_force + later)

    def heal(self) -> None:
        """Remove every network fault (the broker stays as it is)."""
        self.network.heal()
