"""Broker nodes sharing channels through an in-memory backplane: no sockets, no Redis.

:class:`MemoryBackplane` performs the effects of ``rtkit.core.backplane`` with the semantics
of the Redis scripts (``rtkit.aio.redis_scripts``): one serial sequence per channel with an
epoch, a stored history, de-duplication by key, PUB/SUB to the nodes that follow a channel,
presence records per node. Its PUB/SUB can lose, repeat or hold back messages, and it can
lose its data or go back in time, so the tests can do to a node what Redis may do to it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtkit.core import backplane as bp
from rtkit.core.cluster_ops import ClusterOps
from tests.core.harness import Harness


@dataclass
class Stored:
    epoch: str
    serial: int = 0
    entries: list[tuple[int, int, str]] = field(default_factory=list)  # (serial, ts, json)
    dedup: dict[str, str] = field(default_factory=dict)


class MemoryBackplane:
    def __init__(self) -> None:
        self.channels: dict[str, Stored] = {}
        self.presence: dict[str, dict[str, tuple[str, str]]] = {}  # ch -> key -> (node, ev)
        self.nodes: list[Node] = []
        self.time_ms = 1_700_000_000_000
        #: Decides the fate of each PUB/SUB delivery to a node: "deliver", "drop" or "hold".
        self.fate: Callable[[Node, str, str], str] = lambda node, channel, payload: "deliver"
        self.held: list[tuple[Node, str, str]] = []
        self.reads = 0
        self.secret = b"s" * 32  # the nodes' shared cluster secret (signs connection keys)

    def stored(self, name: str, candidate: str) -> Stored:
        st = self.channels.get(name)
        if st is None:
            st = self.channels[name] = Stored(candidate)
        return st

    # -- what Redis does

    def perform(self, node: Node, effect: bp.Effect) -> None:
        ops = node.ops
        now = node.h.now
        if isinstance(effect, bp.Follow):
            node.following.add(effect.channel)
            st = self.stored(effect.channel, secrets.token_hex(6))
            members = [(n, ev) for (n, ev) in self.presence.get(effect.channel, {}).values()]
            node.later.append(lambda: ops.followed(effect.channel, effect.gen, st.epoch,
                                                   st.serial, members, now))
        elif isinstance(effect, bp.Unfollow):
            node.following.discard(effect.channel)
        elif isinstance(effect, bp.Publish):
            st = self.stored(effect.channel, secrets.token_hex(6))
            if effect.dedup_key is not None and effect.dedup_key in st.dedup:
                serial, ts = map(int, st.dedup[effect.dedup_key].split(":"))
                node.later.append(lambda: ops.published(effect.token, serial, ts, True))
                return
            self.time_ms += 1
            st.serial += 1
            text = f'{effect.head}{st.serial},"timestamp":{self.time_ms}{effect.tail}'
            st.entries.append((st.serial, self.time_ms, text))
            if effect.dedup_key is not None:
                st.dedup[effect.dedup_key] = f"{st.serial}:{self.time_ms}"
            serial, ts = st.serial, self.time_ms
            node.later.append(lambda: ops.published(effect.token, serial, ts, False))
            self.broadcast(effect.channel, f"m {st.epoch} {serial} {ts} {text}")
        elif isinstance(effect, bp.Read):
            self.reads += 1
            st = self.stored(effect.channel, secrets.token_hex(6))
            found = [e for e in st.entries if effect.first <= e[0] <= effect.last]
            found = found[-effect.limit:] if effect.newest_first else found[:effect.limit]
            epoch, serial = st.epoch, st.serial
            node.later.append(lambda: ops.read_done(effect.channel, effect.token, epoch,
                                                    serial, found, now))
        elif isinstance(effect, bp.Check):
            found = {}
            for name in effect.channels:
                st = self.stored(name, secrets.token_hex(6))
                found[name] = (st.epoch, st.serial)
            node.later.append(lambda: ops.positions(found, now))
        elif isinstance(effect, bp.Rebase):
            st = self.channels.get(effect.channel)
            if st is not None and st.epoch == effect.epoch and st.serial < effect.serial:
                self.channels[effect.channel] = Stored(secrets.token_hex(6))
        elif isinstance(effect, bp.PresenceWrite):
            members = self.presence.setdefault(effect.channel, {})
            if effect.op == "leave":
                members.pop(effect.member_key, None)
            else:
                members[effect.member_key] = (node.node_id, effect.event)
            self.broadcast(effect.channel, f"p {node.node_id} {effect.event}")

    def broadcast(self, channel: str, payload: str) -> None:
        for node in self.nodes:
            if channel in node.following and node.alive:
                fate = self.fate(node, channel, payload)
                if fate == "deliver":
                    node.later.append(lambda n=node, p=payload: n.receive(channel, p))
                elif fate == "hold":
                    self.held.append((node, channel, payload))

    def release(self) -> None:
        """Deliver what was held back (late, after later messages)."""
        held, self.held = self.held, []
        for node, channel, payload in held:
            node.receive(channel, payload)

    def lose_everything(self) -> None:
        """Redis restarted without persistence."""
        self.channels.clear()
        self.presence.clear()

    def settle(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            busy = False
            for node in self.nodes:
                busy |= node.step()
            if not busy:
                return
        raise AssertionError("the nodes did not settle")


class Node:
    """One broker node: a Harness whose core has a NodeView."""

    def __init__(self, backplane: MemoryBackplane, node_timeout: float = 15.0,
                 read_limit: int = 500, **config: Any) -> None:
        self.node_id = secrets.token_hex(4)
        self.view = bp.NodeView(self.node_id, node_timeout, read_limit)
        self.h = Harness(self.view, backplane.secret, **config)
        self.backplane = backplane
        self.following: set[str] = set()
        self.later: list[Callable[[], Any]] = []
        self.alive = True
        backplane.nodes.append(self)

    @property
    def ops(self) -> ClusterOps:
        ops = self.h.core.ops
        assert isinstance(ops, ClusterOps)
        return ops

    def receive(self, channel: str, payload: str) -> None:
        kind, rest = payload.split(" ", 1)
        if kind == "m":
            epoch, serial, ts, text = rest.split(" ", 3)
            self.ops.delivered(channel, epoch, int(serial), int(ts), text, self.h.now)
        else:
            node, text = rest.split(" ", 1)
            self.ops.presence_event(channel, node, text)

    def step(self) -> bool:
        """Perform the effects wanted, then what the backplane answered; True if anything
        happened."""
        busy = False
        for effect in self.view.take():
            busy = True
            self.backplane.perform(self, effect)
        later, self.later = self.later, []
        for fn in later:
            busy = True
            fn()
        return busy

    # -- conveniences

    def connect(self, client_id: str | None = None) -> Any:
        return self.h.connect(client_id)

    def send(self, s: Any, frame: dict[str, Any]) -> None:
        self.h.send(s, frame)

    def take(self, s: Any) -> list[dict[str, Any]]:
        return self.h.take(s)


def messages(frames: list[dict[str, Any]]) -> list[int]:
    return [m["serial"] for f in frames if f["action"] == "message" for m in f["messages"]]


def publish(node: Node, s: Any, channel: str, n: int, start: int = 0,
            with_id: bool = True) -> None:
    for i in range(start, start + n):
        frame: dict[str, Any] = {"action": "publish", "ref": i, "channel": channel,
                                 "name": "n", "data": {"i": i}}
        if with_id:
            frame["id"] = f"m{i}"
        node.send(s, frame)


def as_json(text: str) -> Any:
    return json.loads(text)
