"""The broker's session logic, sans I/O.

The driver opens a :class:`Session` per transport, feeds every received frame to
:meth:`BrokerCore.receive`, calls :meth:`BrokerCore.tick` regularly, and performs what
:meth:`BrokerCore.take_output` returns, in order: :class:`Send` (one text to one or many
sessions) and :class:`Disconnect`. A driver that sets ``session.flow_control`` also calls
:meth:`BrokerCore.pump` when that session's connection has drained, to send replays and long
answers a frame budget at a time (see ``streams.py``).

``now`` is **monotonic** seconds: every interval (heartbeats, TTLs, rate limits, the auth
timeout) is measured with it, so a wall-clock step changes none of them. Wall-clock time (for
message timestamps, ``server_time`` and token expiry) is ``now + wall_offset``; the driver
keeps :attr:`BrokerCore.wall_offset` up to date (it is 0 by default: then ``now`` is taken
for wall time too, as a simulator with one virtual clock wants).

The rules are split by composition: ``connect`` and ``auth`` frames go to
:class:`~rtkit.core.handshake.Handshake`, channel frames to
:class:`~rtkit.core.channel_ops.ChannelOps` (or, on a node of a cluster,
:class:`~rtkit.core.cluster_ops.ClusterOps`); this module keeps sessions, input checks, rate
limits, timers and output.

Work is proportional to activity, not to state: timers live in queues ordered by deadline,
presence is indexed by session, and idle channels are reclaimed a few at a time.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.backplane import NodeView
from rtkit.core.channel_ops import ChannelOps
from rtkit.core.channels import Channel, ChannelRegistry
from rtkit.core.cluster_ops import ClusterOps
from rtkit.core.config import PREAUTH_FRAMES, BrokerConfig
from rtkit.core.gate import ConnectionGate
from rtkit.core.handshake import Handshake
from rtkit.core.intake import fast_publish
from rtkit.core.session import (
    Disconnect,
    Outbox,
    Output,
    Parked,
    Send,
    Session,
    close_code_for,
)
from rtkit.core.timers import SessionTimers
from rtkit.core.timing import TokenBucket
from rtkit.core.tokens import KeyStore
from rtkit.errors import ProtocolError, RtkitError, error

_ids = itertools.count(1)
_RATE_LIMITED = fr.dumps(error(42900).to_wire())
#: Publish ids remembered while a connection's refused publishes are awaited (beyond, a
#: client that never sends them again loses its ordering guarantee, nothing else).
HELD_IDS = 10_000
HEARTBEAT = '{"action":"heartbeat"}'

__all__ = [
    "HEARTBEAT", "BrokerConfig", "BrokerCore", "Disconnect", "Output", "Parked", "Send",
    "Session", "close_code_for",
]


class BrokerCore:
    """Sessions, channels and every protocol rule of the broker."""

    def __init__(
        self,
        config: BrokerConfig,
        keys: KeyStore,
        bucket_factory: Callable[[], Any] | None = None,
        node: NodeView | None = None,
        cluster_secret: bytes | None = None,
    ) -> None:
        """``node``: this broker is a node of a cluster sharing its channels through a
        backplane (see ``rtkit.core.cluster_ops``); without it channels live here alone.
        ``cluster_secret`` (a node: the same on every node) signs connection keys, so that a
        connection that moves to another node keeps the scope of its publish ids there (see
        ``rtkit.core.handshake``)."""
        self.config = config
        self.cluster_secret = cluster_secret
        self.keys = keys
        self.sessions: dict[str, Session] = {}
        self.parked: OrderedDict[str, Parked] = OrderedDict()  # by connection_key, oldest first
        self.registry = ChannelRegistry(config)
        self.outbox = Outbox()
        self.gate = ConnectionGate(config)
        self.stats = {
            "connections_opened": 0, "received": 0, "published": 0, "delivered_frames": 0,
            "protocol_errors": 0, "rate_limited": 0, "slow_consumers": 0, "resumed": 0,
            "resume_refused": 0, "replayed": 0, "continuity_lost": 0, "revoked": 0,
        }
        if cluster_secret is not None:
            self.stats["moved_here"] = 0  # connections continued from another node
        # Chosen once: the in-memory broker runs ChannelOps and pays nothing for a cluster.
        self.ops: ChannelOps = (
            ChannelOps(config, self.registry, self.outbox, self.stats, self.refuse)
            if node is None else
            ClusterOps(config, self.registry, self.outbox, self.stats, self.refuse, node,
                       self.sessions, lambda s, err: self.fatal(s, err, None), self.wall))
        self._bucket_factory = bucket_factory or (
            lambda: TokenBucket(config.publish_rate, config.publish_burst)
        )
        self.now = 0.0  # the latest monotonic time the driver told us about
        #: Wall-clock seconds minus monotonic seconds (see the module docstring).
        self.wall_offset = 0.0
        self.timers = SessionTimers(config)
        #: The ``connect`` and ``auth`` frames (see ``rtkit.core.handshake``).
        self.handshake = Handshake(self)

    @property
    def channels(self) -> dict[str, Channel]:
        return self.registry.channels

    def wall(self, now: float) -> float:
        """Wall-clock seconds for monotonic ``now``."""
        return now + self.wall_offset

    # ---------------------------------------------------------------- session lifecycle

    def open_session(self, now: float, transport: Any = None) -> Session:
        self.now = now
        cid = f"c{next(_ids)}-{secrets.token_hex(3)}"
        s = Session(cid, f"{cid}!{secrets.token_urlsafe(12)}", now, transport)
        s.bucket = self._bucket_factory()
        self.sessions[cid] = s
        self.timers.opened(s)
        self.stats["connections_opened"] += 1
        return s

    def session_lost(self, s: Session, now: float) -> None:
        """The transport is gone: detach everywhere and leave presence (announced)."""
        if s.closed:
            return
        s.closed = True
        if self.sessions.get(s.connection_id) is s:
            del self.sessions[s.connection_id]
        if s.connected and s.resumable:
            self.parked[s.connection_key] = Parked(s.connection_id, s.client_id, s.published, now)
        self.ops.session_gone(s)

    def shutdown(self) -> None:
        """Tell every session the broker is going away."""
        err = error(50001)
        for s in list(self.sessions.values()):
            self.outbox.send(s, fr.Closed(error=err))
            self.outbox.disconnect(s, 1001, f"{err.code} {err.message}")

    # ---------------------------------------------------------------- input

    def receive(self, s: Session, data: str | bytes, now: float) -> None:
        """Handle one frame received from ``s`` (a text frame as ``str``; ``bytes`` is a
        binary frame, refused with 40004)."""
        if s.closed:
            return
        self.now = now
        self.stats["received"] += 1
        if s.connected and type(data) is str and not s.held_for:
            fast = fast_publish(data, self.registry.channels)
            if fast is not None:
                p, data_json = fast
                if not s.bucket.take(now):
                    return self._rate_limited(s, "nack", p.ref, p.id)
                return self.ops.publish(s, p.ref, p.channel, p.name, data_json, p.id, now,
                                        self.wall(now))
        if not s.connected:
            s.early_frames += 1
            if s.early_frames > PREAUTH_FRAMES:  # a tiny allowance before authenticating
                self.stats["rate_limited"] += 1
                return self.fatal(s, error(42900, "too many frames before connect"), None)
        ref: fr.Ref | None = None
        try:
            obj = fr.parse_json(data)
            ref = _safe_ref(obj.get("ref"))
            fr.validate(obj, data, fr.CLIENT_FRAME_DEPTH)  # type: ignore[arg-type]
            f = fr.decode_object(obj, fr.CLIENT_FRAMES)
        except ProtocolError as exc:
            return self.refuse(s, ref, exc, False)
        held = s.held_for
        if held and isinstance(f, fr.Publish) and f.id != held[0]:
            # Earlier publishes were refused for rate and are not back yet: refuse the
            # later ones too (they come back after them), so the order is kept.
            if f.id is not None and f.id not in held and len(held) < HELD_IDS:
                held.append(f.id)
            self.outbox.text((s,), f'{{"action":"nack","ref":{fr.dumps(f.ref)},'
                                   f'"error":{_RATE_LIMITED}}}')
            return None
        if s.connected and not s.bucket.take(now):
            if isinstance(f, fr.Heartbeat) and f.ref is None:
                # Over the rate a heartbeat is not echoed (and not answered either).
                self.stats["rate_limited"] += 1
                s.rate_limited += 1
                return None
            if isinstance(f, fr.Publish):
                return self._rate_limited(s, "nack", f.ref, f.id)
            return self._rate_limited(s, "error", getattr(f, "ref", None), None)
        if held and isinstance(f, fr.Publish):
            held.popleft()  # the first refused publish is back: the next one is awaited
        return self._dispatch(s, f, now, data)

    def _rate_limited(self, s: Session, action: str, ref: fr.Ref | None,
                      pub_id: str | None) -> None:
        """One rate for every operation; over it, requests are refused (not counted as
        protocol errors: a burst is not an attack)."""
        self.stats["rate_limited"] += 1
        s.rate_limited += 1
        if action == "nack" and pub_id is not None and not s.held_for:
            s.held_for.append(pub_id)  # the ones after it wait until it is back
        self.outbox.text((s,), f'{{"action":"{action}","ref":{fr.dumps(ref)},'
                               f'"error":{_RATE_LIMITED}}}')

    def refuse(self, s: Session, ref: fr.Ref | None, exc: RtkitError, nack: bool) -> None:
        """Answer a refused request. Bad requests and refused credentials or capabilities
        (400xx-403xx) count towards ``max_protocol_errors``; limits (429xx) do not."""
        if exc.code < 40400:
            s.protocol_errors += 1
            self.stats["protocol_errors"] += 1
            if s.protocol_errors > self.config.max_protocol_errors:
                return self.fatal(s, error(42904), ref)
        self.outbox.send(s, fr.Nack(ref=ref, error=exc) if nack else fr.Error(ref=ref, error=exc))
        return None

    def _dispatch(self, s: Session, f: fr.Frame, now: float, text: str | bytes) -> None:
        if isinstance(f, fr.Heartbeat):
            if f.ref is not None:
                self.outbox.send(s, fr.Heartbeat(ref=f.ref))
            return None
        if isinstance(f, fr.Connect):
            return self.handshake.on_connect(s, f, now)
        if not s.connected:
            return self.refuse(s, getattr(f, "ref", None), ProtocolError(code=40005),
                                isinstance(f, fr.Publish))
        ops = self.ops
        if isinstance(f, fr.Publish):
            return ops.on_publish(s, f, now, self.wall(now), text)
        if isinstance(f, fr.Attach):
            return ops.on_attach(s, f, now)
        if isinstance(f, fr.Detach):
            return ops.on_detach(s, f)
        if isinstance(f, fr.History):
            return ops.on_history(s, f, now)
        if isinstance(f, fr.Presence):
            return ops.on_presence(s, f, self.wall(now))
        if isinstance(f, fr.Auth):
            return self.handshake.on_auth(s, f, now)
        if isinstance(f, fr.Close):
            return ops.close(s, f.ref)
        raise ProtocolError(code=40002)  # pragma: no cover - table and dispatch agree

    # ---------------------------------------------------------------- time

    def tick(self, now: float) -> None:
        """Due timers only: auth timeouts, heartbeats, token expiries, resumable sessions, and
        a few channels' expired messages (see :meth:`ChannelRegistry.sweep`)."""
        self.now = now
        for s in list(self.timers.late_to_authenticate(now)):
            self.fatal(s, error(40005, "no connect frame in time"), None)
        for s in self.timers.heartbeats_due(now):
            self.outbox.text((s,), HEARTBEAT)
        for s in list(self.timers.tokens_expired(self.wall(now))):
            self.fatal(s, error(40140), None)
        parked, ttl = self.parked, self.config.connection_state_ttl
        while parked and now - next(iter(parked.values())).lost_at > ttl:
            parked.popitem(last=False)
        self.registry.sweep(now)

    def expire_tokens(self, client_id: str | None, now: float) -> int:
        """End the authorization of ``client_id``'s sessions (all, if None) now, as a token
        expiry would: each is closed with 40140 and may resume after authenticating again
        (a token client renews its token; a key client presents its key again). Sessions
        authenticated with a key are included. Returns how many."""
        hit = [s for s in self.sessions.values() if s.connected
               and (client_id is None or s.client_id == client_id)]
        for s in hit:
            self.fatal(s, error(40140), None)
        return len(hit)

    def revoke_key(self, key_id: str, now: float) -> int:
        """Revoke ``key_id`` (refused from now on) and end every live session authenticated
        with it or with a token it signed (fatal 40108, not resumable). Returns how many."""
        self.now = now
        self.keys.revoke(key_id)
        # Parked sessions need not be touched: resuming one means authenticating again.
        hit = [s for s in self.sessions.values() if s.connected and s.key_id == key_id]
        for s in hit:
            self.fatal(s, error(40108), None)
        self.stats["revoked"] += len(hit)
        return len(hit)

    def overflowed(self, s: Session) -> None:
        """The driver found ``s``'s outbound buffer over the limit: drop it at once (its buffer
        is full, so nothing more is sent to it; it may resume later)."""
        if s.closed:
            return
        self.stats["slow_consumers"] += 1
        err = error(42903)
        s.resumable = True
        self.outbox.disconnect(s, close_code_for(err), f"{err.code} {err.message}", abort=True)
        self.session_lost(s, self.now)

    # ---------------------------------------------------------------- output

    def pump(self, s: Session, budget: float = math.inf) -> bool:
        """Write about ``budget`` bytes of ``s``'s replays and long answers (at least one
        frame); returns whether more remain. For drivers that set ``s.flow_control``."""
        return self.ops.streamer.pump(s, budget)

    def fatal(self, s: Session, err: RtkitError, ref: fr.Ref | None) -> None:
        # An expired token, a slow reader or a channel whose shared history was lost (50002)
        # may come back and resume; refused credentials or a protocol abuser may not.
        s.resumable = err.code in (40140, 42903, 50002)
        self.outbox.send(s, fr.Error(ref=ref, error=err, fatal=True))
        self.outbox.disconnect(s, close_code_for(err), f"{err.code} {err.message}"[:120])
        self.session_lost(s, self.now)

    def take_output(self) -> list[Output]:
        """Everything to send, in order; batches of pending deliveries are sealed first."""
        self.ops.flush()
        return self.outbox.take()

    # ---------------------------------------------------------------- resources

    def resources(self) -> dict[str, dict[str, float | int | None]]:
        """Each bounded resource: what is in use against its limit (see ``server.stats()``)."""
        c, reg = self.config, self.registry
        largest = max((ch.store.message_bytes for ch in reg.channels.values()), default=0)
        present = sum(len(s.presence or ()) for s in self.sessions.values())
        most_present = max((len(s.presence or ()) for s in self.sessions.values()), default=0)
        return {
            "connections": {"used": self.gate.open or len(self.sessions),
                            "limit": c.max_connections},
            "connections_per_address": {"used": max(self.gate.by_address.values(), default=0),
                                        "limit": c.max_connections_per_address},
            "channels": {"used": len(reg.channels), "limit": c.max_channels},
            "channels_per_client": {"used": max(reg.created.values(), default=0),
                                    "limit": c.max_channels_per_client},
            "history_bytes": {"used": reg.ledger.bytes, "limit": c.max_history_bytes},
            "channel_history_bytes": {"used": largest, "limit": c.max_channel_history_bytes},
            "presence_memberships": {"used": present, "limit": None},
            "presence_per_connection": {"used": most_present,
                                        "limit": c.max_presence_per_connection},
            "resumable_connections": {"used": len(self.parked), "limit": None},
        }


def _safe_ref(value: object) -> fr.Ref | None:
    """A ref fit to echo in an error (an int or a short valid string), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= fr.MAX_REF_LENGTH:
        if value.isascii():
            return value
        try:
            value.encode()
        except UnicodeEncodeError:
            return None
        return value
    return None
