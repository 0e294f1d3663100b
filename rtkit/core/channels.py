"""One channel's state inside the broker: serials, bounded history, dedup window, presence.

Messages are encoded to JSON exactly once, when published; history replies and deliveries
join those encoded fragments instead of encoding again per subscriber or per request.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from rtkit.core.frames import PresenceMember, dumps


@dataclass(frozen=True, slots=True)
class Stored:
    """A message as the channel keeps it: its serial, time, id and encoded JSON object."""

    serial: int
    timestamp: int  # ms since the Unix epoch
    id: str
    fragment: str


def encode_message(
    msg_id: str, name: str, data_json: str, serial: int, timestamp: int, client_id: str | None
) -> str:
    """The JSON object of one delivered message, built by formatting (no second encode)."""
    return (
        f'{{"id":{dumps(msg_id)},"name":{dumps(name)},"data":{data_json},'
        f'"serial":{serial},"timestamp":{timestamp},"client_id":{dumps(client_id)}}}'
    )


class Channel:
    """A named stream with strictly increasing serials starting at 1.

    ``epoch`` identifies this incarnation of the channel: it changes when the broker restarts
    or the channel is recreated, so a client can tell that old serials mean nothing here.
    """

    def __init__(
        self, name: str, *, history_size: int, history_ttl: float, dedup_size: int
    ) -> None:
        self.name = name
        self.name_json = dumps(name)
        self.epoch = secrets.token_hex(6)
        self.serial = 0
        self.history: deque[Stored] = deque(maxlen=history_size)
        self.history_ttl = history_ttl
        self._dedup: OrderedDict[str, Stored] = OrderedDict()
        self._dedup_size = dedup_size
        # Insertion-ordered set of subscriber sessions, plus a cached tuple for fan-out.
        self.subscribers: dict[Any, None] = {}
        self._targets: tuple[Any, ...] | None = ()
        # Encoded messages not yet handed to the driver (one batch per flush).
        self.pending: list[str] = []
        self.pending_bytes = 0
        self.members: dict[tuple[str, str], PresenceMember] = {}

    # -- subscribers ------------------------------------------------------------------

    def add_subscriber(self, session: Any) -> None:
        self.subscribers[session] = None
        self._targets = None

    def remove_subscriber(self, session: Any) -> bool:
        if self.subscribers.pop(session, 0) is None:
            self._targets = None
            return True
        return False

    @property
    def targets(self) -> tuple[Any, ...]:
        if self._targets is None:
            self._targets = tuple(self.subscribers)
        return self._targets

    # -- messages ---------------------------------------------------------------------

    def find_duplicate(self, msg_id: str) -> Stored | None:
        """The message already published with this id, if still in the dedup window."""
        return self._dedup.get(msg_id)

    def append(
        self, msg_id: str, name: str, data_json: str, now_ms: int, client_id: str | None
    ) -> Stored:
        """Give a message the next serial, store it in history and queue it for delivery."""
        self.serial += 1
        fragment = encode_message(msg_id, name, data_json, self.serial, now_ms, client_id)
        stored = Stored(self.serial, now_ms, msg_id, fragment)
        self.history.append(stored)
        self._dedup[msg_id] = stored
        if len(self._dedup) > self._dedup_size:
            self._dedup.popitem(last=False)
        self.pending.append(fragment)
        self.pending_bytes += len(fragment) + 1
        return stored

    def take_pending(self) -> list[str]:
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        return batch

    def prune(self, now_ms: int) -> None:
        """Drop history older than ``history_ttl``."""
        limit = now_ms - int(self.history_ttl * 1000)
        history = self.history
        while history and history[0].timestamp < limit:
            history.popleft()

    def query(
        self, limit: int, before: int | None, now_ms: int, after: int | None = None
    ) -> list[Stored]:
        """Stored messages with ``after`` < serial < ``before``, oldest first: the first
        ``limit`` of them when ``after`` is given, else the latest ``limit``."""
        self.prune(now_ms)
        if after is not None:
            picked = [m for m in self.since(after) if before is None or m.serial < before]
            return picked[:limit]
        picked = []
        for stored in reversed(self.history):
            if before is not None and stored.serial >= before:
                continue
            picked.append(stored)
            if len(picked) >= limit:
                break
        picked.reverse()
        return picked

    def since(self, serial: int) -> list[Stored]:
        """Every stored message with a serial above ``serial``, oldest first."""
        history = self.history
        if not history or history[-1].serial <= serial:
            return []
        # Serials in history are consecutive, so the start index is a subtraction.
        start = max(0, serial - history[0].serial + 1)
        return [history[i] for i in range(start, len(history))]

    def oldest_serial(self) -> int | None:
        return self.history[0].serial if self.history else None

    # -- presence ---------------------------------------------------------------------

    def presence_change(
        self, op: Literal["enter", "update", "leave"], member: PresenceMember
    ) -> Literal["enter", "update", "leave"] | None:
        """Apply an enter/update/leave; returns the event to announce, or None for no change."""
        key = (member.client_id, member.connection_id)
        if op == "leave":
            return "leave" if self.members.pop(key, None) is not None else None
        existed = key in self.members
        self.members[key] = member
        return "update" if existed else "enter"

    def members_of(self, connection_id: str) -> Iterable[PresenceMember]:
        return [m for m in self.members.values() if m.connection_id == connection_id]

    def is_idle(self) -> bool:
        """No subscribers, no members and no history: safe to forget."""
        return not self.subscribers and not self.members and not self.history
