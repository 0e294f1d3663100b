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
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.channel_ops import ChannelOperations
from rtkit.core.channels import Channel
from rtkit.core.session import (
    BrokerConfig,
    Disconnect,
    Output,
    Parked,
    Send,
    Session,
    close_code_for,
)
from rtkit.core.tokens import ApiKey, Capability, KeyStore, verify_token
from rtkit.errors import ProtocolError, RtkitError, error

_ids = itertools.count(1)

__all__ = [
    "BrokerConfig", "BrokerCore", "Disconnect", "Output", "Parked", "Send", "Session",
    "close_code_for",
]


class BrokerCore(ChannelOperations):
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
            server_time=int(now * 1000),
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
        now_ms = int(now * 1000)
        for name, ch in list(self.channels.items()):
            ch.prune(now_ms)
            if ch.is_idle() and not ch.pending:
                del self.channels[name]
                self._tombstones[name] = (ch.epoch, ch.serial)
                if len(self._tombstones) > self.config.max_channels:
                    self._tombstones.popitem(last=False)

    def expire_tokens(self, client_id: str | None, now: float) -> int:
        """Make the tokens of ``client_id``'s sessions (all, if None) expire now: the next
        tick ends those sessions with 40140, as a real expiry would. Returns how many."""
        hit = [s for s in self.sessions.values() if s.token_expires is not None
               and (client_id is None or s.client_id == client_id)]
        for s in hit:
            s.token_expires = now
        return len(hit)

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

    def take_output(self) -> list[Output]:
        """Everything to send, in order; batches of pending deliveries are sealed first."""
        for ch in list(self._dirty):
            self._seal(ch)
        out, self._out = self._out, []
        return out
