"""A broker node's view of channels shared through a backplane, sans I/O.

With a backplane (``rtkit.serve(backplane="redis://...")``) several broker nodes share their
channels. The backplane is the one place where a channel's serials are assigned and its
history is kept; each node *follows* the channels its clients use and keeps a local copy of
their recent messages (a cache: replays and history answers are served from it, and filled
from the backplane when it does not reach back far enough).

This module holds the node's decisions, and nothing of the I/O: the driver
(``rtkit.aio.backplane``) performs the :data:`Effect` s it is given and feeds back what the
backplane answered and what it delivered (the effects and the :data:`Action` s the node
applies are defined in ``rtkit.core.backplane_effects``). Delivery from the backplane is
**at most once** (Redis PUB/SUB drops messages when a subscriber's link breaks or falls
behind), so a node checks every serial it receives against the last one it delivered:

* the next serial is delivered; a serial already delivered is a duplicate and dropped;
* a serial further ahead is a **gap**: the messages after it wait while the missing ones are
  read from the backplane's history (:class:`Read`), then everything goes out in order;
  what history no longer holds is skipped (:class:`Skip`: clients then find it missing and
  report the loss, as for any message evicted early);
* a message or position of another **epoch** means the backplane lost the channel's history
  (Redis restarted empty, failed over, or evicted the channel): :class:`NewEpoch`, after which
  the node's clients of that channel must resume and be told what was lost;
* a position check (:class:`Check`, every ``position_check_interval``, and after the link to
  the backplane came back) catches the last messages of a burst lost with no later message to
  reveal the gap; a position *behind* what this node delivered means the backplane went back
  in time (an asynchronous replica promoted): :class:`Rebase` asks for a new epoch, so the
  reused serials cannot be mistaken for the old ones.

Presence is shared too: each member is written to the backplane with the node that holds its
connection; nodes refresh their liveness every ``node_timeout / 3`` and :class:`NodeTable`
decides which nodes are gone (no refresh for ``node_timeout``), so their members leave.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any

from rtkit.core.backplane_effects import (
    Action,
    Check,
    Deliver,
    Effect,
    Entry,
    Follow,
    NewEpoch,
    PresenceWrite,
    Publish,
    Read,
    Rebase,
    Skip,
    Unfollow,
)

__all__ = [
    "Action", "Check", "Deliver", "Effect", "Entry", "Feed", "Follow", "NewEpoch", "NodeTable",
    "NodeView", "PresenceWrite", "Publish", "Read", "Rebase", "Skip", "Unfollow",
]

# ---------------------------------------------------------------- one channel


class Feed:
    """One channel as this node follows it. ``serial`` is the last one delivered."""

    __slots__ = ("ahead", "bottom", "early", "early_presence", "epoch", "failed", "gen",
                 "live", "load_floor", "load_min", "loading", "member_nodes", "name", "repair",
                 "repair_to", "retired", "serial", "waiters")

    def __init__(self, name: str, gen: int) -> None:
        self.name = name
        self.gen = gen
        self.live = False  # subscribed and positioned
        self.epoch = ""
        self.serial = 0
        #: What arrived before the position was known: (epoch, serial, timestamp, json).
        self.early: list[tuple[str, int, int, str]] = []
        #: Presence events that arrived before the position: (node, event JSON).
        self.early_presence: list[tuple[str, str]] = []
        #: Messages after a gap, waiting for the repair: serial -> (timestamp, json).
        self.ahead: dict[int, tuple[int, str]] = {}
        self.repair = 0  # token of the repair read in flight (0: none)
        self.repair_to = 0
        self.retired: set[str] = set()  # earlier epochs: their late messages are ignored
        #: Requests waiting for this channel (its position, or older messages loaded):
        #: (session, Deferred).
        self.waiters: list[tuple[Any, Any]] = []
        #: Why the last follow or load failed (the requests that waited are refused).
        self.failed: str | None = None
        self.loading = 0  # token of the history read in flight (0: none)
        self.load_floor = 0  # the cache's floor when it was asked for
        self.load_min = 0  # the oldest serial it asked for
        #: (oldest serial asked for, first serial found): the backplane held nothing in
        #: between when last read (valid while the cache still starts there).
        self.bottom: tuple[int, int] | None = None
        #: Members of other nodes (and this one): (client_id, connection_id) -> node id.
        self.member_nodes: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------- the node


class NodeView:
    """The channels this node follows, the nodes alive, and the effects it wants performed
    (:meth:`take`).

    ``read_limit``: the most messages one :class:`Read` asks for (longer ranges are read in
    several steps, so a node never holds one huge answer)."""

    def __init__(self, node_id: str, node_timeout: float = 15.0, read_limit: int = 500) -> None:
        self.node_id = node_id
        self.nodes = NodeTable(node_id, node_timeout)
        self.read_limit = read_limit
        self.feeds: dict[str, Feed] = {}
        self.effects: list[Effect] = []
        self._tokens = itertools.count(1)
        self._gens = itertools.count(1)
        self.stats = {"backplane_duplicates": 0, "backplane_gaps": 0, "backplane_repaired": 0,
                      "backplane_skipped": 0, "backplane_epochs": 0, "backplane_rebases": 0}

    def token(self) -> int:
        return next(self._tokens)

    def take(self) -> list[Effect]:
        effects, self.effects = self.effects, []
        return effects

    # -- following

    def follow(self, name: str) -> Feed:
        """The channel's feed, following it from now on if it was not."""
        feed = self.feeds.get(name)
        if feed is None:
            feed = self.feeds[name] = Feed(name, next(self._gens))
            self.effects.append(Follow(name, feed.gen))
        return feed

    def unfollow(self, name: str) -> None:
        if self.feeds.pop(name, None) is not None:
            self.effects.append(Unfollow(name))

    def followed(self, name: str, gen: int, epoch: str, serial: int) -> list[Action] | None:
        """The driver subscribed to ``name`` (for ``gen``) and read its position. Returns
        None when that is stale (unfollowed since); else what to do, the first time with the
        position set (the caller reads ``feed.epoch``/``feed.serial``)."""
        feed = self.feeds.get(name)
        if feed is None or feed.gen != gen:
            return None
        if feed.live:  # subscribed again after the link came back: a position check
            return self.position(name, epoch, serial)
        feed.live, feed.epoch, feed.serial = True, epoch, serial
        out: list[Action] = []
        early, feed.early = feed.early, []
        for e_epoch, e_serial, ts, text in early:
            self._accept(feed, e_epoch, e_serial, ts, text, out)
        return out

    # -- live messages

    def message(self, name: str, epoch: str, serial: int, timestamp: int,
                fragment: str) -> list[Action]:
        """A message delivered by the backplane (at most once, in serial order per channel)."""
        feed = self.feeds.get(name)
        if feed is None:
            return []  # unfollowed meanwhile
        out: list[Action] = []
        if not feed.live:
            feed.early.append((epoch, serial, timestamp, fragment))
        else:
            self._accept(feed, epoch, serial, timestamp, fragment, out)
        return out

    def _accept(self, feed: Feed, epoch: str, serial: int, ts: int, fragment: str,
                out: list[Action]) -> None:
        if epoch != feed.epoch:
            if epoch in feed.retired:
                return  # a late message of an epoch already replaced
            self._new_epoch(feed, epoch, serial - 1, out)
        if feed.repair:
            if serial > feed.serial:
                feed.ahead[serial] = (ts, fragment)
            return
        if serial == feed.serial + 1:
            feed.serial = serial
            out.append(Deliver(serial, ts, fragment))
        elif serial <= feed.serial:
            self.stats["backplane_duplicates"] += 1
        else:
            self.stats["backplane_gaps"] += 1
            feed.ahead[serial] = (ts, fragment)
            self._repair(feed, serial - 1)

    def _repair(self, feed: Feed, upto: int) -> None:
        feed.repair = self.token()
        feed.repair_to = upto
        self.effects.append(Read(feed.repair, feed.name, feed.serial + 1, upto,
                                 self.read_limit, False))

    def repaired(self, name: str, token: int, epoch: str, serial: int,
                 entries: list[Entry]) -> list[Action]:
        """The answer to a repair :class:`Read` (``epoch``/``serial``: the position then)."""
        feed = self.feeds.get(name)
        if feed is None or feed.repair != token:
            return []
        feed.repair = 0
        out: list[Action] = []
        if epoch != feed.epoch:
            self._new_epoch(feed, epoch, serial, out)
            return out
        for e_serial, ts, fragment in entries:
            if e_serial <= feed.serial:
                continue
            if e_serial > feed.serial + 1:  # no longer stored: lost
                self._skip(feed, e_serial - 1, out)
            feed.serial = e_serial
            self.stats["backplane_repaired"] += 1
            out.append(Deliver(e_serial, ts, fragment))
        # Never past the backplane's own position (a client may name a serial it never had).
        target = min(feed.repair_to, serial)
        if feed.serial < target:
            if len(entries) >= self.read_limit:
                self._repair(feed, target)  # the next part
                return out
            self._skip(feed, target, out)
        self._drain(feed, out)
        return out

    def catch_up(self, feed: Feed, serial: int) -> None:
        """A client has seen ``serial``, so the backplane has it: read what this node has
        not received yet (unless a repair is under way)."""
        if feed.live and not feed.repair and serial > feed.serial:
            self._repair(feed, serial)

    def repair_failed(self, name: str, token: int) -> None:
        """The repair read failed (the backplane is unreachable): the next position check
        starts another."""
        feed = self.feeds.get(name)
        if feed is not None and feed.repair == token:
            feed.repair = 0
            # What waits ahead is kept: it goes out after the next repair.

    def _drain(self, feed: Feed, out: list[Action]) -> None:
        ahead = feed.ahead
        while ahead:
            nxt = feed.serial + 1
            entry = ahead.pop(nxt, None)
            if entry is not None:
                feed.serial = nxt
                out.append(Deliver(nxt, entry[0], entry[1]))
                continue
            for s in [s for s in ahead if s <= feed.serial]:
                del ahead[s]  # duplicates of what the repair brought
                self.stats["backplane_duplicates"] += 1
            if ahead:
                self._repair(feed, min(ahead) - 1)
            return

    def _skip(self, feed: Feed, serial: int, out: list[Action]) -> None:
        self.stats["backplane_skipped"] += serial - feed.serial
        feed.serial = serial
        out.append(Skip(serial))

    def _new_epoch(self, feed: Feed, epoch: str, serial: int, out: list[Action]) -> None:
        self.stats["backplane_epochs"] += 1
        feed.retired.add(feed.epoch)
        feed.epoch, feed.serial = epoch, serial
        feed.ahead.clear()
        feed.repair = feed.loading = 0
        feed.bottom = None
        out.append(NewEpoch(epoch, serial))

    # -- positions

    def check(self) -> None:
        """Ask for the position of every channel followed (see :class:`Check`)."""
        names = tuple(name for name, feed in self.feeds.items() if feed.live)
        if names:
            self.effects.append(Check(names))

    def position(self, name: str, epoch: str, serial: int) -> list[Action]:
        """The backplane's position of ``name`` (a :class:`Check`, or a follow again)."""
        feed = self.feeds.get(name)
        out: list[Action] = []
        if feed is None or not feed.live:
            return out
        if epoch != feed.epoch:
            if epoch not in feed.retired:
                self._new_epoch(feed, epoch, serial, out)
        elif serial > feed.serial:
            if not feed.repair:
                self.stats["backplane_gaps"] += 1
                self._repair(feed, serial)
        elif serial < feed.serial:
            # Possibly a lost write (a replica promoted); Rebase acts only if it still is.
            self.stats["backplane_rebases"] += 1
            self.effects.append(Rebase(name, epoch, feed.serial))
        return out

    # -- loading history into the cache

    def load(self, feed: Feed, need: int, floor: int) -> None:
        """Read what precedes ``floor`` (the cache's first serial) back to ``need``, newest
        first, unless a load is already under way (its end wakes the waiters again)."""
        if feed.loading:
            return
        feed.failed = None
        feed.loading, feed.load_floor, feed.load_min = self.token(), floor, need
        self.effects.append(Read(feed.loading, feed.name, need, floor - 1, self.read_limit,
                                 True))

    def loaded(self, name: str, token: int, epoch: str, serial: int, entries: list[Entry],
               floor: int) -> tuple[list[Entry], list[Action]] | None:
        """The answer to a load (entries oldest first). ``floor``: the cache's floor now.
        Returns the entries to put before the cache (contiguous up to ``floor - 1``) and any
        actions, or None when the answer is stale."""
        feed = self.feeds.get(name)
        if feed is None or feed.loading != token:
            return None
        feed.loading = 0
        out: list[Action] = []
        if epoch != feed.epoch:
            if epoch not in feed.retired:
                self._new_epoch(feed, epoch, serial, out)
            return [], out
        if floor != feed.load_floor:
            return [], out  # the cache moved meanwhile: ask again
        keep: list[Entry] = []
        expected = floor - 1
        for entry in reversed(entries):  # contiguous below the floor only
            if entry[0] != expected:
                break
            keep.append(entry)
            expected -= 1
        keep.reverse()
        if len(entries) < self.read_limit:  # the backplane had nothing older in the range
            feed.bottom = (feed.load_min, keep[0][0] if keep else floor)
        return keep, out


# ---------------------------------------------------------------- nodes


class NodeTable:
    """Which nodes are alive, judged on the backplane's clock: a node that has not refreshed
    its record for ``timeout`` seconds is gone, and its presence members leave."""

    def __init__(self, node_id: str, timeout: float) -> None:
        self.node_id = node_id
        self.timeout = timeout
        self.alive: dict[str, dict[str, Any]] = {}
        self.gone: OrderedDict[str, None] = OrderedDict()  # recently gone (bounded)

    def update(self, rows: dict[str, dict[str, Any]], now_ms: int) -> list[str]:
        """The node records read now (each with ``seen``: ms on the backplane's clock);
        returns the nodes that are gone since the last update."""
        limit = self.timeout * 1000
        alive = {n: r for n, r in rows.items()
                 if n == self.node_id or now_ms - int(r.get("seen", 0)) <= limit}
        gone = [n for n in self.alive if n not in alive and n != self.node_id]
        gone += [n for n in rows if n not in alive and n not in self.gone and n not in gone]
        for n in gone:
            self.gone[n] = None
            if len(self.gone) > 1000:
                self.gone.popitem(last=False)
        self.alive = alive
        return gone

    def is_gone(self, node: str) -> bool:
        return node in self.gone
