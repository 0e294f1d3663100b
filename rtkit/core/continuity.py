"""Per-channel continuity on the client side, sans I/O.

A :class:`Tracker` decides, message by message, whether to deliver, drop a duplicate, or
report a gap; it remembers the last serial seen in the channel's epoch so a reconnect can ask
the broker to resume from there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from rtkit.core.frames import Attached, Message


class Verdict(Enum):
    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    GAP = "gap"


@dataclass(frozen=True, slots=True)
class ContinuityLoss:
    """Messages of ``channel`` were missed and will not be delivered.

    ``first_lost`` is the first serial that could not be recovered, when known (None when the
    channel's epoch changed, e.g. after a broker restart, so old serials mean nothing).
    """

    channel: str
    first_lost: int | None
    last_seen: int
    reason: str
    at: float


class Tracker:
    """Serial and id bookkeeping for one channel."""

    def __init__(self, channel: str, id_window: int = 1000) -> None:
        self.channel = channel
        #: Last serial delivered; None means "take the next message as the new baseline".
        self.serial: int | None = 0
        self.epoch: str | None = None
        self.duplicates = 0
        self.delivered = 0
        self._ids: deque[str] = deque()
        self._id_set: set[str] = set()
        self._id_window = id_window

    @property
    def resume_point(self) -> int | None:
        """The serial to resume after, if this channel has a position to resume from."""
        return self.serial if self.epoch is not None else None

    def attached(self, frame: Attached, resuming: bool, rewind: int | None, now: float
                 ) -> ContinuityLoss | None:
        """Apply an ``attached`` reply. Returns a loss to report, if the resume fell short."""
        last_seen = self.serial or 0
        loss = None
        if resuming and frame.lost:
            reason = ("the channel was recreated (new epoch)" if frame.lost_from is None
                      else "the missed messages are no longer in the channel's history")
            loss = ContinuityLoss(self.channel, frame.lost_from, last_seen, reason, now)
        self.epoch = frame.epoch
        if loss is not None or (not resuming and rewind):
            self.serial = None  # whatever is replayed next sets the baseline
        elif not resuming:
            self.serial = frame.serial
        return loss

    def lost_on_resume_refused(self, now: float, reason: str) -> ContinuityLoss | None:
        """The broker refused to resume the connection: the position is worthless now."""
        if self.epoch is None:
            return None
        last = self.serial or 0
        self.epoch = None
        return ContinuityLoss(self.channel, last + 1, last, reason, now)

    def check(self, msg: Message) -> Verdict:
        if msg.id in self._id_set:
            return Verdict.DUPLICATE
        if self.serial is not None:
            if msg.serial <= self.serial:
                return Verdict.DUPLICATE
            if msg.serial > self.serial + 1:
                return Verdict.GAP
        return Verdict.DELIVER

    def accept(self, msg: Message) -> None:
        """Record ``msg`` as delivered."""
        self.serial = msg.serial
        self.delivered += 1
        self._ids.append(msg.id)
        self._id_set.add(msg.id)
        if len(self._ids) > self._id_window:
            self._id_set.discard(self._ids.popleft())

    def skip_to(self, serial: int) -> None:
        """Give up on messages up to ``serial`` (after reporting a loss)."""
        self.serial = serial
