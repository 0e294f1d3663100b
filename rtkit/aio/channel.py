"""Channels, subscriptions and presence on top of a :class:`rtkit.Client`."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtkit.core import frames as fr
from rtkit.core.frames import Message, PresenceChange, PresenceMember
from rtkit.errors import LimitExceeded, ProtocolError

if TYPE_CHECKING:
    from rtkit.aio.client import Client

log = logging.getLogger("rtkit.client")
MessageCallback = Callable[[Message], Any]


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


class Subscription:
    """Messages of one channel (optionally one event name) for a callback or ``async for``.

    Sync callbacks run as each message arrives; async callbacks run one at a time, in
    order. Without a callback, iterate: ``async for msg in subscription``. At most
    ``buffer`` messages wait; past that the oldest are dropped, counted in ``dropped`` and
    reported by the iterator as :class:`~rtkit.LimitExceeded` (42907), never silently.
    """

    def __init__(
        self, channel: Channel, callback: MessageCallback | None, event: str | None, buffer: int
    ) -> None:
        self.channel = channel
        self.callback = callback
        self.event = event
        self.dropped = 0
        self.delivered = 0
        self._is_async = callback is not None and inspect.iscoroutinefunction(callback)
        self._queue: deque[Message] = deque()
        self._buffer = buffer
        self._ready = asyncio.Event()
        self._closed = False
        self._unreported_drops = 0
        self._worker: asyncio.Task[None] | None = None
        if self._is_async:
            self._worker = asyncio.get_running_loop().create_task(self._run_async_callback())

    @property
    def active(self) -> bool:
        return not self._closed

    def _push(self, msg: Message) -> None:
        if self._closed or (self.event is not None and msg.name != self.event):
            return
        self.delivered += 1
        if self.callback is not None and not self._is_async:
            try:
                self.callback(msg)
            except Exception:
                log.exception("subscriber callback failed on %s #%d", msg.channel, msg.serial)
            return
        if len(self._queue) >= self._buffer:
            self._queue.popleft()
            self.dropped += 1
            self._unreported_drops += 1
        self._queue.append(msg)
        self._ready.set()

    async def _run_async_callback(self) -> None:
        assert self.callback is not None
        while True:
            msg = await self.get()
            try:
                await self.callback(msg)
            except Exception:
                log.exception("subscriber callback failed on %s #%d", msg.channel, msg.serial)

    async def get(self, timeout: float | None = None) -> Message:
        """The next message (raises :class:`StopAsyncIteration` once unsubscribed)."""
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            if timeout is None:
                await self._ready.wait()
            else:
                await asyncio.wait_for(self._ready.wait(), timeout)
        if self._unreported_drops:
            count, self._unreported_drops = self._unreported_drops, 0
            raise LimitExceeded(f"subscription buffer overflow: {count} messages dropped",
                                code=42907)
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.get()

    def _close(self) -> None:
        self._closed = True
        self._ready.set()
        if self._worker is not None:
            self._worker.cancel()

    async def unsubscribe(self) -> None:
        """Stop this subscription (and detach if it was the channel's last one)."""
        await self.channel.unsubscribe(self)


class Presence:
    """Who is on a channel. Entering needs a client id and the ``presence`` capability."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self.members: dict[tuple[str, str], PresenceMember] = {}
        self._listeners: list[Callable[[PresenceChange], Any]] = []

    async def _op(self, op: fr.PresenceOp, data: Any = None) -> list[PresenceMember]:
        f = await self._channel._client._request(
            fr.Presence, channel=self._channel.name, op=op, data=data
        )
        assert isinstance(f, fr.PresenceResult)
        self.members = {(m.client_id, m.connection_id): m for m in f.members}
        return list(f.members)

    async def enter(self, data: Any = None) -> list[PresenceMember]:
        """Enter with optional JSON ``data``; returns the members now present."""
        return await self._op("enter", data)

    async def update(self, data: Any = None) -> list[PresenceMember]:
        return await self._op("update", data)

    async def leave(self) -> list[PresenceMember]:
        return await self._op("leave")

    async def get(self) -> list[PresenceMember]:
        """The members present now."""
        return await self._op("get")

    def on_change(self, callback: Callable[[PresenceChange], Any]) -> Callable[[], None]:
        """Call ``callback(change)`` for every enter/update/leave (while attached)."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _apply(self, changes: tuple[PresenceChange, ...]) -> None:
        for change in changes:
            m = change.member
            if change.type == "leave":
                self.members.pop((m.client_id, m.connection_id), None)
            else:
                self.members[(m.client_id, m.connection_id)] = m
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:
                    log.exception("presence listener failed")


class Channel:
    """A named channel of a client. Get one with ``client.channel(name)``."""

    def __init__(self, client: Client, name: str) -> None:
        fr.validate_channel_name(name)
        self._client = client
        self.name = name
        self.attached = False
        self.epoch: str | None = None
        #: The serial of the last message received on this channel (0 before any).
        self.serial = 0
        self.duplicates_dropped = 0
        self.presence = Presence(self)
        self._subscriptions: list[Subscription] = []
        self._attaching: asyncio.Future[None] | None = None

    async def attach(self, rewind: int | None = None) -> None:
        """Start receiving this channel's messages; ``rewind`` replays the last N first."""
        if self.attached and not rewind:
            return
        f = await self._client._request(fr.Attach, channel=self.name, rewind=rewind)
        assert isinstance(f, fr.Attached)
        self.epoch = f.epoch
        # Replayed messages (rewind) have serials <= f.serial and must not count as dupes.
        self.serial = max(0, f.serial - (rewind or 0)) if rewind else f.serial
        self.attached = True

    async def detach(self) -> None:
        """Stop receiving this channel's messages."""
        if not self.attached:
            return
        self.attached = False
        await self._client._request(fr.Detach, channel=self.name)

    async def publish(self, name: str, data: Any = None, *, id: str | None = None) -> PublishResult:
        """Publish and wait for the broker's ack. ``id`` makes the publish idempotent."""
        if not isinstance(name, str):
            raise ProtocolError("the event name must be a string", code=40003)
        if not fr.is_json_value(data):
            raise ProtocolError(f"data of type {type(data).__name__} is not JSON", code=40003)
        limit = self._client.limits.get("max_message_size")
        if limit is not None:
            size = len(fr.dumps(data).encode()) + len(name.encode())
            if size > limit:
                raise LimitExceeded(f"message is {size} bytes; the limit is {limit}", code=42901)
        f = await self._client._request(fr.Publish, channel=self.name, name=name, data=data, id=id)
        assert isinstance(f, fr.Ack)
        return PublishResult(f.id, f.serial, f.timestamp, f.duplicate)

    async def subscribe(
        self,
        callback: MessageCallback | Callable[[Message], Awaitable[Any]] | None = None,
        *,
        event: str | None = None,
        rewind: int | None = None,
        buffer: int = 10_000,
    ) -> Subscription:
        """Attach (if needed) and deliver messages to ``callback`` or to the returned
        :class:`Subscription` (``async for msg in sub``). ``event`` filters by name."""
        sub = Subscription(self, callback, event, buffer)
        self._subscriptions.append(sub)
        try:
            await self.attach(rewind=rewind)
        except BaseException:
            self._subscriptions.remove(sub)
            sub._close()
            raise
        return sub

    async def unsubscribe(self, target: Subscription | MessageCallback | None = None) -> None:
        """Remove one subscription (or every one of a callback, or all); detach when none
        are left."""
        for sub in list(self._subscriptions):
            # == rather than is: bound methods (list.append) are new objects on each access
            if target is None or sub is target or (sub.callback is not None
                                                   and sub.callback == target):
                sub._close()
                self._subscriptions.remove(sub)
        if not self._subscriptions and self._client.state.value == "connected":
            await self.detach()

    async def history(self, limit: int = 100, before: int | None = None) -> list[Message]:
        """Up to ``limit`` stored messages (oldest first), optionally before a serial."""
        f = await self._client._request(fr.History, channel=self.name, limit=limit, before=before)
        assert isinstance(f, fr.HistoryResult)
        return list(f.messages)

    def _deliver(self, messages: tuple[Message, ...]) -> None:
        for msg in messages:
            if msg.serial <= self.serial:
                self.duplicates_dropped += 1
                continue
            self.serial = msg.serial
            for sub in self._subscriptions:
                sub._push(msg)

    def _on_detached(self) -> None:
        self.attached = False

    def _close_all(self) -> None:
        for sub in self._subscriptions:
            sub._close()
        self._subscriptions.clear()
        self.attached = False

    def __repr__(self) -> str:
        return f"<rtkit.Channel {self.name!r} attached={self.attached} serial={self.serial}>"
