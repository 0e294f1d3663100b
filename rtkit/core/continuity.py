"""Per-channel continuity on the client side, sans I/O.

A :class:`Tracker` decides, message by message, whether to deliver, drop a duplicate, or
report a gap; it remembers the last serial delivered in the channel's epoch, so a reconnect
(or a repair on a live link) can ask the broker to resume from there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from rtkit.core.frames import Attached, Message


class Verdict(Enum):
    DELIVER = "deliver"
    DUPLICATE = "duplicate"  # at or below the position: already delivered
    SEEN = "seen"  # the next serial, but a message id already delivered (a copy): skip it
    GAP = "gap"


@dataclass(frozen=True, slots=True)
class ContinuityLoss:
    """Messages of ``channel`` were missed and will never be delivered.

    The lost messages are those of ``epoch`` from ``first_lost`` (the first serial that could
    not be recovered) up to and including ``last_lost`` — when that is None, every later
    message of that epoch (the channel was recreated, e.g. after a broker restart, or the
    broker could not say). ``last_seen`` is the last serial delivered before the loss;
    ``at`` is the client's monotonic time of the report.
    """

    channel: str
    first_lost: int | None
    last_seen: int
    reason: str
    at: float
    #: The last serial that was lost, when the broker said (``attached.lost_to``).
    last_lost: int | None = None
    #: The epoch the lost messages belonged to.
    epoch: str | None = None


class Tracker:
    """Serial and id bookkeeping for one channel."""

    __slots__ = ("_id_set", "_id_window", "_ids", "channel", "delivered", "duplicates",
                 "epoch", "rebase", "serial")

    def __init__(self, channel: str, id_window: int = 1000) -> None:
        self.channel = channel
        #: Last serial delivered in ``epoch``.
        self.serial = 0
        #: The channel's epoch; None: no position (never attached, or the position was reset).
        self.epoch: str | None = None
        #: After a loss whose extent the broker did not give: the next message is the base.
        self.rebase = False
        self.duplicates = 0
        self.delivered = 0
        self._ids: deque[str] = deque()
        self._id_set: set[str] = set()
        self._id_window = id_window

    @property
    def resume_point(self) -> int | None:
        """The serial to resume after, if this channel has a position to resume from."""
        return self.serial if self.epoch is not None else None

    def reset(self) -> None:
        """Forget the position (after a detach on purpose: what follows is not a gap)."""
        self.serial, self.epoch, self.rebase = 0, None, False

    def restore(self, serial: int, epoch: str | None) -> None:
        """Take a position from a recovery key."""
        self.serial, self.epoch = serial, epoch

    def attached(self, frame: Attached, resuming: bool, now: float) -> ContinuityLoss | None:
        """Apply an ``attached`` reply; returns the loss to report if a resume fell short.

        A fresh attach (not resuming) starts after the serial the broker announced; a resume
        keeps the position, so the broker's replay continues right after it.
        """
        loss = None
        if resuming and frame.lost:
            new_epoch = frame.epoch != self.epoch
            reason = ("the channel was recreated (new epoch)" if new_epoch
                      else "the missed messages are no longer in the channel's history")
            first = self.serial + 1 if new_epoch else (frame.lost_from or self.serial + 1)
            last = None if new_epoch else frame.lost_to
            loss = ContinuityLoss(self.channel, first, self.serial, reason, now, last,
                                  self.epoch)
            if new_epoch:
                self.serial = 0  # the new epoch's replay starts from its beginning
            elif frame.lost_to is not None:
                self.serial = max(self.serial, frame.lost_to)  # the replay starts after it
            else:
                self.rebase = True
        elif not resuming:
            self.serial, self.rebase = frame.serial, False
        self.epoch = frame.epoch
        return loss

    def check(self, msg: Message) -> Verdict:
        if msg.serial <= self.serial:
            return Verdict.DUPLICATE
        if msg.serial > self.serial + 1 and not self.rebase:
            return Verdict.GAP
        # E.g. a publish resent to a restarted broker, delivered before in the old epoch.
        return Verdict.SEEN if msg.id in self._id_set else Verdict.DELIVER

    def accept(self, msg: Message) -> None:
        """Record ``msg`` as delivered."""
        self.serial = msg.serial
        self.rebase = False
        self.delivered += 1
        msg_id = msg.id
        ids = self._ids
        ids.append(msg_id)
        self._id_set.add(msg_id)
        if len(ids) > self._id_window:
            self._id_set.discard(ids.popleft())

    def skip_to(self, serial: int) -> None:
        """Move past ``serial`` without delivering (reported lost, or a copy)."""
        self.serial = max(self.serial, serial)
        self.rebase = False
