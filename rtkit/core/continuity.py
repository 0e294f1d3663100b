"""Per-channel continuity on the client side, sans I/O.

A :class:`Tracker` decides, message by message, whether to deliver, drop a duplicate, or
report a gap; it remembers the last serial delivered in the channel's epoch, so a reconnect
(or a repair on a live link) can ask the broker to resume from there.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from rtkit.core.frames import Attached, Message

_serial = operator.attrgetter("serial")
_id = operator.attrgetter("id")


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

    __slots__ = ("_id_window", "_older", "_recent", "channel", "delivered", "duplicates",
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
        # The ids of at least the last ``id_window`` messages delivered, in two generations:
        # when the recent one is full it becomes the older one (no per-message eviction).
        self._recent: set[str] = set()
        self._older: set[str] = set()
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
        msg_id = msg.id
        return Verdict.SEEN if msg_id in self._recent or msg_id in self._older \
            else Verdict.DELIVER

    def accept_run(self, messages: Sequence[Message]) -> int:
        """Accept the leading run of ``messages`` that :meth:`check` would deliver one by one
        (the next serials, ids not seen) and return its length; the caller judges the rest
        message by message. The common case, a whole batch in order, is checked in C."""
        if self.rebase:
            return 0
        first = expected = self.serial + 1
        recent, older = self._recent, self._older
        count = len(messages)
        if count > 1 and list(map(_serial, messages)) == list(range(first, first + count)):
            ids = set(map(_id, messages))  # (all checks in C: the usual batch)
            if len(ids) == count and ids.isdisjoint(recent) and ids.isdisjoint(older):
                recent |= ids
                return self._accepted(count)
        remember = recent.add
        for msg in messages:
            if msg.serial != expected:
                break
            msg_id = msg.id
            if msg_id in recent or msg_id in older:
                break
            remember(msg_id)
            expected += 1
        return self._accepted(expected - first)

    def _accepted(self, count: int) -> int:
        if count:
            self.serial += count
            self.delivered += count
            self.rebase = False
            if len(self._recent) >= self._id_window:
                self._older, self._recent = self._recent, set()
        return count

    def accept(self, msg: Message) -> None:
        """Record ``msg`` as delivered."""
        self.serial = msg.serial
        self.rebase = False
        self.delivered += 1
        recent = self._recent
        recent.add(msg.id)
        if len(recent) >= self._id_window:
            self._older, self._recent = recent, set()

    def skip_to(self, serial: int) -> None:
        """Move past ``serial`` without delivering (reported lost, or a copy)."""
        self.serial = max(self.serial, serial)
        self.rebase = False
