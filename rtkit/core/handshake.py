"""Connect and auth frames of the broker, sans I/O: credentials, resumes, and connections
continued from another node of a cluster.

Part of :class:`~rtkit.core.broker.BrokerCore` (its :attr:`~BrokerCore.handshake`). A
``connect`` authenticates the session (an API key or a token), may resume the state of a
connection that was lost (parked) or whose transport is half-open, and is answered with
``connected``; an ``auth`` renews the credentials of a connected session (which may narrow
what it may do). On a node of a cluster, connection keys are signed with the cluster's
secret, so a connection that moves to another node keeps the scope of its publish ids there
(:meth:`Handshake.moved_here`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from rtkit.core import frames as fr
from rtkit.core.session import Parked, Session
from rtkit.core.tokens import Capability, verify_token
from rtkit.errors import ProtocolError, RtkitError, error

if TYPE_CHECKING:
    from rtkit.core.broker import BrokerCore


class Handshake:
    """The ``connect`` and ``auth`` frames of one :class:`BrokerCore`'s sessions."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core

    def authenticate(self, f: fr.Connect | fr.Auth, now: float) -> tuple[
        str | None, Capability, float | None, str, bool
    ]:
        """(client id, capability, wall expiry, key id, authenticated by key)."""
        core = self.core
        key = getattr(f, "key", None)
        if key is not None and f.token is not None:
            raise ProtocolError("give a key or a token, not both", code=40003)
        if key is not None:
            api_key = core.keys.check_key(key)
            return None, api_key.capability, None, api_key.key_id, True
        if f.token is None:
            raise error(40106)
        claims = verify_token(f.token, core.keys, core.wall(now))
        return claims.client_id, claims.capability, claims.expires_at, claims.key_id, False

    def on_connect(self, s: Session, f: fr.Connect, now: float) -> None:
        core = self.core
        if s.connected:
            return core.refuse(s, f.ref, ProtocolError(code=40006), False)
        try:
            if f.protocol != fr.PROTOCOL_VERSION:
                raise ProtocolError(f"protocol {f.protocol} not supported", code=40009)
            client_id, cap, expires, key_id, by_key = self.authenticate(f, now)
            if by_key:
                client_id = f.client_id
            elif f.client_id is not None and f.client_id != client_id:
                raise error(40107)
        except RtkitError as exc:
            return core.fatal(s, exc, f.ref)
        s.connected, s.client_id, s.capability = True, client_id, cap
        s.client_id_json = fr.dumps(client_id)
        if core.cluster_secret is not None:
            s.connection_key = self.signed_key(s.connection_id, s.connection_id, client_id)
        s.token_expires, s.key_id = expires, key_id
        core.timers.token(s)
        core.timers.connected(s, now)
        resumed, resume_error = False, None
        if f.resume is not None:
            resumed = self.resume(s, f.resume, now)
            if not resumed:
                resume_error = error(40401)
        core.outbox.send(s, fr.Connected(
            ref=f.ref,
            connection_id=s.connection_id,
            connection_key=s.connection_key,
            client_id=client_id,
            heartbeat_interval=round(core.config.heartbeat_interval * 1000),
            connection_state_ttl=round(core.config.connection_state_ttl * 1000),
            server_time=int(core.wall(now) * 1000),
            token_expires=None if expires is None else round(expires * 1000),
            limits=core.config.limits(),
            resumed=resumed,
            error=resume_error,
        ))
        return None

    def resume(self, s: Session, key: str, now: float) -> bool:
        """Give ``s`` the identity of the connection ``key`` names, if still resumable and
        the credentials name the same client. Nothing is touched unless both hold."""
        core = self.core
        parked = core.parked.get(key)
        if parked is None:
            # The old transport may be half-open and not noticed yet: take over from it.
            old = core.sessions.get(key.partition("!")[0])
            if (old is None or old is s or not old.connected
                    or not secrets.compare_digest(old.connection_key, key)
                    or old.client_id != s.client_id):
                core.stats["resume_refused"] += 1
                if old is None:
                    self.moved_here(s, key)
                return False
            old.resumable = False
            core.outbox.disconnect(old, 4409, "superseded by a resumed connection")
            core.session_lost(old, now)
            parked = Parked(old.connection_id, old.client_id, old.published, now)
        elif (now - parked.lost_at > core.config.connection_state_ttl
              or parked.client_id != s.client_id):
            if now - parked.lost_at > core.config.connection_state_ttl:
                del core.parked[key]
            core.stats["resume_refused"] += 1
            return False
        core.parked.pop(key, None)
        if core.sessions.get(s.connection_id) is s:
            del core.sessions[s.connection_id]
        s.connection_id, s.connection_key, s.published = parked.connection_id, key, parked.published
        if core.cluster_secret is not None:
            origin = key.partition("!")[2].rpartition(".")[0]
            s.origin = origin if origin != s.connection_id else None
        core.sessions[s.connection_id] = s
        core.stats["resumed"] += 1
        return True

    def signed_key(self, connection_id: str, origin: str, client_id: str | None) -> str:
        """A node's connection key: ``<id>!<origin>.<signature>``, where ``origin`` is the
        connection that scopes its publish ids (itself, or the one it continues), signed
        with the client id so that every node of the cluster can check it."""
        assert self.core.cluster_secret is not None
        who = "-" if client_id is None else f"u{client_id}"
        mac = hmac.new(self.core.cluster_secret, f"{connection_id}\0{origin}\0{who}".encode(),
                       hashlib.sha256).digest()
        return f"{connection_id}!{origin}.{base64.urlsafe_b64encode(mac[:18]).decode()}"

    def moved_here(self, s: Session, key: str) -> None:
        """A connection of another node of the cluster (its key signed for the same client)
        asks to resume here. Its state cannot be (it lived on that node: every channel
        resumes from its serial instead, and presence is entered again), but ``s``
        continues it: its publish ids keep their scope, so a publish sent again here after
        its node died unanswered is still recognised as a duplicate."""
        cid, _, rest = key.partition("!")
        origin = rest.rpartition(".")[0]
        if (self.core.cluster_secret is None or not origin
                or not secrets.compare_digest(self.signed_key(cid, origin, s.client_id), key)):
            return
        s.origin = origin
        s.connection_key = self.signed_key(s.connection_id, origin, s.client_id)
        self.core.stats["moved_here"] += 1

    def on_auth(self, s: Session, f: fr.Auth, now: float) -> None:
        core = self.core
        try:
            client_id, cap, expires, key_id, _ = self.authenticate(f, now)
            if client_id != s.client_id:
                raise error(40107)
        except RtkitError as exc:
            return core.refuse(s, f.ref, exc, False)
        s.capability, s.token_expires, s.key_id = cap, expires, key_id
        s.allowed.clear()
        core.timers.token(s)
        # A renewed token may grant less: detach and leave presence where it no longer may.
        core.ops.narrow(s)
        core.outbox.send(s, fr.Authorized(
            ref=f.ref,
            client_id=client_id,
            token_expires=None if expires is None else round(expires * 1000),
        ))
        return None
