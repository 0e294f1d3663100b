"""A client's options and what the broker told it on connecting: plain records."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtkit.core.outbox import DEFAULT_MAX_QUEUED_BYTES
from rtkit.core.timing import Backoff
from rtkit.core.transports import FALLBACK_AFTER, RETRY_INTERVAL, TRANSPORTS


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A client's options (times in seconds on the client's monotonic clock)."""

    url: str = "ws://127.0.0.1"
    #: Other nodes of the same cluster, tried when the current one refuses, times out or
    #: goes away (see ``ClientCore.url``).
    fallback_urls: tuple[str, ...] = ()
    key: str | None = None
    token: str | None = None
    #: An auth_callback exists: tokens can be renewed.
    renewable: bool = False
    client_id: str | None = None
    request_timeout: float = 10.0
    connect_timeout: float = 10.0
    #: Silence tolerated after the broker's heartbeat interval (None: half the interval).
    heartbeat_grace: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    suspended_retry_interval: float = 15.0
    connection_state_ttl: float = 120.0
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    max_queued_publishes: int | None = None
    auth_timeout: float = 10.0
    close_timeout: float = 2.0
    #: Transports in order of preference (see ``rtkit.core.transports``).
    transports: tuple[str, ...] = TRANSPORTS
    #: Seconds between probes of the preferred transport while connected over another.
    transport_retry_interval: float = RETRY_INTERVAL
    #: Failed attempts in a row after which the next transport is tried.
    fallback_after: int = FALLBACK_AFTER


@dataclass(slots=True)
class Session:
    """What the broker told us in ``connected`` (times in seconds)."""

    connection_id: str
    connection_key: str
    client_id: str | None
    heartbeat_interval: float
    connection_state_ttl: float
    token_expires: float | None  # seconds since the epoch (broker's clock)
    limits: dict[str, int] = field(default_factory=dict)
    server_time: float = 0.0
    #: The broker's wall clock minus ours (seconds), measured when connected.
    server_time_offset: float = 0.0
