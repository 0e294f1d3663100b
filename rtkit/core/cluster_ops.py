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
* **attach, history and presence** need the channel followed: the first one waits
  (a :class:`~rtkit.core.streams.Deferred`, holding the session's place like a replay) until
  the node knows the channel's position; a resume, rewind or history reaching further back
  than the node's copy waits for the older messages to be read from the backplane. What the
  backplane no longer holds is reported lost exactly as the in-memory broker reports
  evicted messages;
* **presence** changes of this node's connections are written to the backplane; the other
  nodes' changes arrive as events; the members of a node that stopped refreshing its record
  leave (:meth:`nodes_gone`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.backplane import (
    Action,
    Deliver,
    Entry,
    Feed,
    NewEpoch,
    NodeView,
    PresenceWrite,
    Publish,
    Skip,
)
from rtkit.core.channel_ops import ChannelOps, Refuse
from rtkit.core.channels import Channel, ChannelRegistry
from rtkit.core.config import FRAME_RESERVE, BrokerConfig
from rtkit.core.frames import dumps, nbytes
from rtkit.core.session import Outbox, Session
from rtkit.core.store import Record
from rtkit.core.streams import Deferred, HistoryAnswer
from rtkit.errors import RtkitError, error

#: A step of a request waiting for the backplane, given the feed it waited on (None the
#: first time): returns the feed to wait on, or None when the request is done.
Step = Callable[["Feed | None"], "Feed | None"]
#: End a session with a fatal error (the broker's ``_fatal``).
Fatal = Callable[[Session, RtkitError], None]

_UNAVAILABLE = "the backplane is unavailable; try again"


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
        registry.shared = True
        registry.own_members = self._own_members
        registry.on_reclaim = self._reclaimed
        for name in ("backplane_received", "backplane_publish_failed"):
            stats.setdefault(name, 0)

    # ---------------------------------------------------------------- waiting

    def _run(self, s: Session, ch: Channel | None, step: Step) -> None:
        """Run ``step`` now; if it must wait, hold the session's place until it is done."""
        feed = step(None)
        if feed is None:
            return
        waited = [feed]

        def again(d: Deferred) -> bool:
            if s.closed:
                return True
            waiting = step(waited[0])
            if waiting is None:
                return True
            d.ready = False
            waited[0] = waiting
            waiting.waiters.append((s, d))
            return False

        d = Deferred(ch, again)
        feed.waiters.append((s, d))
        self.streamer.start(s, d)

    def _wake(self, feed: Feed) -> None:
        waiters, feed.waiters = feed.waiters, []
        for s, d in waiters:
            if s is not None:
                d.ready = True
        for s, d in waiters:
            if s is None:
                d(feed)  # a request outside a session (see when_ready)
            elif not s.flow_control and not s.closed:
                self.streamer.pump(s, math.inf)
        # (A driver with flow control pumps the sessions waiting on its next flush.)

    def when_ready(self, ch: Channel, need: Callable[[Channel], int | None],
                   done: Callable[[str | None], None]) -> None:
        """For a request outside any session (the REST interface): ``done(None)`` once
        ``ch`` is followed and the node's copy of its history reaches back to ``need(ch)``
        (None: no older message is needed), or ``done(reason)`` if the backplane failed
        meanwhile. The channel is kept (counted as attaching) until then."""
        ch.attaching += 1

        def finish(reason: str | None) -> None:
            ch.attaching -= 1
            done(reason)

        def step(waited: Feed | None) -> None:
            if waited is not None and waited.failed is not None:
                finish(waited.failed)
                return
            feed = self._live(ch)
            if feed.live:
                first = need(ch)
                if (first is None or first > ch.serial
                        or self._available(ch, feed, max(1, first)) is not None):
                    finish(None)
                    return
            feed.waiters.append((None, step))

        step(None)

    def _live(self, ch: Channel) -> Feed:
        return self.view.follow(ch.name)

    # ---------------------------------------------------------------- publish

    def publish(self, s: Session, ref: fr.Ref | None, channel: str, name: str,
                data_json: str, pub_id: str | None, now: float, wall: float) -> None:
        """Check one message, then hand it to the backplane (the ack follows its answer)."""
        c = self.config
        try:
            self.check(s, "publish", channel)
            size = nbytes(data_json) + nbytes(name)
            if size > c.max_message_size:
                raise error(42901, f"message is {size} bytes; the limit is {c.max_message_size}")
            ch = self.registry.channels.get(channel) or self.registry.get_or_create(
                channel, s.owner)
        except RtkitError as exc:
            self.refuse(s, ref, exc, True)
            return
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
            err = dumps(error(50000, f"{_UNAVAILABLE}: {reason}").to_wire())
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
            for node, text in members:
                self._remote_presence(ch, feed, node, text, announce=False)
            early, feed.early_presence = feed.early_presence, []
            for node, text in early:
                self._remote_presence(ch, feed, node, text, announce=True)
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
        result = self.view.loaded(name, token, epoch, serial, entries, self._floor(ch))
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

    def _own_members(self, ch: Channel) -> bool:
        """Whether a session of this node is present on ``ch`` (other nodes' members are
        copies: they keep no channel followed)."""
        feed = self.view.feeds.get(ch.name)
        if feed is None:
            return bool(ch.members)
        me = self.view.node_id
        return any(node == me for node in feed.member_nodes.values())

    # ---------------------------------------------------------------- the node's copy

    def _floor(self, ch: Channel) -> int:
        """The first serial of the node's copy (``serial + 1`` when it is empty)."""
        first = ch.store.first_serial()
        return ch.serial + 1 if first is None else first

    def _available(self, ch: Channel, feed: Feed, need: int) -> int | None:
        """The first serial >= ``need`` the backplane still holds (``serial + 1`` if none),
        once the node's copy reaches back to it; None while older messages are loaded."""
        floor = self._floor(ch)
        if need >= floor:
            return need
        bottom = feed.bottom
        if bottom is not None and bottom[1] == floor and bottom[0] <= need:
            return floor  # the backplane held nothing older when last read
        self.view.load(feed, need, floor)
        return None

    def _failed(self, s: Session, ref: fr.Ref | None, waited: Feed | None) -> bool:
        """The follow or load the request waited for failed: refuse it (50000, transient:
        the client tries again)."""
        if waited is None or waited.failed is None:
            return False
        self.refuse(s, ref, error(50000, f"{_UNAVAILABLE}: {waited.failed}"), False)
        return True

    # ---------------------------------------------------------------- attach, history

    def on_attach(self, s: Session, f: fr.Attach, now: float) -> None:
        try:
            self.check(s, "subscribe", f.channel)
            if f.channel not in s.channels and (
                len(s.channels) >= self.config.max_channels_per_connection
            ):
                raise error(42906)
            ch = self.registry.get_or_create(f.channel, s.owner)
        except RtkitError as exc:
            self.refuse(s, f.ref, exc, False)
            return
        caught_up = [False]
        self._run(s, ch, lambda waited: self._attach(s, f, ch, waited, caught_up))

    def _attach(self, s: Session, f: fr.Attach, ch: Channel, waited: Feed | None,
                caught_up: list[bool]) -> Feed | None:
        if self._failed(s, f.ref, waited):
            return None
        feed = self._live(ch)
        if not feed.live:
            return feed
        if f.from_serial is not None and f.from_serial > ch.serial and f.epoch == ch.epoch:
            # The client has seen more than this node received yet (it comes from another
            # node): catch up first, so it gets nothing twice. (Once: a client may name a
            # serial the backplane never had.)
            if feed.repair:
                return feed
            if not caught_up[0]:
                caught_up[0] = True
                self.view.catch_up(feed, f.from_serial)
                if feed.repair:
                    return feed
        replay_from: int | None = None
        lost, lost_from, lost_to = False, None, None
        if f.from_serial is not None:
            if f.epoch is not None and f.epoch != ch.epoch:
                lost = True  # another incarnation of the channel: old serials mean nothing
            elif f.from_serial < ch.serial:
                have = self._available(ch, feed, f.from_serial + 1)
                if have is None:
                    return feed
                if have > f.from_serial + 1:
                    lost, lost_from, lost_to = True, f.from_serial + 1, have - 1
                replay_from = have
            if lost:
                self.stats["continuity_lost"] += 1
        elif f.rewind:
            need = max(1, ch.serial - min(f.rewind, self.config.history_size) + 1)
            have = self._available(ch, feed, need)
            if have is None:
                return feed
            replay_from = have
        self.attached(s, f.ref, ch, replay_from, lost, lost_from, lost_to)
        return None

    def on_history(self, s: Session, f: fr.History, now: float) -> None:
        try:
            self.check(s, "history", f.channel)
            ch = self.registry.get_or_create(f.channel, s.owner)
        except RtkitError as exc:
            self.refuse(s, f.ref, exc, False)
            return
        self._run(s, ch, lambda waited: self._history(s, f, ch, waited))

    def _history(self, s: Session, f: fr.History, ch: Channel, waited: Feed | None
                 ) -> Feed | None:
        if self._failed(s, f.ref, waited):
            return None
        feed = self._live(ch)
        if not feed.live:
            return feed
        limit = min(f.limit or 100, max(1, self.config.history_size))
        hi = ch.serial if f.before is None else min(ch.serial, f.before - 1)
        lo = max(1, f.after + 1 if f.after is not None else hi - limit + 1)
        if lo <= hi:
            have = self._available(ch, feed, lo)
            if have is None:
                return feed
            lo = have
        self.streamer.start(s, HistoryAnswer(dumps(f.ref), ch, ch.name_json, lo, hi, limit))
        return None

    # ---------------------------------------------------------------- presence

    def on_presence(self, s: Session, f: fr.Presence, wall: float) -> None:
        feed = self.view.feeds.get(f.channel)
        if (feed is not None and feed.live) or f.op == "leave":
            super().on_presence(s, f, wall)
            return
        allowed = s.capability.allows("presence", f.channel) or (
            f.op == "get" and s.capability.allows("subscribe", f.channel))
        try:
            ch = self.registry.get_or_create(f.channel, s.owner) if allowed else None
        except RtkitError:
            ch = None
        if ch is None:
            super().on_presence(s, f, wall)  # refused there, with the right error
            return

        def step(waited: Feed | None) -> Feed | None:
            if self._failed(s, f.ref, waited):
                return None
            feed = self._live(ch)
            if not feed.live:
                return feed
            super(ClusterOps, self).on_presence(s, f, wall)
            return None

        self._run(s, ch, step)

    def presence(self, ch: Channel, op: str, member: fr.PresenceMember) -> None:
        """A change of this node's member: applied here and written to the backplane."""
        super().presence(ch, op, member)
        feed = self.view.feeds.get(ch.name)
        key = (member.client_id, member.connection_id)
        if feed is not None:
            if op == "leave":
                feed.member_nodes.pop(key, None)
            else:
                feed.member_nodes[key] = self.view.node_id
        event = dumps({"type": op, **member.to_wire()})
        self.view.effects.append(PresenceWrite(ch.name, op, dumps(list(key)), event))

    def presence_event(self, name: str, node: str, text: str) -> None:
        """A presence change announced by another node (``text``: a ``presence_event``
        item as JSON)."""
        feed = self.view.feeds.get(name)
        ch = self.registry.channels.get(name)
        if feed is None or ch is None or node == self.view.node_id:
            return
        if not feed.live:
            feed.early_presence.append((node, text))
            return
        self._remote_presence(ch, feed, node, text, announce=True)

    def _remote_presence(self, ch: Channel, feed: Feed, node: str, text: str,
                         announce: bool) -> None:
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
            ChannelOps.presence(self, ch, op, member)
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
                    ChannelOps.presence(self, ch, "leave", member)

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


def _record(entry: Entry, now: float, wall: float) -> Record:
    """A stored record for a message read from the backplane (arrival time estimated from
    its timestamp, so it expires with its age)."""
    serial, timestamp, fragment = entry
    age = max(0.0, wall - timestamp / 1000)
    return (serial, timestamp, now - age, None, fragment, nbytes(fragment))
