"""The simulated network between clients and the broker: links with latency, and faults.

A link carries text frames both ways in order (like TCP), each after the one-way latency
(plus jitter, never reordering), over either transport (``"websocket"`` or ``"sse"``: the
same frames; what differs is only which one a proxy lets through). Faults, as the
fault-injection proxy makes them on real sockets: ``drop`` (reset every link), ``blackhole``
(deliver nothing, close nothing, until it ends: frames wait, as TCP retransmissions would),
``refuse`` (new links fail at once), ``partition`` (a blackhole for some clients that also
swallows new links, which time out), ``block_websockets`` (new WebSocket links are refused
with 80004, as by a proxy answering the upgrade with 403; SSE gets through) and per-link
frame loss (a buggy relay: a live link skips a ``message`` frame).
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rtkit.sim.clock import Clock

if TYPE_CHECKING:
    from rtkit.sim.broker import SimBroker


@dataclass
class Faults:
    """What is broken now (virtual times)."""

    latency: float = 0.005
    jitter: float = 0.0
    blackhole_until: float = 0.0
    refuse_until: float = 0.0
    #: client name -> partitioned until
    partitions: dict[str, float] = field(default_factory=dict)
    #: Probability that a live link silently skips one ``message`` frame.
    lose_message: float = 0.0
    #: New WebSocket links are refused until then (SSE links are not).
    websocket_blocked_until: float = 0.0


class _Pipe:
    """One direction of a link: frames in order, each ready after the latency, held while
    the path is blocked (and released soon after it heals, as TCP retransmits)."""

    __slots__ = ("busy", "deliver", "frames", "link", "up")

    def __init__(self, link: Link, up: bool, deliver: Callable[[str], None]) -> None:
        self.link = link
        self.up = up
        self.deliver = deliver
        self.frames: deque[tuple[float, str]] = deque()
        self.busy = False  # a pump event is scheduled

    def push(self, text: str) -> None:
        net = self.link.net
        delay = net.faults.latency + (net.rng.uniform(0, net.faults.jitter)
                                      if net.faults.jitter else 0.0)
        ready = net.clock.now + delay
        if self.frames:
            ready = max(ready, self.frames[-1][0])  # never reorder
        self.frames.append((ready, text))
        if not self.busy:
            self.busy = True
            net.clock.at(ready, self.pump)

    def pump(self) -> None:
        self.busy = False
        link, net = self.link, self.link.net
        now = net.clock.now
        blocked = net.blocked_until(link.client)
        frames = self.frames
        while frames and link.open:
            if blocked > now:
                self.busy = True
                net.clock.at(min(blocked, now + 0.2), self.pump)
                return
            ready, text = frames[0]
            if ready > now:
                self.busy = True
                net.clock.at(ready, self.pump)
                return
            frames.popleft()
            self.deliver(text)
        if not link.open:
            frames.clear()


class Link:
    """One connection between a simulated client and the broker."""

    _ids = itertools.count(1)

    def __init__(self, net: Network, client: str, to_client: Callable[[str], None],
                 on_client_lost: Callable[[str], None], transport: str = "websocket") -> None:
        self.id = next(Link._ids)
        self.net = net
        self.client = client
        self.transport = transport
        self.open = True
        self.session: object = None  # the broker's session, once accepted
        self._to_client = to_client
        self._on_client_lost = on_client_lost
        self._up = _Pipe(self, True, self._arrive_broker)
        self._down = _Pipe(self, False, self._arrive_client)
        self.frames_up = self.frames_down = self.bytes_down = 0

    def to_broker(self, text: str) -> None:
        if self.open:
            self.frames_up += 1
            self._up.push(text)

    def _arrive_broker(self, text: str) -> None:
        if self.net.broker is not None:
            self.net.broker.receive(self, text)

    def to_client(self, text: str) -> None:
        if not self.open:
            return
        net = self.net
        if net.faults.lose_message and text.startswith('{"action":"message"') and \
                net.rng.random() < net.faults.lose_message:
            net.lost_frames += 1
            net.lost_by_client[self.client] = net.lost_by_client.get(self.client, 0) + 1
            return
        self.frames_down += 1
        self.bytes_down += len(text)
        self._down.push(text)

    def _arrive_client(self, text: str) -> None:
        if text.startswith("\x00"):
            self.open = False
            self._on_client_lost(text[1:])
            return
        self._to_client(text)

    def close_from_broker(self, why: str) -> None:
        """The broker closes (after its last frames): the client learns in order."""
        if self.open:
            self._down.push("\x00" + why)

    def abort_from_client(self) -> None:
        """The client resets the link: in-flight frames are gone; the broker learns."""
        if not self.open:
            return
        self.open = False
        broker = self.net.broker
        self._gone_later(broker)

    def _gone_later(self, broker: SimBroker | None) -> None:
        net = self.net

        def tell() -> None:
            if broker is not None and broker is net.broker:
                broker.link_gone(self)

        net.clock.at(max(net.clock.now + net.faults.latency, net.blocked_until(self.client)),
                     tell)

    def reset(self, why: str) -> None:
        """Both ends learn the link is gone (a drop, or the broker dying)."""
        if not self.open:
            return
        self.open = False
        net = self.net
        if self.session is not None:
            self._gone_later(net.broker)
        net.clock.at(max(net.clock.now + net.faults.latency, net.blocked_until(self.client)),
                     lambda: self._on_client_lost(why))


class Network:
    """Every link, the faults in force, and connection set-up."""

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self.faults = Faults()
        self.broker: SimBroker | None = None
        self.links: dict[int, Link] = {}
        self.lost_frames = 0
        self.lost_by_client: dict[str, int] = {}
        self.connects = 0
        self.refused = 0
        self.blocked = 0  # WebSocket links refused by block_websockets
        #: Connection attempts per bucket of ``attempt_resolution`` seconds.
        self.attempts: dict[int, int] = {}
        self.attempt_resolution = 1.0

    def in_flight(self) -> int:
        """Frames sent but not yet delivered, on every open link."""
        return sum(len(link._up.frames) + len(link._down.frames)
                   for link in self.links.values() if link.open)

    def blocked_until(self, client: str) -> float:
        return max(self.faults.blackhole_until, self.faults.partitions.get(client, 0.0))

    def open(self, client: str, to_client: Callable[[str], None],
             on_lost: Callable[[str], None], on_open: Callable[[Link], None],
             on_fail: Callable[[str, int], None], transport: str = "websocket") -> None:
        """A client asks for a link: it opens after a round trip, fails at once when
        refused or the broker is down (``on_fail(why, code)``), or never answers while
        partitioned."""
        self.connects += 1
        now = self.clock.now
        bucket = int(now / self.attempt_resolution)
        self.attempts[bucket] = self.attempts.get(bucket, 0) + 1
        if self.faults.partitions.get(client, 0.0) > now:
            return  # the SYN is lost: the client's connect timeout decides
        rtt = 2 * self.faults.latency
        if self.faults.refuse_until > now or self.broker is None or not self.broker.up:
            self.refused += 1
            self.clock.after(rtt, lambda: on_fail("connection refused", 80000))
            return
        if transport == "websocket" and self.faults.websocket_blocked_until > now:
            self.blocked += 1
            self.clock.after(rtt, lambda: on_fail(
                "the broker refused the WebSocket upgrade (HTTP 403)", 80004))
            return
        link = Link(self, client, to_client, on_lost, transport)
        self.links[link.id] = link

        def established() -> None:
            if self.broker is None or not self.broker.up:
                link.open = False
                on_fail("connection refused", 80000)
                return
            self.broker.accept(link)
            on_open(link)

        self.clock.at(max(now + rtt, self.blocked_until(client)), established)

    def probe(self, client: str, transport: str, done: Callable[[bool], None]) -> None:
        """Would a link over ``transport`` open now? Answered after a round trip (never,
        while partitioned: the client's timeout decides)."""
        now = self.clock.now
        if self.faults.partitions.get(client, 0.0) > now:
            return
        ok = not (self.faults.refuse_until > now or self.broker is None or not self.broker.up
                  or (transport == "websocket" and self.faults.websocket_blocked_until > now))
        self.clock.at(max(now + 2 * self.faults.latency, self.blocked_until(client)),
                      lambda: done(ok))

    # ---------------------------------------------------------------- faults

    def drop(self, client: str | None = None) -> int:
        """Reset every link (of ``client``); returns how many."""
        hit = [link for link in self.links.values()
               if link.open and (client is None or link.client == client)]
        for link in hit:
            link.reset("connection reset (dropped)")
        self._prune()
        return len(hit)

    def blackhole(self, seconds: float) -> None:
        self.faults.blackhole_until = max(self.faults.blackhole_until,
                                          self.clock.now + seconds)

    def refuse(self, seconds: float) -> None:
        self.faults.refuse_until = max(self.faults.refuse_until, self.clock.now + seconds)

    def block_websockets(self, seconds: float) -> None:
        """Refuse new WebSocket links for ``seconds`` (links open now stay up)."""
        self.faults.websocket_blocked_until = max(self.faults.websocket_blocked_until,
                                                  self.clock.now + seconds)

    def partition(self, client: str, seconds: float) -> None:
        until = max(self.faults.partitions.get(client, 0.0), self.clock.now + seconds)
        self.faults.partitions[client] = until

    def heal(self) -> None:
        now = self.clock.now
        self.faults.blackhole_until = min(self.faults.blackhole_until, now)
        self.faults.refuse_until = 0.0
        self.faults.websocket_blocked_until = 0.0
        self.faults.partitions.clear()
        self.faults.lose_message = 0.0
        self.faults.jitter = 0.0

    def _prune(self) -> None:
        for key in [k for k, link in self.links.items() if not link.open]:
            del self.links[key]
