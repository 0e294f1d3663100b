"""The simulated broker: the real :class:`~rtkit.core.broker.BrokerCore` driven by the
virtual clock, exactly as the asyncio driver drives it on real sockets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rtkit.core.broker import BrokerConfig, BrokerCore, Disconnect, Send, Session
from rtkit.core.tokens import ApiKey, KeyStore
from rtkit.sim.clock import Clock
from rtkit.sim.network import Link

#: The simulated wall clock starts here (seconds since the Unix epoch).
WALL_START = 1_800_000_000.0


@dataclass
class Load:
    """What the broker did in one time bucket (``at`` to ``at + resolution`` seconds)."""

    at: float
    connects: int = 0
    frames_in: int = 0
    frames_out: int = 0
    sessions: int = 0


@dataclass
class BrokerStats:
    restarts: int = 0
    #: Seconds per bucket of :attr:`load`.
    resolution: float = 1.0
    load: dict[int, Load] = field(default_factory=dict)


class SimBroker:
    """A :class:`BrokerCore` behind simulated links. ``restart()`` kills it (no goodbye)
    and starts a new one, with new channel epochs and no history, after ``down_for``."""

    def __init__(self, clock: Clock, config: BrokerConfig, root: ApiKey) -> None:
        self.clock = clock
        self.config = config
        self.root = root
        self.keys = KeyStore([root])
        self.core = self._new_core()
        self.up = True
        self.stats = BrokerStats()
        self._sessions: dict[int, Session] = {}  # link id -> session
        self._links: dict[int, Link] = {}
        self._flush_scheduled = False
        self._tick_period = max(0.01, min(0.25, config.heartbeat_interval / 4))
        self._generation = 0
        self._schedule_tick()

    @property
    def wall(self) -> float:
        return WALL_START + self.clock.now

    @property
    def now(self) -> float:
        """The broker's monotonic clock: the virtual clock (wall time is
        ``now + core.wall_offset``)."""
        return self.clock.now

    def _new_core(self) -> BrokerCore:
        core = BrokerCore(self.config, self.keys)
        core.wall_offset = WALL_START
        return core

    def _load(self) -> Load:
        res = self.stats.resolution
        bucket = int(self.clock.now / res)
        load = self.stats.load.get(bucket)
        if load is None:
            load = self.stats.load[bucket] = Load(bucket * res)
        return load

    # ---------------------------------------------------------------- links

    def accept(self, link: Link) -> None:
        session = self.core.open_session(self.now, link)
        link.session = session
        self._sessions[link.id] = session
        self._links[link.id] = link
        self._load().connects += 1

    def receive(self, link: Link, text: str) -> None:
        session = self._sessions.get(link.id)
        if session is None:
            return
        self._load().frames_in += 1
        self.core.receive(session, text, self.now)
        self._schedule_flush()

    def link_gone(self, link: Link) -> None:
        session = self._sessions.pop(link.id, None)
        self._links.pop(link.id, None)
        if session is not None:
            self.core.session_lost(session, self.now)
            self._schedule_flush()

    # ---------------------------------------------------------------- output

    def _schedule_flush(self) -> None:
        # Like the asyncio driver: what one loop iteration produced goes out together.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.clock.after(0.0, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        load = self._load()
        for item in self.core.take_output():
            if isinstance(item, Send):
                for target in item.targets:
                    link: Link | None = target.transport
                    if link is not None:
                        load.frames_out += 1
                        link.to_client(item.text)
            elif isinstance(item, Disconnect):
                link = item.session.transport
                if link is not None:
                    self._sessions.pop(link.id, None)
                    self._links.pop(link.id, None)
                    link.close_from_broker(item.reason)

    def _schedule_tick(self) -> None:
        generation = self._generation
        self.clock.after(self._tick_period, lambda: self._tick(generation))

    def _tick(self, generation: int) -> None:
        if generation != self._generation or not self.up:
            return
        self.core.tick(self.now)
        self._load().sessions = len(self.core.sessions)
        self._flush()
        self._schedule_tick()

    # ---------------------------------------------------------------- faults

    def restart(self, down_for: float, **config: Any) -> None:
        """Kill the broker now (every link reset, all state gone) and start a fresh one
        after ``down_for`` seconds."""
        self.up = False
        self._generation += 1
        self.stats.restarts += 1
        links = list(self._links.values())
        self._sessions.clear()
        self._links.clear()
        for link in links:
            link.session = None
            link.reset("the broker went away")

        generation = self._generation

        def start() -> None:
            if generation != self._generation:
                return  # restarted again meanwhile: that restart starts it
            if config:
                self.config = dataclasses.replace(self.config, **config)
            self.core = self._new_core()
            self.up = True
            self._schedule_tick()

        self.clock.after(down_for, start)

    def epoch_of(self, channel: str) -> str | None:
        """The current epoch of ``channel`` at the broker (None if it never existed)."""
        ch = self.core.channels.get(channel)
        if ch is not None:
            return ch.epoch
        tomb = self.core.registry.tombstones.get(channel)
        return tomb[0] if tomb is not None else None

    def first_stored(self, channel: str) -> int | None:
        """The oldest serial the broker still stores for ``channel`` (None: none)."""
        ch = self.core.channels.get(channel)
        return ch.store.first_serial() if ch is not None else None

    def expire_tokens(self, client_id: str | None = None) -> int:
        n = self.core.expire_tokens(client_id, self.now)
        return n
