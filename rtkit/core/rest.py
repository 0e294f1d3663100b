"""The broker's REST interface, sans I/O: HTTP requests mapped to the same channel operations,
capabilities, limits and rate limits as the WebSocket protocol, and rtkit errors mapped to
HTTP statuses with a JSON body.

The driver (``rtkit.aio.httpapi``) parses HTTP with h11, routes the request
(``rtkit.core.rest_http``: routes, credentials, replies) and calls :class:`RestApi` with the
caller, the channel and the body; it gets back a :class:`Reply` (status, JSON body, headers)
or, for an event stream, a core session attached to the channel whose output it writes as
Server-Sent Events. Every request is authenticated by its ``Authorization`` header:
``Bearer <token>`` or HTTP Basic with an API key (``<key_id>`` as the user name, ``<secret>``
as the password); credentials never go in the URL.

Each caller (its client id, else its key) has one rate bucket of ``publish_rate`` /
``publish_burst`` for every request, as a WebSocket connection has for every frame. A publish
is handled by :meth:`ChannelOps.publish`, exactly as a ``publish`` frame is (checks, sizes,
de-duplication by id scoped per publisher, fan-out), by a transient session standing for the
caller.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.broker import BrokerCore, Send, Session
from rtkit.core.channels import Channel
from rtkit.core.cluster_ops import ClusterOps
from rtkit.core.intake import raw_data
from rtkit.core.rest_http import (
    JSON,
    Later,
    MethodNotAllowed,
    Reply,
    Route,
    credentials,
    error_reply,
    http_status,
    int_param,
    json_reply,
    parse_last_event_id,
    publish_reply,
    route,
    split_target,
)
from rtkit.core.store import FRAGMENT, SIZE
from rtkit.core.timing import TokenBucket
from rtkit.core.tokens import verify_token
from rtkit.errors import ProtocolError, error, error_from_wire

__all__ = [
    "JSON", "MAX_TRACKED_CALLERS", "Later", "MethodNotAllowed", "Reply", "RestApi",
    "RestCaller", "Route", "credentials", "error_reply", "http_status", "json_reply",
    "parse_last_event_id", "publish_reply", "route", "split_target",
]

#: Rate buckets kept for this many callers at most (refilled ones are forgotten first).
MAX_TRACKED_CALLERS = 65_536
_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class RestCaller(Session):
    """The caller of one REST request, as a session the channel operations accept. Its
    ``owner`` (quotas, publish-id scope) is stable across requests: the client id, else the
    key that authenticated it."""

    scope: str = ""

    @property
    def owner(self) -> str:
        if self.client_id is not None:
            return f"u{len(self.client_id)}:{self.client_id}"
        return f"k:{self.scope}"


# ------------------------------------------------------------------------ the interface


@dataclass(slots=True)
class RestApi:
    """REST requests against one :class:`BrokerCore`. Times: monotonic ``now``."""

    core: BrokerCore
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def caller(self, headers: dict[str, str], now: float) -> RestCaller:
        """Authenticate the request and charge it to its caller's rate."""
        core = self.core
        kind, value = credentials(headers)
        if kind == "key":
            key = core.keys.check_key(value)
            client_id, cap, expires, key_id = None, key.capability, None, key.key_id
        else:
            claims = verify_token(value, core.keys, core.wall(now))
            client_id, cap, expires, key_id = (claims.client_id, claims.capability,
                                               claims.expires_at, claims.key_id)
        cid = f"r{next(_ids)}-{secrets.token_hex(3)}"
        s = RestCaller(cid, "", now, None, connected=True, client_id=client_id,
                       client_id_json=fr.dumps(client_id), key_id=key_id,
                       capability=cap, token_expires=expires, resumable=False,
                       flow_control=True, scope=key_id)
        if not self._take(s.owner, now):
            core.stats["rate_limited"] += 1
            raise error(42900, f"more than {core.config.publish_rate:g} requests a second")
        return s

    def _take(self, owner: str, now: float) -> bool:
        bucket = self.buckets.get(owner)
        if bucket is None:
            c = self.core.config
            if len(self.buckets) >= MAX_TRACKED_CALLERS:
                full = [o for o, b in self.buckets.items()
                        if b.tokens + (now - b.updated) * c.publish_rate >= c.publish_burst]
                for o in full:
                    del self.buckets[o]
                if len(self.buckets) >= MAX_TRACKED_CALLERS:
                    self.buckets.clear()
            bucket = self.buckets[owner] = TokenBucket(c.publish_rate, c.publish_burst,
                                                       updated=now)
        return bucket.take(now)

    # ---------------------------------------------------------------- publish

    def publish(self, s: RestCaller, channel: str, body: bytes, now: float) -> Reply | None:
        """``POST /channels/{channel}/messages`` with ``{"name", "data", "id"?}``: 201 with
        ``{"channel", "id", "serial", "timestamp"}`` once stored, 200 with ``"duplicate":
        true`` for an id this publisher already used. None on a node of a cluster: the
        backplane answers later, with an ``ack`` or ``nack`` sent to ``s`` (its transport
        makes it the reply with :func:`publish_reply`)."""
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise ProtocolError("the body must be UTF-8 JSON", code=40001) from None
        obj = fr.parse_json(text)
        fr.validate(obj, text, fr.CLIENT_FRAME_DEPTH)
        obj.pop("ref", None)
        f = fr.decode_object({**obj, "action": "publish", "channel": channel},
                             fr.CLIENT_FRAMES)
        assert isinstance(f, fr.Publish)
        try:
            fallback = fr.dumps(f.data)
        except ValueError:
            raise ProtocolError("invalid JSON: a number out of range", code=40001) from None
        core = self.core
        core.now = now
        core.stats["received"] += 1
        data_json = raw_data(text) or fallback
        core.ops.publish(s, None, f.channel, f.name, data_json, f.id, now, core.wall(now))
        answer = self._take_answer(s)
        if answer is None:
            return None
        if answer.get("action") != "ack":
            raise error_from_wire(answer.get("error"))
        return publish_reply(answer)

    def _take_answer(self, s: Session) -> dict[str, Any] | None:
        """The ack or nack the channel operations queued for ``s`` (taken out of the outbox:
        the caller gets it as the HTTP response)."""
        items = self.core.outbox.items
        for i in range(len(items) - 1, -1, -1):
            item = items[i]
            if type(item) is Send and item.targets == (s,):
                del items[i]
                answer: dict[str, Any] = json.loads(item.text)
                return answer
        if s.inflight:
            return None  # handed to the backplane
        raise error(50000, "the publish was not answered")  # pragma: no cover

    # ---------------------------------------------------------------- reading

    def history(self, s: RestCaller, channel: str, params: dict[str, str],
                now: float, later: Later | None = None) -> Reply | None:
        """``GET /channels/{channel}/messages?limit=&before=&after=``: stored messages,
        oldest first. Without ``after``: the latest ``limit`` (before ``before``); with it:
        the first ``limit`` after it. At most ``max_frame_size`` bytes of messages per page;
        ``more`` says whether the page stopped short of the range (older messages for a
        backward page, newer ones after ``after``). On a node of a cluster given ``later``:
        None, and the page goes to ``later`` once the node's copy of the channel reaches
        back far enough."""
        fr.validate_channel_name(channel)
        self.core.ops.check(s, "history", channel)
        c = self.core.config
        limit = int_param(params, "limit", 1) or 100
        limit = min(limit, max(1, c.history_size))
        before = int_param(params, "before", 1)
        after = int_param(params, "after", 0)
        if later is not None and isinstance(self.core.ops, ClusterOps):
            def need(ch: Channel) -> int:
                if after is not None:
                    return after + 1
                # (one more than the page: whether older messages exist says ``more``)
                return (ch.serial if before is None else min(ch.serial, before - 1)) - limit

            self._when_ready(s, channel, need, later, lambda ch: self._page(
                channel, ch, limit, before, after, self.core.now))
            return None
        return self._page(channel, self.core.registry.get(channel), limit, before, after, now)

    def _page(self, channel: str, ch: Channel | None, limit: int, before: int | None,
              after: int | None, now: float) -> Reply:
        c = self.core.config
        out: list[str] = []
        more = False
        epoch = None
        if ch is not None:
            epoch = ch.epoch
            store = ch.store
            store.expire(now)
            first = store.first_serial()
            if first is not None:
                hi = ch.serial if before is None else min(ch.serial, before - 1)
                budget = c.max_frame_size
                if after is not None:
                    serial = max(first, after + 1)
                    while serial <= hi and len(out) < limit:
                        rec = store.get(serial)
                        if rec is None or (out and budget - rec[SIZE] < 0):
                            break
                        out.append(rec[FRAGMENT])
                        budget -= rec[SIZE] + 1
                        serial += 1
                    more = serial <= hi
                else:
                    serial = hi
                    while serial >= first and len(out) < limit:
                        rec = store.get(serial)
                        if rec is None or (out and budget - rec[SIZE] < 0):
                            break
                        out.append(rec[FRAGMENT])
                        budget -= rec[SIZE] + 1
                        serial -= 1
                    out.reverse()
                    more = serial >= first
        head = json.dumps({"channel": channel, "epoch": epoch, "more": more},
                          separators=(",", ":"))
        body = f'{head[:-1]},"messages":[{",".join(out)}]}}\n'
        return Reply(200, body.encode())

    def presence(self, s: RestCaller, channel: str, later: Later | None = None
                 ) -> Reply | None:
        """``GET /channels/{channel}/presence``: the members now (on a node of a cluster
        given ``later``: None, and the members of every node go to ``later``)."""
        fr.validate_channel_name(channel)
        if not (s.capability.allows("subscribe", channel)
                or s.capability.allows("presence", channel)):
            self.core.ops.check(s, "presence", channel)
        if later is not None and isinstance(self.core.ops, ClusterOps):
            self._when_ready(s, channel, lambda ch: None, later,
                             lambda ch: self._members(channel, ch))
            return None
        return self._members(channel, self.core.registry.get(channel))

    def _members(self, channel: str, ch: Channel | None) -> Reply:
        members = [m.to_wire() for m in ch.members.values()] if ch is not None else []
        return json_reply({"channel": channel, "members": members})

    def _when_ready(self, s: RestCaller, channel: str, need: Callable[[Channel], int | None],
                    later: Later, reply: Callable[[Channel], Reply]) -> None:
        """A node of a cluster: follow ``channel`` (created for the caller, reclaimed when
        idle), then reply once its copy holds what is needed."""
        ops = self.core.ops
        assert isinstance(ops, ClusterOps)
        ch = self.core.registry.get_or_create(channel, s.owner)

        def done(failed: str | None) -> None:
            if failed is not None:
                later(error_reply(error(50000, f"the backplane is unavailable; try again: "
                                               f"{failed}")))
            else:
                later(reply(ch))

        ops.when_ready(ch, need, done)

    # ---------------------------------------------------------------- channel streams

    def open_events(self, s: RestCaller, channel: str, last_event_id: str | None,
                    transport: Any, now: float) -> Session:
        """``GET /channels/{channel}/events``: a session attached to ``channel`` (resuming
        after ``Last-Event-ID``) whose output the driver writes as Server-Sent Events. It
        ends with its token (40140), a narrowed capability or a revoked key, like a
        WebSocket connection. Raises before anything is sent when the request is refused."""
        core = self.core
        fr.validate_channel_name(channel)
        core.ops.check(s, "subscribe", channel)
        position = parse_last_event_id(last_event_id)
        core.registry.get_or_create(channel, s.owner)  # 42908 / 42909 before streaming
        session = core.open_session(now, transport)
        session.connected, session.resumable, session.flow_control = True, False, True
        session.client_id, session.client_id_json = s.client_id, s.client_id_json
        session.capability = s.capability
        session.key_id, session.token_expires = s.key_id, s.token_expires
        session.bucket = TokenBucket(core.config.publish_rate, core.config.publish_burst)
        core.timers.token(session)
        epoch, serial = position if position is not None else (None, None)
        core.ops.on_attach(session, fr.Attach(channel=channel, from_serial=serial,
                                              epoch=epoch), now)
        return session
