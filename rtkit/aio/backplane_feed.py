"""The Redis backplane's live feed, and the key changes it carries on the control channel.

Part of the backplane driver (:class:`~rtkit.aio.backplane.RedisBackplane`):

* :class:`LiveFeed`: one connection subscribed to the PUB/SUB channel of every channel the
  node follows. Once a subscription is confirmed, the channel's position and members are read
  (so nothing published after the read can be missed). If the connection breaks it is opened
  again with backoff, every channel is subscribed again and positioned again, and the core
  repairs what was missed from the stored history;
* :class:`SharedKeys`: the API keys made on any node, and their revocations, stored in Redis
  and announced on the control channel, so that every node verifies the same keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from rtkit.aio import redis_scripts as rs
from rtkit.core.tokens import ApiKey, Capability

if TYPE_CHECKING:
    from rtkit.aio.backplane import RedisBackplane

log = logging.getLogger("rtkit.backplane")

#: Messages handled from the live feed before letting the event loop run.
FEED_TURN = 256
#: What a failed Redis call raises (a broken link, a refusal, no answer in time).
ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def reason(exc: BaseException) -> str:
    """A failure's text for a refusal."""
    return str(exc) or type(exc).__name__


class LiveFeed:
    """The live feed's connection: subscriptions (sent in order by :meth:`control_loop`)
    and what Redis delivers on them (read by :meth:`read_loop`)."""

    def __init__(self, backplane: RedisBackplane) -> None:
        self.backplane = backplane
        self.ops = backplane.ops
        self.schedule_flush = backplane.broker.schedule_flush
        #: Channels followed (subscribed, or to be subscribed again): name -> gen (the
        #: backplane's dict: it adds and removes them).
        self.following = backplane.following
        self.conn: Any = None  # the feed's connection
        self.control: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        self.pong = time.monotonic()

    def control_name(self) -> bytes:
        return rs.control_channel(self.backplane.db).encode()

    async def open(self) -> Any:
        redis = self.backplane.redis
        assert redis is not None
        conn = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()
        return conn

    async def start(self) -> None:
        """Open the feed's connection and subscribe to the control channel."""
        self.conn = await self.open()
        await self.conn.send_command("SUBSCRIBE", rs.control_channel(self.backplane.db))

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(*ERRORS):
                await conn.disconnect(nowait=True)

    async def control_loop(self) -> None:
        while True:
            command, names = await self.control.get()
            while not self.control.empty():  # join what came meanwhile, in order
                nxt, more = self.control.get_nowait()
                if nxt != command:
                    await self._send(command, names)
                    command, names = nxt, more
                else:
                    names += more
            await self._send(command, names)

    async def _send(self, command: str, names: list[str]) -> None:
        conn = self.conn
        if conn is None or not names:
            return
        db = self.backplane.db
        channels = [rs.pubsub_channel(db, n) for n in names]
        try:
            await conn.send_command(command, *channels)
        except ERRORS as exc:  # the reader notices the broken link and subscribes again
            log.info("could not %s: %s", command.lower(), exc)

    async def read_loop(self) -> None:
        bp = self.backplane
        db = bp.db
        prefix = rs.pubsub_channel(db, "").encode()
        cut = len(prefix)
        delay = 0.05
        while True:
            conn = self.conn
            try:
                if conn is None:
                    conn = self.conn = await self.open()
                    bp.stats["backplane_reconnects"] += 1
                    names = list(self.following)
                    await conn.send_command(
                        "SUBSCRIBE", rs.control_channel(db),
                        *(rs.pubsub_channel(db, n) for n in names))
                    bp.spawn(bp.shared.load())  # (changes missed while away)
                    bp.connected = True
                    self.pong = time.monotonic()
                    delay = 0.05
                    log.info("live feed connected again; %d channel(s)", len(names))
                n = 0
                while True:
                    msg = await conn.read_response(timeout=math.inf)
                    self._on_message(msg, cut)
                    n += 1
                    if n >= FEED_TURN:
                        n = 0
                        await asyncio.sleep(0)
            except ERRORS as exc:
                if bp.stopping:
                    return
                bp.connected = False
                log.warning("live feed from the backplane lost (%s); reconnecting", exc)
                self.conn = None
                with contextlib.suppress(*ERRORS):
                    if conn is not None:
                        await conn.disconnect(nowait=True)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(2.0, delay * 2)

    def _on_message(self, msg: Any, cut: int) -> None:
        kind = msg[0]
        if kind == b"message":
            if msg[1] == self.control_name():
                self.backplane.shared.on_control(msg[2].decode())
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
            self.schedule_flush()
        elif kind == b"subscribe":
            if msg[1] == self.control_name():
                return
            name = msg[1][cut:].decode()
            gen = self.following.get(name)
            if gen is not None:
                bp = self.backplane
                bp.spawn(bp.follow(name, gen))
        elif kind == b"pong" or msg == b"PONG":
            self.pong = time.monotonic()

    async def check_alive(self, timeout: float) -> None:
        """Ping the feed's connection; if nothing came back for ``timeout`` seconds, drop it
        (the reader connects again)."""
        conn = self.conn
        if conn is None:
            return
        if time.monotonic() - self.pong > timeout:
            log.warning("the live feed is silent; reconnecting")
            with contextlib.suppress(*ERRORS):
                await conn.disconnect(nowait=True)
        else:
            with contextlib.suppress(*ERRORS):
                await conn.send_command("PING")


class SharedKeys:
    """API keys and revocations shared by every node through the backplane."""

    def __init__(self, backplane: RedisBackplane) -> None:
        self.backplane = backplane
        self.broker = backplane.broker

    async def load(self) -> None:
        """Every key made on a node, and every revocation, as Redis has them."""
        redis = self.backplane.redis
        assert redis is not None
        keys = await redis.hgetall(rs.KEYS)
        revoked = await redis.smembers(rs.REVOKED)
        for raw in keys.values():
            self._add(_text(raw))
        for key_id in revoked:
            self.broker.apply_revocation(_text(key_id))

    def _add(self, text: str) -> None:
        try:
            obj = json.loads(text)
            key = ApiKey.parse(obj["value"], Capability.of(obj["capability"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed shared key: %s", exc)
            return
        if key.key_id not in self.broker.keys.revoked:
            self.broker.keys.add(key)

    def on_control(self, text: str) -> None:
        """A message of the control channel: a key made, or revoked, on some node."""
        kind, _, rest = text.partition(" ")
        if kind == "k":
            self._add(rest)
        elif kind == "r":
            self.broker.apply_revocation(rest)
            self.broker.schedule_flush()

    def share_key(self, key: ApiKey) -> None:
        """Make ``key`` known to every node (now and those started later)."""
        text = json.dumps({"value": key.value, "capability": {
            pattern: list(ops) for pattern, ops in key.capability.rules.items()}})
        self.backplane.spawn(self._publish(
            lambda r: r.hset(rs.KEYS, key.key_id, text), f"k {text}"))

    def share_revocation(self, key_id: str) -> None:
        """Revoke ``key_id`` on every node (its live connections end there too)."""
        self.backplane.spawn(self._publish(lambda r: r.sadd(rs.REVOKED, key_id),
                                           f"r {key_id}"))

    async def _publish(self, store: Any, message: str) -> None:
        bp = self.backplane
        redis = bp.redis
        assert redis is not None
        try:
            await store(redis)
            await redis.publish(rs.control_channel(bp.db), message)
        except ERRORS as exc:
            bp.stats["backplane_errors"] += 1
            log.warning("could not share a key change with the other nodes: %s", exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
