"""Requests of a cluster node that wait for the backplane, sans I/O.

Part of :class:`~rtkit.core.cluster_ops.ClusterOps`: attach, history and presence need the
channel followed; the first one waits (a :class:`~rtkit.core.streams.Deferred`, holding the
session's place like a replay) until the node knows the channel's position; a resume,
rewind or history reaching further back than the node's copy waits for the older messages
to be read from the backplane (:meth:`ClusterOps.available`). A request is a *step* run
again each time what it waited for is there (:meth:`WaitingRequests.run`,
:meth:`WaitingRequests.wake`); if the follow or the read failed, it is refused (50000,
transient: the client tries again).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from rtkit.core import frames as fr
from rtkit.core.backplane import Feed
from rtkit.core.channel_ops import ChannelOps
from rtkit.core.channels import Channel
from rtkit.core.frames import dumps
from rtkit.core.session import Session
from rtkit.core.streams import Deferred, HistoryAnswer
from rtkit.errors import RtkitError, error

if TYPE_CHECKING:
    from rtkit.core.cluster_ops import ClusterOps

#: A step of a request waiting for the backplane, given the feed it waited on (None the
#: first time): returns the feed to wait on, or None when the request is done.
Step = Callable[["Feed | None"], "Feed | None"]

UNAVAILABLE = "the backplane is unavailable; try again"


class WaitingRequests:
    """Attach, history and presence requests of a node's sessions, and those of the REST
    interface, each run once the channel's feed can answer it."""

    def __init__(self, ops: ClusterOps) -> None:
        self.ops = ops
        self.view = ops.view

    # ---------------------------------------------------------------- waiting

    def run(self, s: Session, ch: Channel | None, step: Step) -> None:
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
        self.ops.streamer.start(s, d)

    def wake(self, feed: Feed) -> None:
        """What ``feed``'s requests waited for happened: run them again."""
        waiters, feed.waiters = feed.waiters, []
        for s, d in waiters:
            if s is not None:
                d.ready = True
        streamer = self.ops.streamer
        for s, d in waiters:
            if s is None:
                d(feed)  # a request outside a session (see when_ready)
            elif not s.flow_control and not s.closed:
                streamer.pump(s, math.inf)
        # (A driver with flow control pumps the sessions waiting on its next flush.)

    def when_ready(self, ch: Channel, need: Callable[[Channel], int | None],
                   done: Callable[[str | None], None]) -> None:
        """See :meth:`ClusterOps.when_ready`."""
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
                        or self.ops.available(ch, feed, max(1, first)) is not None):
                    finish(None)
                    return
            feed.waiters.append((None, step))

        step(None)

    def _live(self, ch: Channel) -> Feed:
        return self.view.follow(ch.name)

    def _failed(self, s: Session, ref: fr.Ref | None, waited: Feed | None) -> bool:
        """The follow or load the request waited for failed: refuse it (50000, transient:
        the client tries again)."""
        if waited is None or waited.failed is None:
            return False
        self.ops.refuse(s, ref, error(50000, f"{UNAVAILABLE}: {waited.failed}"), False)
        return True

    # ---------------------------------------------------------------- attach, history

    def on_attach(self, s: Session, f: fr.Attach, now: float) -> None:
        ch = self.ops.attach_target(s, f)
        if ch is None:
            return
        caught_up = [False]
        self.run(s, ch, lambda waited: self._attach(s, f, ch, waited, caught_up))

    def _attach(self, s: Session, f: fr.Attach, ch: Channel, waited: Feed | None,
                caught_up: list[bool]) -> Feed | None:
        if self._failed(s, f.ref, waited):
            return None
        feed = self._live(ch)
        if not feed.live:
            return feed
        ops = self.ops
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
                have = ops.available(ch, feed, f.from_serial + 1)
                if have is None:
                    return feed
                if have > f.from_serial + 1:
                    lost, lost_from, lost_to = True, f.from_serial + 1, have - 1
                replay_from = have
            if lost:
                ops.stats["continuity_lost"] += 1
        elif f.rewind:
            need = max(1, ch.serial - min(f.rewind, ops.config.history_size) + 1)
            have = ops.available(ch, feed, need)
            if have is None:
                return feed
            replay_from = have
        ops.attached(s, f.ref, ch, replay_from, lost, lost_from, lost_to)
        return None

    def on_history(self, s: Session, f: fr.History, now: float) -> None:
        ops = self.ops
        try:
            ops.check(s, "history", f.channel)
            ch = ops.registry.get_or_create(f.channel, s.owner)
        except RtkitError as exc:
            ops.refuse(s, f.ref, exc, False)
            return
        self.run(s, ch, lambda waited: self._history(s, f, ch, waited))

    def _history(self, s: Session, f: fr.History, ch: Channel, waited: Feed | None
                 ) -> Feed | None:
        if self._failed(s, f.ref, waited):
            return None
        feed = self._live(ch)
        if not feed.live:
            return feed
        ops = self.ops
        limit = min(f.limit or 100, max(1, ops.config.history_size))
        hi = ch.serial if f.before is None else min(ch.serial, f.before - 1)
        lo = max(1, f.after + 1 if f.after is not None else hi - limit + 1)
        if lo <= hi:
            have = ops.available(ch, feed, lo)
            if have is None:
                return feed
            lo = have
        ops.streamer.start(s, HistoryAnswer(dumps(f.ref), ch, ch.name_json, lo, hi, limit))
        return None

    # ---------------------------------------------------------------- presence

    def on_presence(self, s: Session, f: fr.Presence, wall: float) -> None:
        ops = self.ops
        feed = self.view.feeds.get(f.channel)
        if (feed is not None and feed.live) or f.op == "leave":
            ChannelOps.on_presence(ops, s, f, wall)
            return
        allowed = s.capability.allows("presence", f.channel) or (
            f.op == "get" and s.capability.allows("subscribe", f.channel))
        try:
            ch = ops.registry.get_or_create(f.channel, s.owner) if allowed else None
        except RtkitError:
            ch = None
        if ch is None:
            ChannelOps.on_presence(ops, s, f, wall)  # refused there, with the right error
            return

        def step(waited: Feed | None) -> Feed | None:
            if self._failed(s, f.ref, waited):
                return None
            feed = self._live(ch)
            if not feed.live:
                return feed
            ChannelOps.on_presence(ops, s, f, wall)
            return None

        self.run(s, ch, step)
