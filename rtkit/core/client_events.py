"""What the client core hands to its driver: things to do (effects) and things that happened
(events for the application). All frozen dataclasses; the driver matches on their type.

Effects, for the driver to perform:

* :class:`Send`: write this text frame on the current link.
* :class:`OpenLink`: open a link to ``url`` (then call ``link_opened`` or ``link_failed``).
* :class:`CloseLink` / :class:`AbortLink`: end the current link gracefully / at once
  (then call ``link_lost``).
* :class:`FetchToken`: call the application's ``auth_callback`` (then ``token_obtained`` or
  ``token_failed``).
* :class:`Probe`: check whether ``transport`` gets through to ``url`` now (a WebSocket
  handshake closed at once; then ``probe_done``).

Events, for the application:

* :class:`StateChanged`, :class:`ChannelChanged`: the connection's / a channel's state.
* :class:`Deliver`: messages for some subscriptions of a channel, in serial order.
* :class:`Lost`: a :class:`~rtkit.ContinuityLoss` on a channel.
* :class:`PresenceChanged`: enter/update/leave events on a channel.
* :class:`OpDone` / :class:`OpFailed`: the outcome of an operation the application started.
* :class:`Problem`: an error no call raises (renewal failed, broker error, malformed frame).
* :class:`Measured`: a heartbeat round trip; :class:`Resumed`: how a (re)connection went.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtkit.core.continuity import ContinuityLoss
from rtkit.core.frames import Message, PresenceChange
from rtkit.core.states import ChannelState, StateChange
from rtkit.errors import RtkitError


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The broker's ack: the message's id, serial and timestamp (ms since the epoch).

    ``duplicate`` is true when a message with this id was already in the channel: the
    broker did not add it again.
    """

    id: str
    serial: int
    timestamp: int
    duplicate: bool = False


# ------------------------------------------------------------------------------ effects


@dataclass(frozen=True, slots=True)
class Send:
    text: str


@dataclass(frozen=True, slots=True)
class OpenLink:
    url: str
    transport: str = "websocket"


@dataclass(frozen=True, slots=True)
class CloseLink:
    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AbortLink:
    error: RtkitError


@dataclass(frozen=True, slots=True)
class Probe:
    url: str
    transport: str


@dataclass(frozen=True, slots=True)
class FetchToken:
    id: int
    reason: str
    timeout: float


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class StateChanged:
    change: StateChange


@dataclass(frozen=True, slots=True)
class ChannelChanged:
    channel: str
    previous: ChannelState
    current: ChannelState
    error: RtkitError | None = None


@dataclass(frozen=True, slots=True)
class Deliver:
    """``messages`` (in serial order) for the subscriptions ``subs`` of ``channel``. The
    core may add messages to the list until it hands the event over (:meth:`take`)."""

    channel: str
    messages: list[Message]
    subs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Lost:
    loss: ContinuityLoss


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    channel: str
    changes: tuple[PresenceChange, ...]


@dataclass(frozen=True, slots=True)
class OpDone:
    op: int
    value: Any = None


@dataclass(frozen=True, slots=True)
class OpFailed:
    op: int
    error: RtkitError


@dataclass(frozen=True, slots=True)
class Problem:
    error: RtkitError
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Measured:
    rtt: float


@dataclass(frozen=True, slots=True)
class Resumed:
    """How the latest (re)connection went. Times on the client's monotonic clock."""

    started: float  # the attempt began
    connected: float  # 'connected' received
    resumed_at: float  # every wanted channel attached again
    resumed: bool  # the broker resumed the connection
    channels: int
    replayed: int  # messages delivered by the broker's replays


Effect = Send | OpenLink | CloseLink | AbortLink | FetchToken | Probe
Event = (StateChanged | ChannelChanged | Deliver | Lost | PresenceChanged | OpDone | OpFailed
         | Problem | Measured | Resumed)
Output = Effect | Event
