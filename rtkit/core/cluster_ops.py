"""Channel operations of a broker node whose channels are shared through a backplane.

:class:`ClusterOps` replaces :class:`~rtkit.core.channel_ops.ChannelOps` when the broker is
started with a backplane (the choice is made once, when the core is built: the in-memory
broker runs the plain class and pays nothing for this one). What changes:

* **publish** is handed to the backplane (:class:`~rtkit.core.backplane.Publish`), which
  assigns the serial, stores and de-duplicates the message and delivers it to every node;
  the publisher's ``ack`` follows the backplane's answer (:meth:`published`). A client's
  ``close`` is answered once its publishes are;
* **deliveries** come from the backplane (:meth:`delivered`), checked serial by serial by the
  node's view (:class:`~rtkit.core.backplane.NodeView`) and fanned out to this node's
  subscribers as in the in-memory broker;
* **attach, history and presence** need the channel followed: the first one waits until
  the node knows the channel's position; a resume, rewind or history reaching further back
  than the node's copy waits for the older messages to be read from the backplane
  (``rtkit.core.cluster_requests``). What the backplane no longer holds is reported lost
  exactly as the in-memory broker reports evicted messages;
* **presence** changes of this node's connections are written to the backplane; the other
  nodes' changes arrive as events; the members of a node that stopped refreshing its record
  leave (``rtkit.core.cluster_presence``).

This module keeps the publishes, the deliveries and the node's copy of each channel (what
the backplane answers to follows, reads and position checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.backplane import (
    Action,
    Deliver,
    Entry,
    Feed,
    NewEpoch,
    NodeView,
    Publish,
    Skip,
)
from rtkit.core.channel_ops import ChannelOps, Refuse
from rtkit.core.channels import Channel, ChannelRegistry
from rtkit.core.cluster_presence import SharedPresence
from rtkit.core.cluster_requests import UNAVAILABLE, Step, WaitingRequests
from rtkit.core.config import FRAME_RESERVE, BrokerConfig
from rtkit.core.frames import dumps, nbytes
from rtkit.core.session import Outbox, Session
from rtkit.core.store import Record
from rtkit.core.streams import Deferred
from rtkit.errors import RtkitError, error

__all__ = ["ClusterOps", "Fatal", "Step"]

#: End a session with a fatal error (the broker's ``fatal``).
Fatal = Callable[[Session, RtkitError], None]


class ClusterOps(ChannelOps):
    """Channel frames of a node's sessions, with channels shared through a backplane."""

    def __init__(self, config: BrokerConfig, registry: ChannelRegistry, outbox: Outbox,
                 stats: dict[str, int], refuse: Refuse, view: NodeView,
                 sessions: dict[str, Session], fatal: Fatal,
                 wall: Callable[[float], float]) -> None:
        super().__init__(config, registry, outbox, stats, refuse)
        self.view = view
        self.sessions = sessions
        self.fatal = fatal
        self.wall = wall
        #: Publishes handed to the backplane: token -> (session, ref JSON, message id JSON).
        self.pending: dict[int, tuple[Session, str, str, str]] = {}
        #: Sessions whose ``close`` waits for their publishes to be answered.
        self.closing: dict[Session, Deferred] = {}
        self.requests = WaitingRequests(self)
        self._wake = self.requests.wake
        self.members = SharedPresence(view, registry, partial(ChannelOps.presence, self))
        registry.shared = True
        registry.own_members = self.members.own_members
        registry.on_reclaim = self._reclaimed
        for name in ("backplane_received", "backplane_publish_failed"):
            stats.setdefault(name, 0)

    # ---------------------------------------------------------------- requests

    def on_attach(self, s: Session, f: fr.Attach, now: float) -> None:
        self.requests.on_attach(s, f, now)

    def on_history(self, s: Session, f: fr.History, now: float) -> None:
        self.requests.on_history(s, f, now)

    def on_presence(self, s: Session, f: fr.Presence, wall: float) -> None:
        self.requests.on_presence(s, f, wall)

    def when_ready(self, ch: Channel, need: Callable[[Channel], int | None],
                   done: Callable[[str | None], None]) -> None:
        """For a request outside any session (the REST interface): ``done(None)`` once
        ``ch`` is followed and the node's copy of its history reaches back to ``need(ch)``
        (None: no older message is needed), or ``done(reason)`` if the backplane failed
        meanwhile. The channel is kept (counted as attaching) until then."""
        self.requests.when_ready(ch, need, done)

    # ---------------------------------------------------------------- publish

    def publish(self, s: Session, ref: fr.Ref | None, channel: str, name: str,
                data_json: str, pub_id: str | None, now: float, wall: float) -> None:
        """Check one message, then hand it to the backplane (the ack follows its answer)."""
        ch = self.publish_target(s, ref, channel, name, data_json)
        if ch is None:
            return
        c = self.config
        key = None if pub_id is None else f"{s.owner}|{pub_id}"
        msg_id = pub_id if pub_id is not None else f"{s.connection_id}:{s.published + 1}"
        id_json = dumps(msg_id)
        head = f'{{"id":{id_json},"name":{dumps(name)},"data":{data_json},"serial":'
        tail = f',"client_id":{s.client_id_json}}}'
        # The serial and timestamp add at most 50 bytes.
        if nbytes(head) + nbytes(tail) + 50 + FRAME_RESERVE > c.max_frame_size:
            self.refuse(s, ref, error(42901, "message too large for a frame"), True)
            return
        s.published += 1
        s.inflight += 1
        token = self.view.token()
        ref_json = str(ref) if type(ref) is int else dumps(ref)
        self.pending[token] = (s, ref_json, ch.name_json, id_json)
        self.view.effects.append(Publish(token, ch.name, key, head, tail))

    def published(self, token: int, serial: int, timestamp: int, duplicate: bool) -> None:
        """The backplane's answer to a :class:`Publish`: acknowledge it."""
        entry = self.pending.pop(token, None)
        if entry is None:
            return
        s, ref_json, name_json, id_json = entry
        if not duplicate:
            self.stats["published"] += 1
        if not s.closed:  # (else the client sends it again, with its id, after resuming)
            dup = ',"duplicate":true' if duplicate else ""
            self.outbox.text((s,), f'{{"action":"ack","ref":{ref_json},"channel":{name_json},'
                                   f'"id":{id_json},"serial":{serial},"timestamp":{timestamp}'
                                   f'{dup}}}')
        self._answered(s)

    def publish_failed(self, token: int, reason: str) -> None:
        """The backplane could not take a :class:`Publish`: refuse it (50000, transient)."""
        entry = self.pending.pop(token, None)
        if entry is None:
            return
        s = entry[0]
        self.stats["backplane_publish_failed"] += 1
        if not s.closed:
            err = dumps(error(50000, f"{UNAVAILABLE}: {reason}").to_wire())
            self.outbox.text((s,), f'{{"action":"nack","ref":{entry[1]},"error":{err}}}')
        self._answered(s)

    def _answered(self, s: Session) -> None:
        s.inflight -= 1
        if s.inflight == 0:
            d = self.closing.pop(s, None)
            if d is not None:
                d.ready = True
                if not s.flow_control:
                    self.streamer.pump(s, math.inf)

    def close(self, s: Session, ref: fr.Ref | None) -> None:
        """``closed`` comes after the acks of the publishes sent before ``close``."""
        if not s.inflight:
            super().close(s, ref)
            return

        def run(d: Deferred) -> bool:
            if s.inflight:
                d.ready = False
                self.closing[s] = d
                return False
            super(ClusterOps, self).close(s, ref)
            return True

        d = Deferred(None, run)
        self.closing[s] = d
        self.streamer.start(s, d)

    # ---------------------------------------------------------------- deliveries

    def delivered(self, name: str, epoch: str, serial: int, timestamp: int, fragment: str,
                  now: float) -> None:
        """A message from the backplane's live feed."""
        self.stats["backplane_received"] += 1
        ch = self.registry.channels.get(name)
        feed = self.view.feeds.get(name)
        if ch is None or feed is None:
            return
        if (feed.live and not feed.repair and epoch == feed.epoch
                and serial == feed.serial + 1):  # the usual case, inline
            feed.serial = serial
            self._deliver(ch, serial, timestamp, fragment, now)
            return
        self._apply(ch, self.view.message(name, epoch, serial, timestamp, fragment), now)

    def _deliver(self, ch: Channel, serial: int, timestamp: int, fragment: str,
                 now: float) -> None:
        fsize = nbytes(fragment)
        if (ch.pending_events
                or ch.pending_bytes + fsize + 1 + ch.envelope > self.config.max_frame_size):
            self.seal(ch)
        ch.serial = serial
        ch.store.append((serial, timestamp, now, None, fragment, fsize), now)
        if ch.subscribers:
            ch.queue(fragment, fsize)
            self.dirty[ch] = None

    def _apply(self, ch: Channel, actions: Iterable[Action], now: float) -> None:
        epoch = False
        for action in actions:
            if type(action) is Deliver:
                self._deliver(ch, action.serial, action.timestamp, action.fragment, now)
            elif type(action) is Skip:
                # The copy must hold consecutive serials: it starts again after the hole.
                self.seal(ch)
                ch.store.clear()
                ch.serial = action.serial
            elif type(action) is NewEpoch:
                self._new_epoch(ch, action)
                epoch = True
        feed = self.view.feeds.get(ch.name) if epoch else None
        if feed is not None and feed.waiters:
            # What waited for a read of the old epoch (its answer will be ignored) looks
            # again, in the new one.
            self._wake(feed)

    def _new_epoch(self, ch: Channel, action: NewEpoch) -> None:
        """The backplane lost this channel's history. Its subscribers here hold positions of
        the old epoch: they are disconnected (50002, resumable) and, resuming, are told what
        was lost, as after a restart of an in-memory broker."""
        self.seal(ch)
        for s in [s for s in self.sessions.values() if ch.name in s.channels]:
            self.fatal(s, error(50002))
        ch.epoch, ch.serial = action.epoch, action.serial
        ch.store.clear()

    # ---------------------------------------------------------------- following

    def followed(self, name: str, gen: int, epoch: str, serial: int,
                 members: list[tuple[str, str]], now: float) -> None:
        """The driver follows ``name`` (for ``gen``): its position, and its members as
        (node, ``presence_event`` item JSON)."""
        feed = self.view.feeds.get(name)
        ch = self.registry.channels.get(name)
        first = feed is not None and not feed.live
        actions = self.view.followed(name, gen, epoch, serial)
        if actions is None or feed is None:
            return
        if ch is None:  # (cannot happen: a feed exists only for a channel that does)
            self.view.unfollow(name)
            return
        if first:
            ch.epoch, ch.serial = feed.epoch, feed.serial
            ch.store.clear()
            self.members.followed(ch, feed, members)
        self._apply(ch, actions, now)
        self._wake(feed)

    def follow_failed(self, name: str, gen: int, reason: str) -> None:
        """The driver could not follow ``name``: what waits for it is refused (50000,
        transient: clients retry), and the next request tries again."""
        feed = self.view.feeds.get(name)
        if feed is None or feed.gen != gen or feed.live:
            return
        self.view.unfollow(name)  # the next request tries again
        feed.failed = reason
        self._wake(feed)

    def positions(self, found: dict[str, tuple[str, int]], now: float) -> None:
        """The answer to a :class:`~rtkit.core.backplane.Check`."""
        for name, (epoch, serial) in found.items():
            ch = self.registry.channels.get(name)
            if ch is not None:
                self._apply(ch, self.view.position(name, epoch, serial), now)

    def read_done(self, name: str, token: int, epoch: str, serial: int,
                  entries: list[Entry], now: float) -> None:
        """The answer to a :class:`~rtkit.core.backplane.Read` (entries oldest first)."""
        ch = self.registry.channels.get(name)
        feed = self.view.feeds.get(name)
        if ch is None or feed is None:
            return
        if token == feed.repair:
            self._apply(ch, self.view.repaired(name, token, epoch, serial, entries), now)
            self._wake(feed)  # resumes waiting for this node to catch up
            return
        result = self.view.loaded(name, token, epoch, serial, entries, self.floor(ch))
        if result is None:
            return
        keep, actions = result
        self._apply(ch, actions, now)
        if keep:
            wall = self.wall(now)
            ch.store.prepend([_record(e, now, wall) for e in keep])
        self._wake(feed)

    def read_failed(self, name: str, token: int, reason: str) -> None:
        feed = self.view.feeds.get(name)
        if feed is None:
            return
        if token == feed.repair:
            self.view.repair_failed(name, token)
            self._wake(feed)
        elif token == feed.loading:
            feed.loading = 0
            feed.failed = reason
            self._wake(feed)

    def _reclaimed(self, ch: Channel) -> None:
        self.view.unfollow(ch.name)

    # ---------------------------------------------------------------- the node's copy

    def floor(self, ch: Channel) -> int:
        """The first serial of the node's copy (``serial + 1`` when it is empty)."""
        first = ch.store.first_serial()
        return ch.serial + 1 if first is None else first

    def available(self, ch: Channel, feed: Feed, need: int) -> int | None:
        """The first serial >= ``need`` the backplane still holds (``serial + 1`` if none),
        once the node's copy reaches back to it; None while older messages are loaded."""
        floor = self.floor(ch)
        if need >= floor:
            return need
        bottom = feed.bottom
        if bottom is not None and bottom[1] == floor and bottom[0] <= need:
            return floor  # the backplane held nothing older when last read
        self.view.load(feed, need, floor)
        return None

    # ---------------------------------------------------------------- presence

    def presence(self, ch: Channel, op: str, member: fr.PresenceMember) -> None:
        """A change of this node's member: applied here and written to the backplane."""
        super().presence(ch, op, member)
        self.members.written(ch, op, member)

    def presence_event(self, name: str, node: str, text: str) -> None:
        """A presence change announced by another node (``text``: a ``presence_event``
        item as JSON)."""
        self.members.event(name, node, text)

    def nodes_seen(self, rows: dict[str, dict[str, Any]], now_ms: int,
                   was_missing: bool) -> list[str]:
        """The node records read from the backplane (``now_ms`` on its clock). The members
        of nodes gone leave; if this node's own record had expired (``was_missing``: the
        others took it for gone), its members are written again. Returns the nodes gone."""
        return self.members.nodes_seen(rows, now_ms, was_missing)

    def nodes_gone(self, nodes: list[str]) -> None:
        """These nodes stopped refreshing their record: their members leave (announced)."""
        self.members.nodes_gone(nodes)

    def rejoin(self) -> None:
        """This node's record had expired (the others removed its members): write its
        members again."""
        self.members.rejoin()


def _record(entry: Entry, now: float, wall: float) -> Record:
    """A stored record for a message read from the backplane (arrival time estimated from
    its timestamp, so it expires with its age)."""
    serial, timestamp, fragment = entry
    age = max(0.0, wall - timestamp / 1000)
    return (serial, timestamp, now - age, None, fragment, nbytes(fragment))
