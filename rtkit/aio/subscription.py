"""Subscriptions (callbacks or ``async for``) and presence, on top of a channel."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from rtkit.core.client_events import PublishResult
from rtkit.core.frames import Message, PresenceChange, PresenceMember
from rtkit.errors import LimitExceeded, RtkitError

if TYPE_CHECKING:
    from rtkit.aio.channel import Channel

log = logging.getLogger("rtkit.client")
MessageCallback = Callable[[Message], Any]

__all__ = ["MessageCallback", "Presence", "PublishResult", "Subscription"]


class Subscription:
    """Messages of one channel (optionally one event name) for a callback or ``async for``.

    Sync callbacks run as each message arrives; async callbacks run one at a time, in
    order. Without a callback, iterate: ``async for msg in subscription``. At most
    ``buffer`` messages wait; past that the oldest are dropped, counted in ``dropped`` and
    reported by the iterator as :class:`~rtkit.LimitExceeded` (42907), never silently. If
    the channel fails (the broker refused or ended the attachment) the iterator raises
    that error once.
    """

    def __init__(
        self, channel: Channel, callback: MessageCallback | None, event: str | None, buffer: int
    ) -> None:
        self.channel = channel
        self.callback = callback
        self.event = event
        self.dropped = 0
        self.delivered = 0
        self.id = 0  # given by the channel
        self._is_async = callback is not None and inspect.iscoroutinefunction(callback)
        self._queue: deque[Message] = deque()
        self._buffer = buffer
        self._ready = asyncio.Event()
        self._closed = False
        self._unreported_drops = 0
        self._error: RtkitError | None = None
        self._worker: asyncio.Task[None] | None = None
        if self._is_async:
            self._worker = asyncio.get_running_loop().create_task(self._run_async_callback())

    @property
    def active(self) -> bool:
        return not self._closed

    def _push_all(self, messages: Sequence[Message]) -> None:
        """Messages for this subscription, in order (a batch: one frame or several)."""
        if self._closed:
            return
        event = self.event
        if event is not None:
            messages = [msg for msg in messages if msg.name == event]
        callback = None if self._is_async else self.callback
        if callback is not None:
            done = 0
            for msg in messages:
                if self._closed:  # the callback unsubscribed: not one message more
                    break
                done += 1
                try:
                    callback(msg)
                except Exception:
                    log.exception("subscriber callback failed on %s #%d", msg.channel,
                                  msg.serial)
            self.delivered += done
            return
        self.delivered += len(messages)
        queue = self._queue
        over = len(queue) + len(messages) - self._buffer
        if over > 0:  # the oldest go: counted, and reported by the iterator
            kept = self._buffer
            for _ in range(min(over, len(queue))):
                queue.popleft()
            if len(messages) > kept:
                messages = messages[len(messages) - kept:]
            self.dropped += over
            self._unreported_drops += over
        queue.extend(messages)
        self._ready.set()

    def _push(self, msg: Message) -> None:
        self._push_all((msg,))

    def _fail(self, err: RtkitError) -> None:
        """The channel failed: the iterator raises ``err`` once its queue is drained."""
        self._error = err
        self._ready.set()

    async def _run_async_callback(self) -> None:
        assert self.callback is not None
        while True:
            try:
                msg = await self.get()
            except StopAsyncIteration:
                return
            except RtkitError:
                continue  # reported to the client's on_error already
            try:
                await self.callback(msg)
            except Exception:
                log.exception("subscriber callback failed on %s #%d", msg.channel, msg.serial)

    async def get(self, timeout: float | None = None) -> Message:
        """The next message (raises :class:`StopAsyncIteration` once unsubscribed)."""
        while not self._queue:
            if self._error is not None:
                err, self._error = self._error, None
                raise err
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
        queue = self._queue
        if queue and not self._unreported_drops:
            return queue.popleft()  # (the common case, without a second coroutine)
        return await self.get()

    def close(self) -> None:
        """Stop delivering to this subscription now (the channel detaches if it was the
        last one)."""
        self.channel._remove(self)

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

    @property
    def entered(self) -> tuple[bool, Any]:
        """Whether (and with what data) this client entered: re-entered after a reconnect."""
        return self._channel._core_channel.entered

    async def _op(self, op: str, data: Any = None) -> list[PresenceMember]:
        members: list[PresenceMember] = await self._channel._presence(op, data)
        self.members = {(m.client_id, m.connection_id): m for m in members}
        return members

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
