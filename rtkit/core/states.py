"""Client connection states and the one table of transitions between them.

Nothing else in rtkit changes a connection's state: drivers call
:meth:`StateMachine.apply` with a :class:`Trigger` and a reason, and get back the
:class:`StateChange` (or an :class:`InvalidTransition` error, which is a bug in the caller).

    initialized --connect--> connecting --connected--> connected
    connecting/connected --transport_lost--> disconnected --retry--> connecting
    disconnected --ttl_expired--> suspended --retry--> connecting
    any open state --close--> closing --closed--> closed
    any state but closed --fatal--> failed; closed/failed --connect--> connecting

Each channel of a client has its own, smaller machine (:class:`ChannelState`,
:data:`CHANNEL_TRANSITIONS`), applied by :class:`rtkit.core.channel_state.ChannelCore`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rtkit.errors import RtkitError


class ConnectionState(enum.Enum):
    """The state of a client's connection. Values are the lowercase names."""

    INITIALIZED = "initialized"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    SUSPENDED = "suspended"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class Trigger(enum.Enum):
    """What made the state change."""

    CONNECT = "connect"  # the application asked to connect
    CONNECTED = "connected"  # the broker accepted the connection
    TRANSPORT_LOST = "transport_lost"  # socket closed, connect failed, heartbeat missed
    RETRY = "retry"  # the backoff delay ran out
    TTL_EXPIRED = "ttl_expired"  # disconnected for longer than connection_state_ttl
    CLOSE = "close"  # the application asked to close
    CLOSED = "closed"  # the close handshake finished
    FATAL = "fatal"  # an unrecoverable error (refused credentials, revoked key)


S = ConnectionState
T = Trigger

TRANSITIONS: dict[ConnectionState, dict[Trigger, ConnectionState]] = {
    S.INITIALIZED: {T.CONNECT: S.CONNECTING, T.CLOSE: S.CLOSED},
    S.CONNECTING: {
        T.CONNECTED: S.CONNECTED,
        T.TRANSPORT_LOST: S.DISCONNECTED,
        T.TTL_EXPIRED: S.SUSPENDED,
        T.CLOSE: S.CLOSING,
        T.FATAL: S.FAILED,
    },
    S.CONNECTED: {
        T.TRANSPORT_LOST: S.DISCONNECTED,
        T.CLOSE: S.CLOSING,
        T.FATAL: S.FAILED,
    },
    S.DISCONNECTED: {
        T.RETRY: S.CONNECTING,
        T.CONNECT: S.CONNECTING,
        T.TTL_EXPIRED: S.SUSPENDED,
        T.CLOSE: S.CLOSED,
        T.FATAL: S.FAILED,
    },
    S.SUSPENDED: {
        T.RETRY: S.CONNECTING,
        T.CONNECT: S.CONNECTING,
        T.CLOSE: S.CLOSED,
        T.FATAL: S.FAILED,
    },
    S.CLOSING: {T.CLOSED: S.CLOSED, T.TRANSPORT_LOST: S.CLOSED, T.FATAL: S.FAILED},
    S.CLOSED: {T.CONNECT: S.CONNECTING},
    S.FAILED: {T.CONNECT: S.CONNECTING, T.CLOSE: S.CLOSED},
}

#: States in which the client is trying to be, or is, connected.
OPEN_STATES = frozenset({S.CONNECTING, S.CONNECTED, S.DISCONNECTED, S.SUSPENDED})
#: States from which nothing happens without the application asking.
FINAL_STATES = frozenset({S.INITIALIZED, S.CLOSED, S.FAILED})


class InvalidTransition(RuntimeError):
    """A driver tried a transition the table does not allow (a bug, not a network event)."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition: from ``previous`` to ``current`` at ``at`` (seconds, caller's clock).
    ``transport`` is the transport of the link the change is about (``"websocket"`` or
    ``"sse"``; for ``connected``, the one connected over)."""

    previous: ConnectionState
    current: ConnectionState
    trigger: Trigger
    reason: str
    at: float
    error: RtkitError | None = None
    transport: str | None = None


class StateMachine:
    """Holds the current state and applies the transition table."""

    __slots__ = ("_history_limit", "history", "since", "state")

    def __init__(self, now: float = 0.0, history_limit: int = 1000) -> None:
        self.state = S.INITIALIZED
        self.since = now
        self.history: list[StateChange] = []
        self._history_limit = history_limit

    def can(self, trigger: Trigger) -> bool:
        """Whether ``trigger`` is allowed in the current state."""
        return trigger in TRANSITIONS[self.state]

    def apply(
        self, trigger: Trigger, reason: str, now: float, error: RtkitError | None = None,
        transport: str | None = None,
    ) -> StateChange:
        """Apply ``trigger``; raises :class:`InvalidTransition` if the table forbids it."""
        target = TRANSITIONS[self.state].get(trigger)
        if target is None:
            raise InvalidTransition(f"{trigger.value} is not allowed in state {self.state.value}")
        change = StateChange(self.state, target, trigger, reason, now, error, transport)
        self.state = target
        self.since = now
        self.history.append(change)
        if len(self.history) > self._history_limit:
            del self.history[: len(self.history) - self._history_limit]
        return change


# ---------------------------------------------------------------------------------- channels


class ChannelState(enum.Enum):
    """The attachment state of one channel of a client. Values are the lowercase names."""

    DETACHED = "detached"  # not attached (never, on purpose, or the link is down)
    ATTACHING = "attaching"  # an attach is in flight
    ATTACHED = "attached"  # messages flow
    DETACHING = "detaching"  # a detach is in flight
    FAILED = "failed"  # the broker refused or ended the attachment: no retry until asked

    def __str__(self) -> str:
        return self.value


class ChannelTrigger(enum.Enum):
    ATTACH = "attach"  # an attach request was sent
    ATTACHED = "attached"  # the broker answered 'attached'
    DETACH = "detach"  # a detach request was sent
    DETACHED = "detached"  # the broker answered 'detached' (to our request)
    REFUSED = "refused"  # the broker refused the attach, or detached us with an error
    LINK_LOST = "link_lost"  # the connection's link went down


C = ChannelState
CT = ChannelTrigger

CHANNEL_TRANSITIONS: dict[ChannelState, dict[ChannelTrigger, ChannelState]] = {
    C.DETACHED: {CT.ATTACH: C.ATTACHING, CT.LINK_LOST: C.DETACHED},
    C.ATTACHING: {CT.ATTACHED: C.ATTACHED, CT.REFUSED: C.FAILED, CT.LINK_LOST: C.DETACHED,
                  CT.DETACHED: C.DETACHED},
    C.ATTACHED: {CT.ATTACHED: C.ATTACHED, CT.DETACH: C.DETACHING, CT.REFUSED: C.FAILED,
                 CT.LINK_LOST: C.DETACHED, CT.DETACHED: C.DETACHED},
    C.DETACHING: {CT.DETACHED: C.DETACHED, CT.LINK_LOST: C.DETACHED, CT.REFUSED: C.FAILED,
                  CT.ATTACHED: C.DETACHING},
    C.FAILED: {CT.ATTACH: C.ATTACHING, CT.LINK_LOST: C.FAILED, CT.DETACHED: C.FAILED},
}


def channel_transition(state: ChannelState, trigger: ChannelTrigger) -> ChannelState:
    """The state after ``trigger``; raises :class:`InvalidTransition` if the table forbids it."""
    target = CHANNEL_TRANSITIONS[state].get(trigger)
    if target is None:
        raise InvalidTransition(f"channel: {trigger.value} is not allowed in state {state.value}")
    return target
