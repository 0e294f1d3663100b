"""The broker's plain records: its options, one client session, a parked (resumable)
session, and the outputs the core hands to its driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rtkit.core.tokens import Capability
from rtkit.errors import RtkitError


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
