"""The broker's session logic, sans I/O.

The driver opens a :class:`Session` per transport, feeds every received frame to
:meth:`BrokerCore.receive` with ``now`` (seconds since the Unix epoch), calls
:meth:`BrokerCore.tick` regularly, and performs what :meth:`BrokerCore.take_output` returns,
in order: :class:`Send` (one text to one or many sessions) and :class:`Disconnect`.

Deliveries are batched: messages published to a channel during one driver iteration go to
its subscribers as one ``message`` frame, encoded once for all of them.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.channels import Channel, Stored
from rtkit.core.frames import dumps
from rtkit.core.tokens import ApiKey, Capability, KeyStore, verify_token
from rtkit.errors import ProtocolError, RtkitError, error

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Broker options. Times in seconds, sizes in bytes (UTF-8 JSON)."""

    heartbeat_interval: float = 15.0
    connection_state_ttl: float = 120.0
    history_size: int = 1000
    history_ttl: float = 3600.0
    max_message_size: int = 64 * 1024
    max_frame_size: int = 256 * 1024
    publish_rate: float = 1000.0
    publish_burst: int = 2000
    max_channels_per_connection: int = 1000
    max_channels: int = 100_000
    max_outbound_buffer: int = 8 * 1024 * 1024
    max_protocol_errors: int = 50
    dedup_size: int = 10_000
    auth_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0 or self.connection_state_ttl < 0:
            raise ValueError("heartbeat_interval must be > 0 and connection_state_ttl >= 0")
        if self.history_size < 0 or self.max_message_size > self.max_frame_size:
            raise ValueError("history_size must be >= 0 and max_message_size <= max_frame_size")

    def limits(self) -> dict[str, int]:
        return {
            "max_message_size": self.max_message_size,
            "max_frame_size": self.max_frame_size,
            "publish_rate": int(self.publish_rate),
            "publish_burst": self.publish_burst,
            "history_size": self.history_size,
            "max_channels": self.max_channels_per_connection,
        }


@dataclass(eq=False, slots=True)
class Session:
    """One client connection as the broker sees it. ``transport`` belongs to the driver."""

    connection_id: str
    connection_key: str
    opened_at: float
    transport: Any = None
    connected: bool = False
    closed: bool = False
    client_id: str | None = None
    key_id: str | None = None
    capability: Capability = field(default_factory=lambda: Capability({}))
    token_expires: float | None = None
    channels: set[str] = field(default_factory=set)
    # Memo of capability checks: (operation, channel) -> allowed. Cleared when it changes.
    allowed: dict[tuple[str, str], bool] = field(default_factory=dict)
    bucket: Any = None
    protocol_errors: int = 0
    next_heartbeat: float = 0.0
    published: int = 0
    #: False once the session ended on purpose (close, fatal error): nothing to resume.
    resumable: bool = True


@dataclass(frozen=True, slots=True)
class Parked:
    """A lost connection that may still be resumed until ``lost_at + connection_state_ttl``."""

    connection_id: str
    client_id: str | None
    published: int
    lost_at: float


@dataclass(frozen=True, slots=True)
class Send:
    targets: tuple[Session, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    session: Session
    close_code: int
    reason: str


Output = Send | Disconnect


def close_code_for(err: RtkitError) -> int:
    """WebSocket close code for a fatal error: 4000 + the HTTP-like class (4401, 4429...)."""
    return 4000 + (err.code // 100) % 1000 if 40000 <= err.code < 60000 else 4000


class BrokerCore:
    """Channels, sessions and every protocol rule of the broker."""

    def __init__(
        self,
        config: BrokerConfig,
        keys: KeyStore,
        bucket_factory: Callable[[], Any] | None = None,
    ) -> None:
        from rtkit.core.timing import TokenBucket

        self.config = config
        self.keys = keys
        self.channels: dict[str, Channel] = {}
        self.sessions: dict[str, Session] = {}
        self.parked: dict[str, Parked] = {}  # by connection_key
        # Channels forgotten while idle keep their epoch and last serial here, so that one
        # used again continues its numbering and resuming clients see no false loss.
        self._tombstones: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._out: list[Output] = []
        self._dirty: dict[Channel, None] = {}
        self._bucket_factory = bucket_factory or (
            lambda: TokenBucket(config.publish_rate, config.publish_burst)
        )
        self._max_batch = max(1024, config.max_frame_size - 512)
        self.now = 0.0  # the latest time the driver told us about
        self.stats = {
            "connections_opened": 0, "received": 0, "published": 0, "delivered_frames": 0,
            "protocol_errors": 0, "slow_consumers": 0, "resumed": 0, "resume_refused": 0,
            "replayed": 0, "continuity_lost": 0,
        }

    # ---------------------------------------------------------------- session lifecycle

    def open_session(self, now: float, transport: Any = None) -> Session:
        self.now = now
        cid = f"c{next(_ids)}-{secrets.token_hex(3)}"
        s = Session(cid, f"{cid}!{secrets.token_urlsafe(12)}", now, transport)
        s.bucket = self._bucket_factory()
        self.sessions[cid] = s
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
        for name in list(s.channels):
            ch = self.channels.get(name)
            if ch is not None:
                self._seal(ch)
                ch.remove_subscriber(s)
        for ch in list(self.channels.values()):
            for member in ch.members_of(s.connection_id):
                self._presence(ch, "leave", member)
        s.channels.clear()

    def shutdown(self) -> None:
        """Tell every session the broker is going away."""
        err = error(50001)
        for s in list(self.sessions.values()):
            self._send(s, fr.Closed(error=err))
            self._out.append(Disconnect(s, 1001, f"{err.code} {err.message}"))

    # ---------------------------------------------------------------- input

    def receive(self, s: Session, data: str | bytes, now: float) -> None:
        """Handle one frame received from ``s``."""
        if s.closed:
            return
        self.now = now
        self.stats["received"] += 1
        ref: fr.Ref | None = None
        try:
            obj = fr.loads(data)
            raw_ref = obj.get("ref")
            if isinstance(raw_ref, int | str) and not isinstance(raw_ref, bool):
                ref = raw_ref
            self._dispatch(s, fr.decode_object(obj, fr.CLIENT_FRAMES), now)
        except ProtocolError as exc:
            self._protocol_error(s, exc, ref)

    def _protocol_error(self, s: Session, exc: RtkitError, ref: fr.Ref | None) -> None:
        s.protocol_errors += 1
        self.stats["protocol_errors"] += 1
        if s.protocol_errors > self.config.max_protocol_errors:
            self._fatal(s, error(42904), ref)
        else:
            self._send(s, fr.Error(ref=ref, error=exc))

    def _dispatch(self, s: Session, f: fr.Frame, now: float) -> None:
        if isinstance(f, fr.Publish):
            return self._on_publish(s, f, now)
        if isinstance(f, fr.Heartbeat):
            if f.ref is not None:
                self._send(s, fr.Heartbeat(ref=f.ref))
            return None
        if isinstance(f, fr.Connect):
            return self._on_connect(s, f, now)
        if not s.connected:
            raise ProtocolError(code=40005)
        if isinstance(f, fr.Attach):
            return self._on_attach(s, f, now)
        if isinstance(f, fr.Detach):
            return self._on_detach(s, f)
        if isinstance(f, fr.History):
            return self._on_history(s, f, now)
        if isinstance(f, fr.Presence):
            return self._on_presence(s, f, now)
        if isinstance(f, fr.Auth):
            return self._on_auth(s, f, now)
        if isinstance(f, fr.Close):
            s.resumable = False
            self._send(s, fr.Closed(ref=f.ref))
            self._out.append(Disconnect(s, 1000, "closed by client"))
            return None
        raise ProtocolError(code=40002)  # pragma: no cover - table and dispatch agree

    # ---------------------------------------------------------------- connect and auth

    def _authenticate(self, f: fr.Connect | fr.Auth, now: float) -> tuple[
        str | None, Capability, float | None, str, ApiKey | None
    ]:
        key = getattr(f, "key", None)
        if key is not None and f.token is not None:
            raise ProtocolError("give a key or a token, not both", code=40003)
        if key is not None:
            api_key = self.keys.check_key(key)
            return None, api_key.capability, None, api_key.key_id, api_key
        if f.token is None:
            raise error(40106)
        claims = verify_token(f.token, self.keys, now)
        return claims.client_id, claims.capability, claims.expires_at, claims.key_id, None

    def _on_connect(self, s: Session, f: fr.Connect, now: float) -> None:
        if s.connected:
            raise ProtocolError(code=40006)
        try:
            if f.protocol != fr.PROTOCOL_VERSION:
                raise ProtocolError(f"protocol {f.protocol} not supported", code=40009)
            client_id, cap, expires, key_id, api_key = self._authenticate(f, now)
            if api_key is not None:
                client_id = f.client_id
            elif f.client_id is not None and f.client_id != client_id:
                raise error(40107)
        except RtkitError as exc:
            return self._fatal(s, exc, f.ref)
        s.connected, s.client_id, s.capability = True, client_id, cap
        s.token_expires, s.key_id = expires, key_id
        s.next_heartbeat = now + self.config.heartbeat_interval
        resumed, resume_error = False, None
        if f.resume is not None:
            resumed = self._resume(s, f.resume, now)
            if not resumed:
                resume_error = error(40401)
        self._send(s, fr.Connected(
            ref=f.ref,
            connection_id=s.connection_id,
            connection_key=s.connection_key,
            client_id=client_id,
            heartbeat_interval=round(self.config.heartbeat_interval * 1000),
            connection_state_ttl=round(self.config.connection_state_ttl * 1000),
            server_time=round(now * 1000),
            token_expires=None if expires is None else round(expires * 1000),
            limits=self.config.limits(),
            resumed=resumed,
            error=resume_error,
        ))
        return None

    def _resume(self, s: Session, key: str, now: float) -> bool:
        """Give ``s`` the identity of the connection ``key`` names, if still resumable."""
        parked = self.parked.get(key)
        if parked is None:
            # The old transport may be half-open and not noticed yet: take over from it.
            old_id = key.partition("!")[0]
            old = self.sessions.get(old_id)
            if old is None or old.connection_key != key or old is s:
                self.stats["resume_refused"] += 1
                return False
            old.resumable = False
            self._out.append(Disconnect(old, 4409, "superseded by a resumed connection"))
            self.session_lost(old, now)
            parked = Parked(old.connection_id, old.client_id, old.published, now)
        elif now - parked.lost_at > self.config.connection_state_ttl:
            del self.parked[key]
            self.stats["resume_refused"] += 1
            return False
        if parked.client_id != s.client_id:
            self.stats["resume_refused"] += 1
            return False
        self.parked.pop(key, None)
        if self.sessions.get(s.connection_id) is s:
            del self.sessions[s.connection_id]
        s.connection_id, s.connection_key, s.published = parked.connection_id, key, parked.published
        self.sessions[s.connection_id] = s
        self.stats["resumed"] += 1
        return True

    def _on_auth(self, s: Session, f: fr.Auth, now: float) -> None:
        try:
            client_id, cap, expires, key_id, _ = self._authenticate(f, now)
            if client_id != s.client_id:
                raise error(40107)
        except RtkitError as exc:
            self._send(s, fr.Error(ref=f.ref, error=exc))
            return
        s.capability, s.token_expires, s.key_id = cap, expires, key_id
        s.allowed.clear()
        # A renewed token may grant less: detach from channels it no longer covers.
        for name in sorted(s.channels):
            if not cap.allows("subscribe", name):
                self._detach(s, self.channels[name], None, error(40300))
        self._send(s, fr.Authorized(
            ref=f.ref,
            client_id=client_id,
            token_expires=None if expires is None else round(expires * 1000),
        ))

    # ---------------------------------------------------------------- channels

    def _channel(self, name: str) -> Channel:
        ch = self.channels.get(name)
        if ch is None:
            if len(self.channels) >= self.config.max_channels:
                raise error(42908)
            c = self.config
            ch = Channel(
                name, history_size=c.history_size, history_ttl=c.history_ttl,
                dedup_size=c.dedup_size,
            )
            tomb = self._tombstones.pop(name, None)
            if tomb is not None:
                ch.epoch, ch.serial = tomb
            self.channels[name] = ch
        return ch

    def _check(self, s: Session, op: str, channel: str) -> None:
        key = (op, channel)
        ok = s.allowed.get(key)
        if ok is None:
            if len(s.allowed) > 4096:
                s.allowed.clear()
            ok = s.allowed[key] = s.capability.allows(op, channel)
        if not ok:
            raise error(40300, f"{op} on {channel!r} is not permitted by capability")

    def _on_attach(self, s: Session, f: fr.Attach, now: float) -> None:
        try:
            self._check(s, "subscribe", f.channel)
            if f.channel not in s.channels and (
                len(s.channels) >= self.config.max_channels_per_connection
            ):
                raise error(42906)
            ch = self._channel(f.channel)
        except RtkitError as exc:
            self._send(s, fr.Error(ref=f.ref, error=exc))
            return
        # Deliver what is already queued to the current subscribers first, so the new one
        # starts exactly after the serial announced in 'attached'.
        self._seal(ch)
        ch.add_subscriber(s)
        s.channels.add(ch.name)
        now_ms = round(now * 1000)
        replay: list[Stored] = []
        lost, lost_from = False, None
        if f.from_serial is not None:
            ch.prune(now_ms)
            if f.epoch is not None and f.epoch != ch.epoch:
                lost = True  # another incarnation of the channel: old serials mean nothing
            elif f.from_serial < ch.serial:
                replay = ch.since(f.from_serial)
                if not replay or replay[0].serial != f.from_serial + 1:
                    lost, lost_from = True, f.from_serial + 1
            if lost:
                self.stats["continuity_lost"] += 1
        elif f.rewind:
            replay = ch.query(min(f.rewind, self.config.history_size), None, now_ms)
        self._send(s, fr.Attached(ref=f.ref, channel=ch.name, serial=ch.serial, epoch=ch.epoch,
                                  lost=lost, lost_from=lost_from))
        self._replay(s, ch, replay)

    def _replay(self, s: Session, ch: Channel, stored: list[Stored]) -> None:
        """Send stored messages to one session in frames that respect the frame limit."""
        self.stats["replayed"] += len(stored)
        batch: list[str] = []
        size = 0
        for m in stored:
            if batch and size + len(m.fragment) + 256 > self._max_batch:
                self._send_batch((s,), ch, batch)
                batch, size = [], 0
            batch.append(m.fragment)
            size += len(m.fragment) + 1
        self._send_batch((s,), ch, batch)

    def _on_detach(self, s: Session, f: fr.Detach) -> None:
        ch = self.channels.get(f.channel)
        if ch is None or f.channel not in s.channels:
            self._send(s, fr.Detached(ref=f.ref, channel=f.channel))
            return
        self._detach(s, ch, f.ref, None)

    def _detach(self, s: Session, ch: Channel, ref: fr.Ref | None, err: RtkitError | None) -> None:
        self._seal(ch)
        ch.remove_subscriber(s)
        s.channels.discard(ch.name)
        self._send(s, fr.Detached(ref=ref, channel=ch.name, error=err))

    def _on_publish(self, s: Session, f: fr.Publish, now: float) -> None:
        if not s.connected:
            raise ProtocolError(code=40005)
        try:
            self._check(s, "publish", f.channel)
            if not s.bucket.take(now):
                raise error(42900)
            data_json = dumps(f.data)
            size = len(data_json.encode()) + len(f.name.encode())
            if size > self.config.max_message_size:
                raise error(42901, f"message is {size} bytes; the limit is "
                                   f"{self.config.max_message_size}")
            ch = self._channel(f.channel)
        except RtkitError as exc:
            self._send(s, fr.Nack(ref=f.ref, error=exc))
            return
        dup = ch.find_duplicate(f.id) if f.id is not None else None
        if dup is not None:
            self._send(s, fr.Ack(ref=f.ref, channel=ch.name, id=dup.id, serial=dup.serial,
                                 timestamp=dup.timestamp, duplicate=True))
            return
        s.published += 1
        msg_id = f.id if f.id is not None else f"{s.connection_id}:{s.published}"
        if ch.pending_bytes + size + 256 > self._max_batch:
            self._seal(ch)
        stored = ch.append(msg_id, f.name, data_json, round(now * 1000), s.client_id)
        self.stats["published"] += 1
        if ch.subscribers:
            self._dirty[ch] = None
        else:
            ch.take_pending()
        ack = (f'{{"action":"ack","ref":{dumps(f.ref)},"channel":{ch.name_json},'
               f'"id":{dumps(msg_id)},"serial":{stored.serial},"timestamp":{stored.timestamp}}}')
        self._out.append(Send((s,), ack))

    def _on_history(self, s: Session, f: fr.History, now: float) -> None:
        try:
            self._check(s, "history", f.channel)
        except RtkitError as exc:
            self._send(s, fr.Error(ref=f.ref, error=exc))
            return
        ch = self.channels.get(f.channel)
        limit = min(f.limit or 100, max(1, self.config.history_size))
        items = ch.query(limit, f.before, round(now * 1000), f.after) if ch else []
        body = ",".join(m.fragment for m in items)
        self._out.append(Send((s,), f'{{"action":"history_result","ref":{dumps(f.ref)},'
                                    f'"channel":{dumps(f.channel)},"messages":[{body}]}}'))

    def _on_presence(self, s: Session, f: fr.Presence, now: float) -> None:
        try:
            if f.op == "get":
                if not (s.capability.allows("subscribe", f.channel)
                        or s.capability.allows("presence", f.channel)):
                    self._check(s, "presence", f.channel)
            else:
                self._check(s, "presence", f.channel)
                if s.client_id is None:
                    raise error(40010)
                if not fr.is_json_value(f.data) or len(dumps(f.data)) > 4096:
                    raise error(42901, "presence data must be JSON of at most 4096 bytes")
            ch = self._channel(f.channel)
        except RtkitError as exc:
            self._send(s, fr.Error(ref=f.ref, error=exc))
            return
        if f.op != "get":
            assert s.client_id is not None
            member = fr.PresenceMember(s.client_id, s.connection_id, f.data, round(now * 1000))
            self._presence(ch, f.op, member)
        self._send(s, fr.PresenceResult(
            ref=f.ref, channel=ch.name, members=tuple(ch.members.values())))

    def _presence(self, ch: Channel, op: str, member: fr.PresenceMember) -> None:
        kind = ch.presence_change(op, member)  # type: ignore[arg-type]
        if kind is not None and ch.subscribers:
            self._seal(ch)
            event = fr.PresenceEvent(channel=ch.name, changes=(fr.PresenceChange(kind, member),))
            self._out.append(Send(ch.targets, fr.encode(event)))

    # ---------------------------------------------------------------- time

    def tick(self, now: float) -> None:
        """Heartbeats, token expiry, auth timeout, resumable sessions and history pruning."""
        self.now = now
        interval = self.config.heartbeat_interval
        ttl = self.config.connection_state_ttl
        for key in [k for k, p in self.parked.items() if now - p.lost_at > ttl]:
            del self.parked[key]
        for s in list(self.sessions.values()):
            if not s.connected:
                if now - s.opened_at > self.config.auth_timeout:
                    self._fatal(s, error(40005, "no connect frame in time"), None)
                continue
            if s.token_expires is not None and s.token_expires <= now:
                self._fatal(s, error(40140), None)
            elif s.next_heartbeat <= now:
                s.next_heartbeat = now + interval
                self._out.append(Send((s,), '{"action":"heartbeat"}'))
        now_ms = round(now * 1000)
        for name, ch in list(self.channels.items()):
            ch.prune(now_ms)
            if ch.is_idle() and not ch.pending:
                del self.channels[name]
                self._tombstones[name] = (ch.epoch, ch.serial)
                if len(self._tombstones) > self.config.max_channels:
                    self._tombstones.popitem(last=False)

    def overflowed(self, s: Session) -> None:
        """The driver found ``s``'s outbound buffer over the limit: disconnect it."""
        self.stats["slow_consumers"] += 1
        self._fatal(s, error(42903), None)

    # ---------------------------------------------------------------- output

    def _send(self, s: Session, frame: fr.Frame) -> None:
        self._out.append(Send((s,), fr.encode(frame)))

    def _fatal(self, s: Session, err: RtkitError, ref: fr.Ref | None) -> None:
        # An expired token or a slow reader may come back and resume; refused credentials
        # or a protocol abuser may not.
        s.resumable = err.code in (40140, 42903)
        self._send(s, fr.Error(ref=ref, error=err, fatal=True))
        self._out.append(Disconnect(s, close_code_for(err), f"{err.code} {err.message}"[:120]))
        self.session_lost(s, self.now)

    def _send_batch(self, targets: tuple[Session, ...], ch: Channel, batch: list[str]) -> None:
        if batch and targets:
            self._out.append(Send(targets, f'{{"action":"message","channel":{ch.name_json},'
                                           f'"messages":[{",".join(batch)}]}}'))
            self.stats["delivered_frames"] += 1

    def _seal(self, ch: Channel) -> None:
        if ch.pending:
            self._send_batch(ch.targets, ch, ch.take_pending())
        self._dirty.pop(ch, None)

    def take_output(self) -> list[Output]:
        """Everything to send, in order; batches of pending deliveries are sealed first."""
        for ch in list(self._dirty):
            self._seal(ch)
        out, self._out = self._out, []
        return out
