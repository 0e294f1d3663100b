"""The Redis backplane driver: performs a broker node's backplane effects with redis-py's
asyncio client and feeds back what Redis answers and delivers.

The decisions are in the core (``rtkit.core.backplane``, ``rtkit.core.cluster_ops``); this
driver only talks to Redis (see ``rtkit.aio.redis_scripts`` for the data and the scripts).
:class:`RedisBackplane` (this module) owns the connections and performs the effects:

* **writes in order**: publishes and presence changes go through one queue, sent as
  pipelines of script calls, one pipeline at a time, so a connection's publishes get their
  serials in the order it sent them (and many publishes cost one round trip);
* **reads** (repairs, loads, position checks, the position and members of a channel newly
  followed) run concurrently on a small pool.

With two helpers: the **live feed** and the keys shared on its control channel
(``rtkit.aio.backplane_feed``), and **the node's record**, refreshed every
``node_timeout / 3`` (``rtkit.aio.backplane_nodes``).

Redis replication is asynchronous: what a primary acknowledged may be lost when a replica
takes over. A node that had received more than the new primary holds asks for a new epoch
(``Rebase``) so its clients are told of the loss; a loss no node had seen yet goes unnoticed
(see the README's design notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from rtkit.aio import redis_scripts as rs
from rtkit.aio.backplane_feed import ERRORS, FEED_TURN, LiveFeed, SharedKeys, reason
from rtkit.aio.backplane_nodes import NodeRecord
from rtkit.core import backplane as bp
from rtkit.core.cluster_ops import ClusterOps
from rtkit.core.tokens import ApiKey

if TYPE_CHECKING:
    from rtkit.aio.broker import Broker

log = logging.getLogger("rtkit.backplane")

__all__ = ["BATCH", "FEED_TURN", "BackplaneUnavailable", "RedisBackplane"]

#: Publishes and presence changes sent in one pipeline at most.
BATCH = 512
_SCRIPTS = {"publish": rs.PUBLISH, "position": rs.POSITION, "follow": rs.FOLLOW,
            "read": rs.READ, "rebase": rs.REBASE, "presence": rs.PRESENCE,
            "heartbeat": rs.HEARTBEAT}


class BackplaneUnavailable(ConnectionError):
    """The backplane cannot be reached when the node starts."""


class RedisBackplane:
    """A broker node's link to its Redis backplane."""

    def __init__(self, url: str, broker: Broker) -> None:
        self.url = url
        self.broker = broker
        ops = broker.core.ops
        assert isinstance(ops, ClusterOps)
        self.ops = ops
        self.view = ops.view
        self.node_id = self.view.node_id
        config = broker.config
        self.retention_ms = int(config.retention * 1000)
        self.window_ms = max(1, int(config.connection_state_ttl * 1000))
        self.budget = config.max_channel_history_bytes
        # A channel's epoch and last serial outlive its messages by a day at least.
        self.meta_ttl_ms = int(max(config.retention, 86400.0) * 1000)
        self.node_timeout = config.node_timeout
        self.redis: aioredis.Redis | None = None
        self.db = 0
        self._sha: dict[str, str] = {}
        #: Channels followed (subscribed, or to be subscribed again): name -> gen.
        self.following: dict[str, int] = {}
        self._writes: list[bp.Publish | bp.PresenceWrite | bp.Rebase] = []
        self._write_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self.stopping = False
        self.connected = False
        self.stats = {"backplane_reconnects": 0, "backplane_errors": 0, "backplane_batches": 0}
        self.feed = LiveFeed(self)
        self.shared = SharedKeys(self)
        self.record = NodeRecord(self)

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        """The nodes seen at the last refresh: node -> record (``seen``, ``url``, counters)."""
        return self.record.nodes

    @property
    def rates(self) -> dict[str, dict[str, float]]:
        """Messages a second per node (``published``, ``received``, ``delivered_frames``)."""
        return self.record.rates

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect, load the scripts, register this node and start following."""
        # RESP2: PUB/SUB messages are plain replies on the live feed's connection.
        # (A command that gets no answer for 10 s fails: a hung Redis refuses publishes
        # instead of holding them; the live feed reads without a timeout: see
        # LiveFeed.read_loop.)
        self.redis = aioredis.Redis.from_url(
            self.url, decode_responses=False, socket_connect_timeout=5.0,
            socket_timeout=10.0, max_connections=16, health_check_interval=0, protocol=2)
        self.db = int(self.redis.connection_pool.connection_kwargs.get("db", 0) or 0)
        try:
            await asyncio.wait_for(self.redis.ping(), 5.0)
            await self._load_scripts()
            await self.feed.start()
            await self.shared.load()
            await self.record.heartbeat()
        except ERRORS as exc:
            await self._close_redis()
            raise BackplaneUnavailable(
                f"cannot use the backplane at {self.url}: {exc}") from None
        self.connected = True
        for coro in (self.feed.read_loop(), self._write_loop(), self.feed.control_loop(),
                     self.record.refresh_loop()):
            self._loops.append(asyncio.create_task(coro))
        log.info("node %s on backplane %s", self.node_id, self.url)

    async def stop(self) -> None:
        """Stop cleanly: send what is queued, remove this node's record and members."""
        if self.redis is None:
            return
        self.stopping = True
        # (Redis unreachable: nothing to wait for, the node must not hang on its way out.)
        deadline = time.monotonic() + (2.0 if self.connected else 0.0)
        while (self._writes or self._tasks) and time.monotonic() < deadline:
            self._write_wanted.set()
            await asyncio.sleep(0.01)
        with contextlib.suppress(*ERRORS):
            await asyncio.wait_for(self.record.heartbeat(remove=True), 2.0)
        await self._cancel_all()
        await self._close_redis()

    async def crash(self) -> None:
        """Stop at once, as if the process died: no goodbye, nothing cleaned up (the other
        nodes find out after ``node_timeout``)."""
        self.stopping = True
        for conn in self._connections():
            writer = getattr(conn, "_writer", None)
            if writer is not None:
                writer.transport.abort()
        await self._cancel_all()
        await self._close_redis()

    def _connections(self) -> list[Any]:
        sub = self.feed.conn
        conns = [sub] if sub is not None else []
        if self.redis is not None:
            pool = self.redis.connection_pool
            conns += list(getattr(pool, "_in_use_connections", ()))
            conns += list(getattr(pool, "_available_connections", ()))
        return conns

    async def _cancel_all(self) -> None:
        tasks = [*self._loops, *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                await task
        self._loops.clear()
        self._tasks.clear()

    async def _close_redis(self) -> None:
        await self.feed.close()
        client, self.redis = self.redis, None
        if client is not None:
            with contextlib.suppress(*ERRORS):
                await client.aclose()
        self.connected = False

    # ---------------------------------------------------------------- effects

    def perform(self, effects: list[bp.Effect]) -> None:
        """Carry out the core's effects (called by the broker at every flush)."""
        if self.stopping and self.redis is None:
            return
        subscribe: list[str] = []
        for effect in effects:
            kind = type(effect)
            if kind is bp.Publish or kind is bp.PresenceWrite or kind is bp.Rebase:
                self._writes.append(effect)  # type: ignore[arg-type]
                self._write_wanted.set()
            elif kind is bp.Follow:
                assert isinstance(effect, bp.Follow)
                self.following[effect.channel] = effect.gen
                subscribe.append(effect.channel)
            elif kind is bp.Unfollow:
                assert isinstance(effect, bp.Unfollow)
                self.following.pop(effect.channel, None)
                self.feed.control.put_nowait(("UNSUBSCRIBE", [effect.channel]))
            elif kind is bp.Read:
                assert isinstance(effect, bp.Read)
                self.spawn(self._read(effect))
            elif kind is bp.Check:
                assert isinstance(effect, bp.Check)
                self.spawn(self._check(effect.channels))
        if subscribe:
            self.feed.control.put_nowait(("SUBSCRIBE", subscribe))

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task of this backplane (cancelled when it stops)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _flush(self) -> None:
        self.broker.schedule_flush()

    # ---------------------------------------------------------------- scripts

    async def _load_scripts(self) -> None:
        assert self.redis is not None
        for name, text in _SCRIPTS.items():
            sha = await self.redis.script_load(text)
            self._sha[name] = sha.decode() if isinstance(sha, bytes) else str(sha)

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        assert self.redis is not None
        try:
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted (its script cache is empty)
            await self._load_scripts()
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)

    def _candidate(self) -> str:
        return secrets.token_hex(6)

    # ---------------------------------------------------------------- ordered writes

    async def _write_loop(self) -> None:
        while True:
            await self._write_wanted.wait()
            self._write_wanted.clear()
            while self._writes:
                batch, self._writes = self._writes[:BATCH], self._writes[BATCH:]
                await self._write(batch)

    async def _write(self, batch: list[bp.Publish | bp.PresenceWrite | bp.Rebase]) -> None:
        assert self.redis is not None
        results: list[Any]
        candidate = self._candidate()  # (one per batch: a lost channel gets a new epoch)
        settings = [rs.publish_settings(candidate, dedup, self.retention_ms, self.window_ms,
                                        self.budget, self.meta_ttl_ms)
                    for dedup in (False, True)]
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for effect in batch:
                self._queue_write(pipe, effect, settings)
            try:
                results = await pipe.execute(raise_on_error=False)
            except ERRORS as exc:
                results = [exc] * len(batch)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                with contextlib.suppress(*ERRORS):
                    await self._load_scripts()  # (a script that did not run is safe to retry)
                continue
            break
        self.stats["backplane_batches"] += 1
        ops = self.ops
        for effect, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                self.stats["backplane_errors"] += 1
                if type(effect) is bp.Publish:
                    ops.publish_failed(effect.token, reason(result))
                else:
                    log.warning("backplane write failed: %s", result)
            elif type(effect) is bp.Publish:
                serial, _, timestamp = result[1].partition(b":")
                ops.published(effect.token, int(serial), int(timestamp), result[2] == 1)
        self._flush()

    def _queue_write(self, pipe: Any, effect: bp.Publish | bp.PresenceWrite | bp.Rebase,
                     settings: list[str]) -> None:
        if type(effect) is bp.Publish:
            name = effect.channel
            dedup = effect.dedup_key
            meta = rs.meta_key(name)
            pipe.evalsha(self._sha["publish"], 3, meta, rs.stream_key(name),
                         meta if dedup is None else rs.dedup_key(name, dedup), effect.head,
                         effect.tail, settings[dedup is not None],
                         rs.pubsub_channel(self.db, name))
        elif type(effect) is bp.PresenceWrite:
            name = effect.channel
            field = f"{self.node_id} {effect.member_key}"
            pipe.evalsha(self._sha["presence"], 2, rs.presence_key(name),
                         rs.node_channels_key(self.node_id), effect.op, field, effect.event,
                         name, rs.pubsub_channel(self.db, name),
                         f"p {self.node_id} {effect.event}")
        else:
            assert isinstance(effect, bp.Rebase)
            name = effect.channel
            pipe.evalsha(self._sha["rebase"], 2, rs.meta_key(name), rs.stream_key(name),
                         effect.epoch, effect.serial, self._candidate())

    # ---------------------------------------------------------------- reads

    async def _read(self, effect: bp.Read) -> None:
        name = effect.channel
        try:
            epoch, serial, raw = await self.call(
                "read", [rs.meta_key(name), rs.stream_key(name)],
                [self._candidate(), self.meta_ttl_ms, effect.first, effect.last, effect.limit,
                 "1" if effect.newest_first else "0"])
        except ERRORS as exc:
            self.stats["backplane_errors"] += 1
            self.ops.read_failed(name, effect.token, reason(exc))
            self._flush()
            return
        entries = [(int(eid.partition(b"-")[0]), int(fields[1]), fields[3].decode())
                   for eid, fields in raw]
        if effect.newest_first:
            entries.reverse()
        self.ops.read_done(name, effect.token, epoch.decode(), int(serial), entries,
                           time.monotonic())
        self._flush()

    async def _check(self, channels: tuple[str, ...]) -> None:
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        for name in channels:
            pipe.evalsha(self._sha["position"], 2, rs.meta_key(name), rs.stream_key(name),
                         self._candidate(), self.meta_ttl_ms)
        try:
            results = await pipe.execute(raise_on_error=False)
        except ERRORS as exc:
            self.stats["backplane_errors"] += 1
            log.info("position check failed: %s", exc)
            return
        found = {name: (r[0].decode(), int(r[1])) for name, r in zip(channels, results,
                                                                       strict=True)
                 if not isinstance(r, BaseException)}
        if any(isinstance(r, NoScriptError) for r in results):
            with contextlib.suppress(*ERRORS):
                await self._load_scripts()
        self.ops.positions(found, time.monotonic())
        self._flush()

    async def follow(self, name: str, gen: int) -> None:
        """The subscription to ``name`` is confirmed: read its position and members."""
        try:
            result = await self.call(
                "follow", [rs.meta_key(name), rs.stream_key(name), rs.presence_key(name),
                           rs.NODES],
                [self._candidate(), self.meta_ttl_ms, int(self.node_timeout * 1000)])
        except ERRORS as exc:
            self.stats["backplane_errors"] += 1
            self.ops.follow_failed(name, gen, reason(exc))
            self._flush()
            return
        members = [(result[i].decode(), result[i + 1].decode())
                   for i in range(2, len(result) - 1, 2)]
        self.ops.followed(name, gen, result[0].decode(), int(result[1]), members,
                          time.monotonic())
        self._flush()

    # ---------------------------------------------------------------- shared keys, nodes

    def share_key(self, key: ApiKey) -> None:
        """Make ``key`` known to every node (now and those started later)."""
        self.shared.share_key(key)

    def share_revocation(self, key_id: str) -> None:
        """Revoke ``key_id`` on every node (its live connections end there too)."""
        self.shared.share_revocation(key_id)

    def describe(self) -> dict[str, Any]:
        """The cluster as this node sees it (for ``server.stats()["cluster"]``)."""
        return self.record.describe()
