"""The Redis backplane driver: performs a broker node's backplane effects with redis-py's
asyncio client and feeds back what Redis answers and delivers.

The decisions are in the core (``rtkit.core.backplane``, ``rtkit.core.cluster_ops``); this
module only talks to Redis (see ``rtkit.aio.redis_scripts`` for the data and the scripts):

* **writes in order**: publishes and presence changes go through one queue, sent as
  pipelines of script calls, one pipeline at a time, so a connection's publishes get their
  serials in the order it sent them (and many publishes cost one round trip);
* **the live feed**: one connection subscribed to the PUB/SUB channel of every channel this
  node follows. Once a subscription is confirmed, the channel's position and members are read
  (so nothing published after the read can be missed). If the connection breaks it is opened
  again with backoff, every channel is subscribed again and positioned again, and the core
  repairs what was missed from the stored history;
* **reads** (repairs, loads, position checks) run concurrently on a small pool;
* **the node's record**, refreshed every ``node_timeout / 3`` with its counters; the same
  round removes the nodes that stopped refreshing theirs (and their members), and starts a
  position check of every channel followed.

Redis replication is asynchronous: what a primary acknowledged may be lost when a replica
takes over. A node that had received more than the new primary holds asks for a new epoch
(``Rebase``) so its clients are told of the loss; a loss no node had seen yet goes unnoticed
(see the README's design notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from rtkit.aio import redis_scripts as rs
from rtkit.core import backplane as bp
from rtkit.core.cluster_ops import ClusterOps
from rtkit.core.tokens import ApiKey, Capability

if TYPE_CHECKING:
    from rtkit.aio.broker import Broker

log = logging.getLogger("rtkit.backplane")

#: Publishes and presence changes sent in one pipeline at most.
BATCH = 512
#: Messages handled from the live feed before letting the event loop run.
FEED_TURN = 256
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
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
        self._sub: Any = None  # the live feed's connection
        self._sha: dict[str, str] = {}
        #: Channels followed (subscribed, or to be subscribed again): name -> gen.
        self.following: dict[str, int] = {}
        self._control: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        self._writes: list[bp.Publish | bp.PresenceWrite | bp.Rebase] = []
        self._write_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._stopping = False
        self.connected = False
        self.started = time.time()
        self._registered = False
        self._pong = time.monotonic()
        #: The nodes seen at the last refresh: node -> record (``seen``, ``url``, counters).
        self.nodes: dict[str, dict[str, Any]] = {}
        self.rates: dict[str, dict[str, float]] = {}
        self._previous: tuple[int, dict[str, dict[str, Any]]] | None = None
        self.stats = {"backplane_reconnects": 0, "backplane_errors": 0, "backplane_batches": 0}

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect, load the scripts, register this node and start following."""
        # RESP2: PUB/SUB messages are plain replies on the live feed's connection.
        # (A command that gets no answer for 10 s fails: a hung Redis refuses publishes
        # instead of holding them; the live feed reads without a timeout, see _read_feed.)
        self.redis = aioredis.Redis.from_url(
            self.url, decode_responses=False, socket_connect_timeout=5.0,
            socket_timeout=10.0, max_connections=16, health_check_interval=0, protocol=2)
        self.db = int(self.redis.connection_pool.connection_kwargs.get("db", 0) or 0)
        try:
            await asyncio.wait_for(self.redis.ping(), 5.0)
            await self._load_scripts()
            self._sub = await self._open_feed()
            await self._sub.send_command("SUBSCRIBE", rs.control_channel(self.db))
            await self._load_keys()
            await self._heartbeat()
        except _ERRORS as exc:
            await self._close_redis()
            raise BackplaneUnavailable(
                f"cannot use the backplane at {self.url}: {exc}") from None
        self.connected = True
        for coro in (self._read_feed(), self._write_loop(), self._control_loop(),
                     self._refresh_loop()):
            self._loops.append(asyncio.create_task(coro))
        log.info("node %s on backplane %s", self.node_id, self.url)

    async def stop(self) -> None:
        """Stop cleanly: send what is queued, remove this node's record and members."""
        if self.redis is None:
            return
        self._stopping = True
        # (Redis unreachable: nothing to wait for, the node must not hang on its way out.)
        deadline = time.monotonic() + (2.0 if self.connected else 0.0)
        while (self._writes or self._tasks) and time.monotonic() < deadline:
            self._write_wanted.set()
            await asyncio.sleep(0.01)
        with contextlib.suppress(*_ERRORS):
            await asyncio.wait_for(self._heartbeat(remove=True), 2.0)
        await self._cancel_all()
        await self._close_redis()

    async def crash(self) -> None:
        """Stop at once, as if the process died: no goodbye, nothing cleaned up (the other
        nodes find out after ``node_timeout``)."""
        self._stopping = True
        for conn in self._connections():
            writer = getattr(conn, "_writer", None)
            if writer is not None:
                writer.transport.abort()
        await self._cancel_all()
        await self._close_redis()

    def _connections(self) -> list[Any]:
        conns = [self._sub] if self._sub is not None else []
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
            with contextlib.suppress(asyncio.CancelledError, *_ERRORS):
                await task
        self._loops.clear()
        self._tasks.clear()

    async def _close_redis(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(*_ERRORS):
                await sub.disconnect(nowait=True)
        client, self.redis = self.redis, None
        if client is not None:
            with contextlib.suppress(*_ERRORS):
                await client.aclose()
        self.connected = False

    # ---------------------------------------------------------------- effects

    def perform(self, effects: list[bp.Effect]) -> None:
        """Carry out the core's effects (called by the broker at every flush)."""
        if self._stopping and self.redis is None:
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
                self._control.put_nowait(("UNSUBSCRIBE", [effect.channel]))
            elif kind is bp.Read:
                assert isinstance(effect, bp.Read)
                self._spawn(self._read(effect))
            elif kind is bp.Check:
                assert isinstance(effect, bp.Check)
                self._spawn(self._check(effect.channels))
        if subscribe:
            self._control.put_nowait(("SUBSCRIBE", subscribe))

    def _spawn(self, coro: Any) -> None:
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

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
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
            except _ERRORS as exc:
                results = [exc] * len(batch)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                with contextlib.suppress(*_ERRORS):
                    await self._load_scripts()  # (a script that did not run is safe to retry)
                continue
            break
        self.stats["backplane_batches"] += 1
        ops = self.ops
        for effect, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                self.stats["backplane_errors"] += 1
                if type(effect) is bp.Publish:
                    ops.publish_failed(effect.token, _reason(result))
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
            epoch, serial, raw = await self._call(
                "read", [rs.meta_key(name), rs.stream_key(name)],
                [self._candidate(), self.meta_ttl_ms, effect.first, effect.last, effect.limit,
                 "1" if effect.newest_first else "0"])
        except _ERRORS as exc:
            self.stats["backplane_errors"] += 1
            self.ops.read_failed(name, effect.token, _reason(exc))
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
        except _ERRORS as exc:
            self.stats["backplane_errors"] += 1
            log.info("position check failed: %s", exc)
            return
        found = {name: (r[0].decode(), int(r[1])) for name, r in zip(channels, results,
                                                                       strict=True)
                 if not isinstance(r, BaseException)}
        if any(isinstance(r, NoScriptError) for r in results):
            with contextlib.suppress(*_ERRORS):
                await self._load_scripts()
        self.ops.positions(found, time.monotonic())
        self._flush()

    async def _follow(self, name: str, gen: int) -> None:
        """The subscription to ``name`` is confirmed: read its position and members."""
        try:
            result = await self._call(
                "follow", [rs.meta_key(name), rs.stream_key(name), rs.presence_key(name),
                           rs.NODES],
                [self._candidate(), self.meta_ttl_ms, int(self.node_timeout * 1000)])
        except _ERRORS as exc:
            self.stats["backplane_errors"] += 1
            self.ops.follow_failed(name, gen, _reason(exc))
            self._flush()
            return
        members = [(result[i].decode(), result[i + 1].decode())
                   for i in range(2, len(result) - 1, 2)]
        self.ops.followed(name, gen, result[0].decode(), int(result[1]), members,
                          time.monotonic())
        self._flush()

    # ---------------------------------------------------------------- the live feed

    async def _open_feed(self) -> Any:
        assert self.redis is not None
        conn = self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()
        return conn

    async def _control_loop(self) -> None:
        while True:
            command, names = await self._control.get()
            while not self._control.empty():  # join what came meanwhile, in order
                nxt, more = self._control.get_nowait()
                if nxt != command:
                    await self._send(command, names)
                    command, names = nxt, more
                else:
                    names += more
            await self._send(command, names)

    async def _send(self, command: str, names: list[str]) -> None:
        conn = self._sub
        if conn is None or not names:
            return
        channels = [rs.pubsub_channel(self.db, n) for n in names]
        try:
            await conn.send_command(command, *channels)
        except _ERRORS as exc:  # the reader notices the broken link and subscribes again
            log.info("could not %s: %s", command.lower(), exc)

    async def _read_feed(self) -> None:
        prefix = rs.pubsub_channel(self.db, "").encode()
        cut = len(prefix)
        delay = 0.05
        while True:
            conn = self._sub
            try:
                if conn is None:
                    conn = self._sub = await self._open_feed()
                    self.stats["backplane_reconnects"] += 1
                    names = list(self.following)
                    await conn.send_command(
                        "SUBSCRIBE", rs.control_channel(self.db),
                        *(rs.pubsub_channel(self.db, n) for n in names))
                    self._spawn(self._load_keys())  # (changes missed while away)
                    self.connected = True
                    self._pong = time.monotonic()
                    delay = 0.05
                    log.info("live feed connected again; %d channel(s)", len(names))
                n = 0
                while True:
                    msg = await conn.read_response(timeout=math.inf)
                    self._on_feed(msg, cut)
                    n += 1
                    if n >= FEED_TURN:
                        n = 0
                        await asyncio.sleep(0)
            except _ERRORS as exc:
                if self._stopping:
                    return
                self.connected = False
                log.warning("live feed from the backplane lost (%s); reconnecting", exc)
                self._sub = None
                with contextlib.suppress(*_ERRORS):
                    if conn is not None:
                        await conn.disconnect(nowait=True)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(2.0, delay * 2)

    def _on_feed(self, msg: Any, cut: int) -> None:
        kind = msg[0]
        if kind == b"message":
            if msg[1] == self._control_name:
                self._on_control(msg[2].decode())
                return
            name = msg[1][cut:].decode()
            text = msg[2].decode()
            if text[0] == "m":
                _, epoch, serial, ts, fragment = text.split(" ", 4)
                self.ops.delivered(name, epoch, int(serial), int(ts), fragment,
                                   time.monotonic())
            elif text[0] == "p":
                _, node, event = text.split(" ", 2)
                self.ops.presence_event(name, node, event)
            self._flush()
        elif kind == b"subscribe":
            if msg[1] == self._control_name:
                return
            name = msg[1][cut:].decode()
            gen = self.following.get(name)
            if gen is not None:
                self._spawn(self._follow(name, gen))
        elif kind == b"pong" or msg == b"PONG":
            self._pong = time.monotonic()

    # ---------------------------------------------------------------- shared keys

    @property
    def _control_name(self) -> bytes:
        return rs.control_channel(self.db).encode()

    async def _load_keys(self) -> None:
        """Every key made on a node, and every revocation, as Redis has them."""
        assert self.redis is not None
        keys = await self.redis.hgetall(rs.KEYS)
        revoked = await self.redis.smembers(rs.REVOKED)
        for raw in keys.values():
            self._add_key(_text(raw))
        for key_id in revoked:
            self.broker.apply_revocation(_text(key_id))

    def _add_key(self, text: str) -> None:
        try:
            obj = json.loads(text)
            key = ApiKey.parse(obj["value"], Capability.of(obj["capability"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed shared key: %s", exc)
            return
        if key.key_id not in self.broker.keys.revoked:
            self.broker.keys.add(key)

    def _on_control(self, text: str) -> None:
        kind, _, rest = text.partition(" ")
        if kind == "k":
            self._add_key(rest)
        elif kind == "r":
            self.broker.apply_revocation(rest)
            self._flush()

    def share_key(self, key: ApiKey) -> None:
        """Make ``key`` known to every node (now and those started later)."""
        text = json.dumps({"value": key.value, "capability": {
            pattern: list(ops) for pattern, ops in key.capability.rules.items()}})
        self._spawn(self._publish_control(
            lambda r: r.hset(rs.KEYS, key.key_id, text), f"k {text}"))

    def share_revocation(self, key_id: str) -> None:
        """Revoke ``key_id`` on every node (its live connections end there too)."""
        self._spawn(self._publish_control(lambda r: r.sadd(rs.REVOKED, key_id), f"r {key_id}"))

    async def _publish_control(self, store: Any, message: str) -> None:
        assert self.redis is not None
        try:
            await store(self.redis)
            await self.redis.publish(rs.control_channel(self.db), message)
        except _ERRORS as exc:
            self.stats["backplane_errors"] += 1
            log.warning("could not share a key change with the other nodes: %s", exc)

    # ---------------------------------------------------------------- the node's record

    async def _refresh_loop(self) -> None:
        period = self.node_timeout / 3
        while True:
            await asyncio.sleep(period * (0.9 + 0.2 * random.random()))
            try:
                await asyncio.wait_for(self._heartbeat(), self.node_timeout)
            except _ERRORS as exc:
                self.stats["backplane_errors"] += 1
                log.warning("could not refresh this node's record: %s", exc)
                continue
            self.view.check()
            sub = self._sub
            if sub is not None:
                if time.monotonic() - self._pong > self.node_timeout:
                    log.warning("the live feed is silent; reconnecting")
                    with contextlib.suppress(*_ERRORS):
                        await sub.disconnect(nowait=True)
                else:
                    with contextlib.suppress(*_ERRORS):
                        await sub.send_command("PING")
            self._flush()

    def _info(self) -> str:
        stats = self.broker.core.stats
        return json.dumps({
            "url": self.broker.url, "connections": len(self.broker.core.sessions),
            "published": stats["published"], "received": stats.get("backplane_received", 0),
            "delivered_frames": stats["delivered_frames"], "started": self.started,
            "backplane_batches": self.stats["backplane_batches"],
        })

    async def _heartbeat(self, remove: bool = False) -> None:
        result = await self._call(
            "heartbeat", [rs.NODES, rs.NODE_INFO],
            [self.node_id, self._info(), int(self.node_timeout * 1000), rs.PREFIX,
             "1" if remove else "0"])
        if remove:
            return
        now_ms, was = int(result[0]), result[1] == 1
        rows: dict[str, dict[str, Any]] = {}
        for i in range(2, len(result) - 2, 3):
            try:
                info = json.loads(result[i + 2])
            except ValueError:
                info = {}
            rows[result[i].decode()] = {**info, "seen": int(float(result[i + 1]))}
        self._rates(now_ms, rows)
        self.nodes = rows
        self.ops.nodes_seen(rows, now_ms, was_missing=self._registered and not was)
        self._registered = True
        self._flush()

    def _rates(self, now_ms: int, rows: dict[str, dict[str, Any]]) -> None:
        """Messages a second per node, from the counters of two refreshes."""
        prev = self._previous
        self._previous = (now_ms, rows)
        if prev is None or now_ms <= prev[0]:
            return
        seconds = (now_ms - prev[0]) / 1000
        rates = {}
        for node, row in rows.items():
            old = prev[1].get(node)
            if old is None:
                continue
            rates[node] = {k: max(0.0, (row.get(k, 0) - old.get(k, 0)) / seconds)
                           for k in ("published", "received", "delivered_frames")}
        self.rates = rates

    def describe(self) -> dict[str, Any]:
        """The cluster as this node sees it (for ``server.stats()["cluster"]``)."""
        nodes = []
        for node, row in sorted(self.nodes.items()):
            rate = self.rates.get(node, {})
            nodes.append({
                "node": node, "url": row.get("url"), "self": node == self.node_id,
                "connections": row.get("connections", 0),
                "published": row.get("published", 0), "received": row.get("received", 0),
                "publish_rate": rate.get("published", 0.0),
                "receive_rate": rate.get("received", 0.0),
                "seen_ms": row.get("seen"),
            })
        return {
            "node": self.node_id, "backplane": _redact(self.url), "connected": self.connected,
            "node_timeout": self.node_timeout, "following": len(self.following),
            "nodes": nodes, **self.stats, **self.view.stats,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"
