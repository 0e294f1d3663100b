"""Channels inside the broker: serials, subscribers, presence and the pending batch of one
channel (:class:`Channel`), and the registry that creates, charges and reclaims them
(:class:`ChannelRegistry`).

Messages are encoded to JSON exactly once, when published (see ``ChannelOps.publish``);
deliveries, replays and history answers join those encoded fragments instead of encoding
again.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Literal

from rtkit.core.config import BrokerConfig
from rtkit.core.frames import PresenceMember, dumps, nbytes
from rtkit.core.store import Ledger, Store
from rtkit.errors import error


class Channel:
    """A named stream with strictly increasing serials starting at 1.

    ``epoch`` identifies this incarnation of the channel: it changes when the broker restarts
    or the channel is recreated, so a client can tell that old serials mean nothing here.
    """

    def __init__(self, name: str, store: Store, owner: str) -> None:
        self.name = name
        self.name_json = dumps(name)
        # A message frame is prefix + comma-separated messages + "]}": ``envelope`` bytes.
        self.prefix = f'{{"action":"message","channel":{self.name_json},"messages":['
        self.envelope = nbytes(self.prefix) + 2
        self.epoch = secrets.token_hex(6)
        self.serial = 0
        self.store = store
        self.owner = owner  # charged for creating it (see ChannelRegistry)
        # Insertion-ordered set of subscriber sessions, plus a cached tuple for fan-out.
        self.subscribers: dict[Any, None] = {}
        self._targets: tuple[Any, ...] | None = ()
        # Encoded messages not yet handed to the driver (one batch per flush) and their bytes;
        # likewise presence events. Only one kind is pending at a time (their order matters).
        self.pending: list[str] = []
        self.pending_bytes = 0
        self.pending_events: list[str] = []
        self.events_bytes = 0
        self.members: dict[tuple[str, str], PresenceMember] = {}
        self.attaching = 0  # sessions replaying this channel before going live
        self.dead = False

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

    # -- pending batch ----------------------------------------------------------------

    def queue(self, fragment: str, size: int) -> None:
        self.pending.append(fragment)
        self.pending_bytes += size + 1

    def take_pending(self) -> list[str]:
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        return batch

    def queue_event(self, event: str, size: int) -> None:
        self.pending_events.append(event)
        self.events_bytes += size + 1

    def take_events(self) -> list[str]:
        events, self.pending_events, self.events_bytes = self.pending_events, [], 0
        return events

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

    def is_idle(self, shared: bool = False) -> bool:
        """No subscribers, members, replays or stored messages: safe to forget. ``shared``
        (with a backplane): the stored messages and the members are copies of what the
        backplane keeps (the registry asks separately about this node's own members)."""
        return (not self.subscribers and not self.attaching and not self.pending
                and not self.pending_events
                and (shared or (not self.members and not self.store.records
                                and not self.store.ids)))


class ChannelRegistry:
    """Every channel of the broker: creation within the quotas, and reclaiming idle ones.

    Idle channels are found incrementally: each :meth:`sweep` looks at a bounded number of
    channels (round robin), so the broker's periodic work does not grow with their number.
    """

    SWEEP = 64  # channels examined per tick

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.ledger = Ledger(config.max_history_bytes, config.connection_state_ttl)
        self.channels: dict[str, Channel] = {}
        self.created: dict[str, int] = {}  # owner -> channels it created that still exist
        # Channels forgotten while idle keep their epoch and last serial here, so that one
        # used again continues its numbering and resuming clients see no false loss.
        self.tombstones: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._rotation: deque[Channel] = deque()
        #: With a backplane: stored messages and members are copies (the backplane keeps
        #: the channel's history, numbering and members), so only this node's own members
        #: (``own_members``) keep a channel alive, and ``on_reclaim`` is told of every
        #: channel forgotten.
        self.shared = False
        self.own_members: Callable[[Channel], bool] | None = None
        self.on_reclaim: Callable[[Channel], None] | None = None

    def __len__(self) -> int:
        return len(self.channels)

    def get(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def get_or_create(self, name: str, owner: str) -> Channel:
        """The channel ``name``, created (and charged to ``owner``) if needed: 42908 when the
        broker is full, 42909 when ``owner`` already created ``max_channels_per_client``."""
        ch = self.channels.get(name)
        if ch is not None:
            return ch
        c = self.config
        if len(self.channels) >= c.max_channels:
            raise error(42908)
        if self.created.get(owner, 0) >= c.max_channels_per_client:
            raise error(42909, f"this client already created {c.max_channels_per_client} "
                               "channels that still exist")
        store = Store(self.ledger, c.max_channel_history_bytes, c.retention,
                      c.connection_state_ttl)
        ch = Channel(name, store, owner)
        tomb = self.tombstones.pop(name, None)
        if tomb is not None:
            ch.epoch, ch.serial = tomb
        self.channels[name] = ch
        self.created[owner] = self.created.get(owner, 0) + 1
        self._rotation.append(ch)
        return ch

    def reclaim_if_idle(self, ch: Channel) -> bool:
        """Forget ``ch`` if nothing uses it any more; returns whether it was forgotten."""
        if ch.dead or not ch.is_idle(self.shared) or self.channels.get(ch.name) is not ch:
            return False
        if self.own_members is not None and self.own_members(ch):
            return False
        ch.dead = True
        del self.channels[ch.name]
        ch.store.clear()
        left = self.created.get(ch.owner, 1) - 1
        if left:
            self.created[ch.owner] = left
        else:
            self.created.pop(ch.owner, None)
        self.tombstones[ch.name] = (ch.epoch, ch.serial)
        if len(self.tombstones) > self.config.max_channels:
            self.tombstones.popitem(last=False)
        if self.on_reclaim is not None:
            self.on_reclaim(ch)
        return True

    def sweep(self, now: float) -> int:
        """Expire old messages and reclaim idle channels, a few channels per call."""
        rotation = self._rotation
        for _ in range(min(self.SWEEP, len(rotation))):
            ch = rotation.popleft()
            if ch.dead:
                continue
            ch.store.expire(now)
            if not self.reclaim_if_idle(ch):
                rotation.append(ch)
        self.ledger.enforce(now)
        return len(rotation)

    def stored_bytes(self, name: str) -> int:
        ch = self.channels.get(name)
        return ch.store.bytes if ch is not None else 0


def presence_size(data: Any) -> int:
    """Bytes of presence data as JSON (UTF-8); raises ValueError/TypeError if not JSON."""
    return nbytes(dumps(data))
