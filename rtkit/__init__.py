"""rtkit: explore and teach realtime messaging in JupyterLab.

Start a broker with :func:`serve`, connect with :class:`Client`, publish and subscribe on
channels. See ``docs/protocol.md`` for the wire protocol and ``notebooks/`` for tutorials.
"""

import logging

from rtkit import chaos, cluster, sim
from rtkit.aio.broker import Broker
from rtkit.aio.channel import Channel
from rtkit.aio.client import Client, ResumeInfo
from rtkit.aio.subscription import Presence, PublishResult, Subscription
from rtkit.core.broker import BrokerConfig
from rtkit.core.continuity import ContinuityLoss
from rtkit.core.frames import Message, PresenceChange, PresenceMember
from rtkit.core.states import ChannelState, ConnectionState, StateChange, Trigger
from rtkit.core.timing import Backoff
from rtkit.core.tokens import TokenClaims, inspect_token
from rtkit.errors import (
    AuthError,
    CapabilityError,
    ConnectionClosed,
    ConnectionError_,
    ConnectionFailed,
    ConnectionSuspended,
    ContinuityLost,
    Disconnected,
    InvalidCredentials,
    LimitExceeded,
    NotFound,
    ProtocolError,
    RequestTimeout,
    RtkitError,
    ServerError,
    TokenExpired,
)
from rtkit.feed import Feed, FeedRecord, Gap
from rtkit.server import Server, serve
from rtkit.sync import run

__version__ = "0.1.0"

# A library does not print: warnings show only where the application configures logging.
# (Continuity losses, errors and state changes are reported through rtkit's own events.)
logging.getLogger("rtkit").addHandler(logging.NullHandler())

__all__ = [
    "AuthError",
    "Backoff",
    "Broker",
    "BrokerConfig",
    "CapabilityError",
    "Channel",
    "ChannelState",
    "Client",
    "ConnectionClosed",
    "ConnectionError_",
    "ConnectionFailed",
    "ConnectionState",
    "ConnectionSuspended",
    "ContinuityLoss",
    "ContinuityLost",
    "Disconnected",
    "Feed",
    "FeedRecord",
    "Gap",
    "InvalidCredentials",
    "LimitExceeded",
    "Message",
    "NotFound",
    "Presence",
    "PresenceChange",
    "PresenceMember",
    "ProtocolError",
    "PublishResult",
    "RequestTimeout",
    "ResumeInfo",
    "RtkitError",
    "Server",
    "ServerError",
    "StateChange",
    "Subscription",
    "TokenClaims",
    "TokenExpired",
    "Trigger",
    "chaos",
    "cluster",
    "inspect_token",
    "run",
    "serve",
    "sim",
]
