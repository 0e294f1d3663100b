"""Presence of channels shared through a backplane, sans I/O.

Part of :class:`~rtkit.core.cluster_ops.ClusterOps`: the changes of this node's members are
written to the backplane (:class:`~rtkit.core.backplane.PresenceWrite`, with the node that
holds the member's connection); the other nodes' changes arrive as events and are applied
to the channel's members as copies (announced to this node's subscribers like its own); the
members of a node that stopped refreshing its record leave (:meth:`SharedPresence.nodes_gone`)
and, if this node was itself taken for gone, its members are written again
(:meth:`SharedPresence.rejoin`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.backplane import Feed, NodeView, PresenceWrite
from rtkit.core.channels import Channel, ChannelRegistry
from rtkit.core.frames import dumps
from rtkit.errors import RtkitError

#: Apply and announce a presence change on a channel, as for a member of this node
#: (``ChannelOps.presence``).
Announce = Callable[[Channel, str, fr.PresenceMember], None]


class SharedPresence:
    """The members of shared channels, and the node each is held by."""

    def __init__(self, view: NodeView, registry: ChannelRegistry, announce: Announce) -> None:
        self.view = view
        self.registry = registry
        self.announce = announce

    def own_members(self, ch: Channel) -> bool:
        """Whether a session of this node is present on ``ch`` (other nodes' members are
        copies: they keep no channel followed)."""
        feed = self.view.feeds.get(ch.name)
        if feed is None:
            return bool(ch.members)
        me = self.view.node_id
        return any(node == me for node in feed.member_nodes.values())

    def written(self, ch: Channel, op: str, member: fr.PresenceMember) -> None:
        """A change of this node's member (applied already): written to the backplane."""
        feed = self.view.feeds.get(ch.name)
        key = (member.client_id, member.connection_id)
        if feed is not None:
            if op == "leave":
                feed.member_nodes.pop(key, None)
            else:
                feed.member_nodes[key] = self.view.node_id
        event = dumps({"type": op, **member.to_wire()})
        self.view.effects.append(PresenceWrite(ch.name, op, dumps(list(key)), event))

    def event(self, name: str, node: str, text: str) -> None:
        """A presence change announced by another node (``text``: a ``presence_event``
        item as JSON)."""
        feed = self.view.feeds.get(name)
        ch = self.registry.channels.get(name)
        if feed is None or ch is None or node == self.view.node_id:
            return
        if not feed.live:
            feed.early_presence.append((node, text))
            return
        self.remote(ch, feed, node, text, announce=True)

    def followed(self, ch: Channel, feed: Feed, members: list[tuple[str, str]]) -> None:
        """The channel is followed for the first time: its members (as
        (node, ``presence_event`` item JSON)), then the events that came meanwhile."""
        for node, text in members:
            self.remote(ch, feed, node, text, announce=False)
        early, feed.early_presence = feed.early_presence, []
        for node, text in early:
            self.remote(ch, feed, node, text, announce=True)

    def remote(self, ch: Channel, feed: Feed, node: str, text: str, announce: bool) -> None:
        """A member of another node: entered, updated or left (``announce``: told to this
        node's subscribers)."""
        if node == self.view.node_id or self.view.nodes.is_gone(node):
            return
        try:
            item: Any = fr.parse_json(text)
            member = fr.PresenceMember.from_wire(item, "presence_event")
            op = item.get("type", "enter")
        except (RtkitError, AttributeError):
            return  # not written by an rtkit node: ignored
        if op not in ("enter", "update", "leave"):
            return
        key = (member.client_id, member.connection_id)
        if op == "leave":
            feed.member_nodes.pop(key, None)
        else:
            feed.member_nodes[key] = node
        if announce:
            self.announce(ch, op, member)
        elif op == "leave":
            ch.members.pop(key, None)
        else:
            ch.members[key] = member

    def nodes_seen(self, rows: dict[str, dict[str, Any]], now_ms: int,
                   was_missing: bool) -> list[str]:
        """The node records read from the backplane (``now_ms`` on its clock). The members
        of nodes gone leave; if this node's own record had expired (``was_missing``: the
        others took it for gone), its members are written again. Returns the nodes gone."""
        gone = self.view.nodes.update(rows, now_ms)
        if gone:
            self.nodes_gone(gone)
        if was_missing:
            self.rejoin()
        return gone

    def nodes_gone(self, nodes: list[str]) -> None:
        """These nodes stopped refreshing their record: their members leave (announced)."""
        gone = set(nodes)
        for name, feed in self.view.feeds.items():
            ch = self.registry.channels.get(name)
            if ch is None:
                continue
            for key in [k for k, node in feed.member_nodes.items() if node in gone]:
                del feed.member_nodes[key]
                member = ch.members.get(key)
                if member is not None:
                    self.announce(ch, "leave", member)

    def rejoin(self) -> None:
        """This node's record had expired (the others removed its members): write its
        members again."""
        for name, feed in self.view.feeds.items():
            ch = self.registry.channels.get(name)
            if ch is None:
                continue
            for key, node in feed.member_nodes.items():
                member = ch.members.get(key)
                if node == self.view.node_id and member is not None:
                    event = dumps({"type": "enter", **member.to_wire()})
                    self.view.effects.append(PresenceWrite(name, "enter", dumps(list(key)),
                                                           event))
