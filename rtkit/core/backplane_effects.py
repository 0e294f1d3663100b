"""What a broker node and its backplane driver tell each other, sans I/O.

:data:`Effect` s are what the node's view (:class:`~rtkit.core.backplane.NodeView`) asks
the driver (``rtkit.aio.backplane``) to perform; :data:`Action` s are what the view's
decisions ask the node's channel operations (:class:`~rtkit.core.cluster_ops.ClusterOps`) to
apply to the node's copy of a channel. Every name here is importable from
``rtkit.core.backplane`` too.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Action", "Check", "Deliver", "Effect", "Entry", "Follow", "NewEpoch", "PresenceWrite",
    "Publish", "Read", "Rebase", "Skip", "Unfollow",
]

# ---------------------------------------------------------------- effects (for the driver)


@dataclass(frozen=True, slots=True)
class Follow:
    """Subscribe to the channel's live feed; once subscribed, report its position (epoch,
    last serial, created if missing) and its members: :meth:`NodeView.followed` with ``gen``."""

    channel: str
    gen: int


@dataclass(frozen=True, slots=True)
class Unfollow:
    channel: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Assign the next serial and store, de-duplicate and deliver one message, atomically.
    The message object is ``head + serial + ',"timestamp":' + ms + tail``. ``dedup_key``
    (None: never de-duplicated) is remembered for at least the continuity window."""

    token: int
    channel: str
    dedup_key: str | None
    head: str
    tail: str


@dataclass(frozen=True, slots=True)
class Read:
    """Stored messages with ``first <= serial <= last``, at most ``limit``: the oldest of
    them (``newest_first=False``) or the newest (``True``). Answered with the channel's
    position: :meth:`NodeView.read_done`."""

    token: int
    channel: str
    first: int
    last: int
    limit: int
    newest_first: bool


@dataclass(frozen=True, slots=True)
class Check:
    """Report the position (epoch, last serial) of each channel: :meth:`NodeView.position`."""

    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rebase:
    """The backplane's serial went back below ``serial`` in ``epoch``: give the channel a new
    epoch, unless that is no longer so."""

    channel: str
    epoch: str
    serial: int


@dataclass(frozen=True, slots=True)
class PresenceWrite:
    """Store (``enter``/``update``) or remove (``leave``) a member of this node, and announce
    the change to the other nodes. ``event`` is the ``presence_event`` item (JSON)."""

    channel: str
    op: str
    member_key: str
    event: str


Effect = Follow | Unfollow | Publish | Read | Check | Rebase | PresenceWrite

# ---------------------------------------------------------------- actions (for the node)


@dataclass(frozen=True, slots=True)
class Deliver:
    """The next message of the channel, in order."""

    serial: int
    timestamp: int
    fragment: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Messages up to ``serial`` are gone from the backplane: carry on after them."""

    serial: int


@dataclass(frozen=True, slots=True)
class NewEpoch:
    """The channel's history was lost: it continues as ``epoch`` after ``serial``."""

    epoch: str
    serial: int


Action = Deliver | Skip | NewEpoch
#: A stored message as read from the backplane: (serial, timestamp in ms, message JSON).
Entry = tuple[int, int, str]
