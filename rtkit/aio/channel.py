"""Channels of a :class:`rtkit.Client`: publish, subscribe, history, presence, continuity."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rtkit.aio.subscription import MessageCallback, Presence, PublishResult, Subscription
from rtkit.core import frames as fr
from rtkit.core.continuity import ContinuityLoss, Tracker, Verdict
from rtkit.core.frames import Message
from rtkit.errors import LimitExceeded, ProtocolError, RtkitError

if TYPE_CHECKING:
    from rtkit.aio.client import Client

log = logging.getLogger("rtkit.client")
LossCallback = Callable[[ContinuityLoss], Any]


class Channel:
    """A named channel of a client. Get one with ``client.channel(name)``.

    Messages reach subscribers once each, in serial order. After a reconnect the channel
    resumes from the last serial it saw; when that is impossible it reports a
    :class:`~rtkit.ContinuityLoss` (``on_continuity_lost``, ``continuity_losses``) instead
    of losing messages silently. A skipped serial on a live link is repaired from history.
    """

    def __init__(self, client: Client, name: str) -> None:
        fr.validate_channel_name(name)
        self._client = client
        self.name = name
        self.attached = False
        self.presence = Presence(self)
        self.continuity_losses: list[ContinuityLoss] = []
        self._tracker = Tracker(name)
        self._subscriptions: list[Subscription] = []
        self._loss_listeners: list[LossCallback] = []
        self._want_attached = False
        self._attach_mode: tuple[bool, int | None] = (False, None)
        self._held: list[Message] = []  # messages waiting behind a gap being repaired
        self._replay_until = 0  # serials up to this one are a resume replay
        self._repair: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- state

    @property
    def client(self) -> Client:
        """The client this channel belongs to."""
        return self._client

    @property
    def serial(self) -> int:
        """The serial of the last message delivered on this channel (0 before any)."""
        return self._tracker.serial or 0

    @property
    def epoch(self) -> str | None:
        return self._tracker.epoch

    @property
    def duplicates_dropped(self) -> int:
        return self._tracker.duplicates

    def on_continuity_lost(self, callback: LossCallback) -> Callable[[], None]:
        """Call ``callback(loss)`` whenever messages were missed for good."""
        self._loss_listeners.append(callback)
        return lambda: self._loss_listeners.remove(callback) if callback in \
            self._loss_listeners else None

    # ---------------------------------------------------------------- operations

    async def attach(self, rewind: int | None = None) -> None:
        """Start receiving this channel's messages; ``rewind`` replays the last N first."""
        self._want_attached = True
        if self.attached and not rewind:
            return
        self._attach_mode = (False, rewind)
        await self._client._request(fr.Attach, channel=self.name, rewind=rewind)

    async def _reattach(self) -> None:
        """After a reconnect: attach again, resuming from the last serial seen."""
        self.attached = False
        point = self._tracker.resume_point
        self._attach_mode = (point is not None, None)
        await self._client._request(fr.Attach, channel=self.name, from_serial=point,
                                    epoch=self._tracker.epoch if point is not None else None,
                                    internal=True)
        await self.presence._reenter()

    async def detach(self) -> None:
        """Stop receiving this channel's messages."""
        self._want_attached = False
        if not self.attached:
            return
        self.attached = False
        await self._client._request(fr.Detach, channel=self.name)

    async def publish(self, name: str, data: Any = None, *, id: str | None = None,
                      timeout: float | None = None) -> PublishResult:
        """Publish and wait for the broker's ack.

        While the client is reconnecting the publish waits in a bounded queue and is sent
        (once, thanks to its message id) when the link is back. ``id`` defaults to a unique
        id made by the client. ``timeout`` (seconds) bounds the wait; by default the publish
        fails only if the connection is suspended, fails or is closed.
        """
        if not isinstance(name, str):
            raise ProtocolError("the event name must be a string", code=40003)
        if not fr.is_json_value(data):
            raise ProtocolError(f"data of type {type(data).__name__} is not JSON", code=40003)
        limit = self._client.limits.get("max_message_size")
        if limit is not None:
            size = len(fr.dumps(data).encode()) + len(name.encode())
            if size > limit:
                raise LimitExceeded(f"message is {size} bytes; the limit is {limit}", code=42901)
        return await self._client._publish(self.name, name, data, id, timeout)

    async def subscribe(
        self,
        callback: MessageCallback | Callable[[Message], Awaitable[Any]] | None = None,
        *,
        event: str | None = None,
        rewind: int | None = None,
        buffer: int = 10_000,
    ) -> Subscription:
        """Attach (if needed) and deliver messages to ``callback`` or to the returned
        :class:`Subscription` (``async for msg in sub``). ``event`` filters by name.

        Before ``connect()`` this only registers the subscription: the channel attaches when
        the client connects (use this with a recovery key so no replayed message is missed).
        """
        sub = Subscription(self, callback, event, buffer)
        self._subscriptions.append(sub)
        if self._client.state.value == "initialized":
            self._want_attached = True
            return sub
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

    async def history(self, limit: int = 100, before: int | None = None,
                      after: int | None = None) -> list[Message]:
        """Up to ``limit`` stored messages, oldest first: the latest ones (before serial
        ``before`` if given), or the first ones after serial ``after``."""
        f = await self._client._request(fr.History, channel=self.name, limit=limit,
                                        before=before, after=after)
        assert isinstance(f, fr.HistoryResult)
        return list(f.messages)

    # ---------------------------------------------------------------- input (client calls)

    def _on_attached(self, frame: fr.Attached) -> None:
        resuming, rewind = self._attach_mode
        self._attach_mode = (False, None)
        self.attached = True
        self._cancel_repair()
        self._replay_until = frame.serial if resuming else 0
        loss = self._tracker.attached(frame, resuming, rewind, time.time())
        if loss is not None:
            self._report(loss)

    def _on_detached(self) -> None:
        self.attached = False

    def _resume_refused(self, reason: str) -> None:
        loss = self._tracker.lost_on_resume_refused(time.time(), reason)
        if loss is not None:
            self._report(loss)

    def _report(self, loss: ContinuityLoss) -> None:
        log.warning("continuity lost on %s from serial %s: %s", self.name, loss.first_lost,
                    loss.reason)
        self.continuity_losses.append(loss)
        for listener in list(self._loss_listeners):
            try:
                listener(loss)
            except Exception:
                log.exception("continuity listener failed")

    def _deliver(self, messages: tuple[Message, ...]) -> None:
        if self._repair is not None:
            self._held.extend(messages)
            return
        tracker = self._tracker
        for i, msg in enumerate(messages):
            verdict = tracker.check(msg)
            if verdict is Verdict.DELIVER:
                tracker.accept(msg)
                if msg.serial <= self._replay_until:
                    self._client._count_replay(1)
                for sub in self._subscriptions:
                    sub._push(msg)
            elif verdict is Verdict.DUPLICATE:
                tracker.duplicates += 1
            else:  # a skipped serial on a live link: repair it from history
                self._held = list(messages[i:])
                self._repair = asyncio.get_running_loop().create_task(
                    self._repair_gap(tracker.serial or 0, msg.serial))
                return

    async def _repair_gap(self, last: int, next_serial: int) -> None:
        missing = next_serial - last - 1
        found: list[Message] = []
        try:
            found = await self.history(limit=missing, after=last, before=next_serial)
        except RtkitError as exc:
            log.warning("could not repair a gap on %s: %s", self.name, exc)
        self._repair = None
        if [m.serial for m in found] != list(range(last + 1, next_serial)):
            self._report(ContinuityLoss(self.name, last + 1, last,
                                        "a gap on the live link could not be repaired from "
                                        "history", time.time()))
            self._tracker.skip_to(next_serial - 1)
            found = []
        held, self._held = self._held, []
        self._deliver(tuple(found) + tuple(sorted(held, key=lambda m: m.serial)))

    def _cancel_repair(self) -> None:
        if self._repair is not None:
            self._repair.cancel()
            self._repair = None
        self._held = []

    def _close_all(self) -> None:
        self._cancel_repair()
        for sub in self._subscriptions:
            sub._close()
        self._subscriptions.clear()
        self.attached = False

    def __repr__(self) -> str:
        return f"<rtkit.Channel {self.name!r} attached={self.attached} serial={self.serial}>"
