"""The broker's plain records: one client session, a parked (resumable) session, and the
outputs the core hands to its driver (:class:`Send`, :class:`Disconnect`) through an
:class:`Outbox`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rtkit.core import frames as fr
from rtkit.core.config import BrokerConfig
from rtkit.core.tokens import Capability
from rtkit.errors import RtkitError

if TYPE_CHECKING:
    from rtkit.core.streams import Stream

_NOTHING = Capability({})

__all__ = [
    "BrokerConfig", "Disconnect", "Outbox", "Output", "Parked", "Send", "Session",
    "close_code_for",
]


@dataclass(eq=False, slots=True)
class Session:
    """One client connection as the broker sees it. ``transport`` belongs to the driver.

    Kept small (thousands of idle connections): collections that most sessions never use
    (presence memberships, pending streams) are created on first use.
    """

    connection_id: str
    connection_key: str
    opened_at: float
    transport: Any = None
    connected: bool = False
    closed: bool = False
    client_id: str | None = None
    client_id_json: str = "null"  # client_id as JSON, for the messages it publishes
    key_id: str | None = None
    capability: Capability = _NOTHING
    #: Wall-clock expiry of the token (None for a key or before connecting).
    token_expires: float | None = None
    channels: set[str] = field(default_factory=set)
    # Memo of capability checks: (operation, channel) -> allowed. Cleared when it changes.
    allowed: dict[tuple[str, str], bool] = field(default_factory=dict)
    bucket: Any = None
    protocol_errors: int = 0
    #: Requests refused for the rate (a driver may read more slowly from a flooder).
    rate_limited: int = 0
    #: Ids of publishes refused for rate, in order: a later publish is refused until they
    #: have come again (a connection's publishes keep their order).
    held_for: deque[str] = field(default_factory=deque)
    #: Frames received before ``connected`` (a tiny allowance, see PREAUTH_FRAMES).
    early_frames: int = 0
    next_heartbeat: float = 0.0
    published: int = 0
    #: Publishes handed to a backplane and not answered yet.
    inflight: int = 0
    #: False once the session ended on purpose (close, fatal error): nothing to resume.
    resumable: bool = True
    #: Channels where this session is present (None until it first enters).
    presence: set[str] | None = None
    #: Replays and long answers still to send, oldest first (None when there are none).
    streams: deque[Stream] | None = None
    #: True when the driver sends streams itself as the connection drains (see
    #: ``BrokerCore.pump``); otherwise they are written out at once, in frames.
    flow_control: bool = False
    #: On a node of a cluster: the id of the connection this one continues, made on another
    #: node (its publish ids keep their scope); None: this connection's own id.
    origin: str | None = None

    @property
    def owner(self) -> str:
        """Who is charged for quotas and scopes publish ids: the client id when there is one,
        else the connection (whose id survives a resume; in a cluster, the id of the
        connection it continues, on any node)."""
        if self.client_id is not None:
            return f"u{len(self.client_id)}:{self.client_id}"
        return f"c:{self.origin or self.connection_id}"


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
    """Close the session's transport with ``close_code``; with ``abort`` drop it at once
    without a closing handshake (its outbound buffer is full: nothing more can be sent)."""

    session: Session
    close_code: int
    reason: str
    abort: bool = False


Output = Send | Disconnect


class Outbox:
    """What the core wants sent, in order, until the driver takes it."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Output] = []

    def send(self, s: Session, frame: fr.Frame) -> None:
        self.items.append(Send((s,), fr.encode(frame)))

    def send_many(self, targets: tuple[Session, ...], frame: fr.Frame) -> None:
        self.items.append(Send(targets, fr.encode(frame)))

    def text(self, targets: tuple[Session, ...], text: str) -> None:
        self.items.append(Send(targets, text))

    def disconnect(self, s: Session, code: int, reason: str, abort: bool = False) -> None:
        self.items.append(Disconnect(s, code, reason, abort))

    def take(self) -> list[Output]:
        items, self.items = self.items, []
        return items


def close_code_for(err: RtkitError) -> int:
    """WebSocket close code for a fatal error: 4000 + the HTTP-like class (4401, 4429...)."""
    return 4000 + (err.code // 100) % 1000 if 40000 <= err.code < 60000 else 4000
