"""The broker's options (:class:`BrokerConfig`): times in seconds, sizes in bytes.

Every limit here is also a documented behaviour (``docs/protocol.md``); the ones a client needs
to know are announced in ``connected.limits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtkit.core.wire import MAX_DEPTH

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Broker options. Times in seconds (measured on a monotonic clock), sizes in bytes of
    UTF-8 JSON.

    **Continuity window.** Every channel keeps its messages for at least
    ``connection_state_ttl`` (a client that returns within it misses nothing) and at most
    ``max(history_ttl, connection_state_ttl)``, within two memory budgets:
    ``max_channel_history_bytes`` per channel and ``max_history_bytes`` for the whole broker
    (each stored message counts its encoded size plus :data:`RECORD_OVERHEAD`). The defaults
    hold 120 s of 1,000 messages a second of 200 bytes on one channel. Only when a budget
    forces an earlier eviction is continuity lost, and then a resuming client is told.
    The ids of published messages (for idempotent publishes) are kept at least as long as the
    continuity window, even when a budget evicted the message itself.

    ``history_size`` is the most messages one ``history`` request or ``rewind`` returns; it
    does not bound what is stored.
    """

    # -- time
    heartbeat_interval: float = 15.0
    connection_state_ttl: float = 120.0
    history_ttl: float = 3600.0
    auth_timeout: float = 10.0
    # -- stored messages
    history_size: int = 1000
    max_channel_history_bytes: int = 96 * MiB
    max_history_bytes: int = 512 * MiB
    # -- sizes
    max_message_size: int = 64 * 1024
    max_frame_size: int = 256 * 1024
    max_presence_data: int = 4096
    max_outbound_buffer: int = 8 * MiB
    # -- one rate for every operation of a connection (publish, presence, attach, ...)
    publish_rate: float = 5000.0
    publish_burst: int = 10_000
    max_protocol_errors: int = 50
    # -- quotas
    max_channels_per_connection: int = 1000
    max_channels: int = 100_000
    max_channels_per_client: int = 1000
    max_presence_per_connection: int = 100
    # -- connections (checked at the WebSocket handshake)
    max_connections: int = 10_000
    max_connections_per_address: int = 1000
    connection_attempt_rate: float = 100.0
    connection_attempt_burst: int = 1000
    allowed_origins: tuple[str, ...] | None = None
    # -- a cluster (with a backplane): a node that has not refreshed its record for this
    #    long is gone and its presence members leave (it refreshes every third of it)
    node_timeout: float = 15.0

    def __post_init__(self) -> None:
        problems = []
        if self.node_timeout <= 0:
            problems.append("node_timeout must be > 0")
        if self.heartbeat_interval <= 0 or self.connection_state_ttl < 0:
            problems.append("heartbeat_interval must be > 0 and connection_state_ttl >= 0")
        if self.history_size < 0 or self.history_ttl < 0 or self.auth_timeout <= 0:
            problems.append("history_size and history_ttl must be >= 0, auth_timeout > 0")
        if self.max_message_size + FRAME_RESERVE > self.max_frame_size:
            problems.append(f"max_message_size must be at most max_frame_size - {FRAME_RESERVE}"
                            " (room for the frame around a message)")
        if self.publish_rate <= 0 or self.publish_burst < 1 or self.connection_attempt_rate <= 0:
            problems.append("rates must be > 0 and bursts >= 1")
        for name in ("max_channel_history_bytes", "max_history_bytes", "max_outbound_buffer",
                     "max_connections", "max_connections_per_address", "max_channels",
                     "max_channels_per_client", "max_channels_per_connection",
                     "max_presence_per_connection", "connection_attempt_burst"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if isinstance(self.allowed_origins, str):
            problems.append("allowed_origins is a list of origins, e.g. ['https://example.org']")
        if problems:
            raise ValueError("; ".join(problems))
        if self.allowed_origins is not None:
            object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))

    @property
    def presence_data_limit(self) -> int:
        """``max_presence_data``, within what a frame can carry."""
        return min(self.max_presence_data, self.max_frame_size - FRAME_RESERVE)

    @property
    def retention(self) -> float:
        """How long a message is kept at most (seconds)."""
        return max(self.history_ttl, self.connection_state_ttl)

    def limits(self) -> dict[str, Any]:
        """The limits announced to every client in ``connected``."""
        return {
            "max_message_size": self.max_message_size,
            "max_frame_size": self.max_frame_size,
            "max_presence_data": self.presence_data_limit,
            "max_depth": MAX_DEPTH,
            "publish_rate": int(self.publish_rate),
            "publish_burst": self.publish_burst,
            "history_size": self.history_size,
            "max_channels": self.max_channels_per_connection,
            "max_channels_per_client": self.max_channels_per_client,
            "max_presence": self.max_presence_per_connection,
        }


#: Bytes of a frame kept for what surrounds the messages it carries (action, channel, ref).
FRAME_RESERVE = 2048
#: Bytes a stored message counts against the history budgets on top of its encoded size: the
#: memory of its record, its id and its place in the indexes (measured, rounded up).
RECORD_OVERHEAD = 320
#: Bytes an id kept only for de-duplication counts (its message already evicted).
ID_OVERHEAD = 200
#: Frames a connection may send before it is connected (``connect`` and a few heartbeats).
PREAUTH_FRAMES = 8
