"""Channels of a :class:`rtkit.Client`: publish, subscribe, history, presence, continuity.

The protocol state of a channel lives in the client core
(:class:`rtkit.core.channel_state.ChannelCore`); this is its face for the application.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from rtkit.aio.subscription import MessageCallback, Presence, PublishResult, Subscription
from rtkit.core.channel_state import ChannelCore
from rtkit.core.continuity import ContinuityLoss
from rtkit.core.frames import Message, PresenceMember
from rtkit.core.states import ChannelState
from rtkit.errors import RtkitError

if TYPE_CHECKING:
    from rtkit.aio.client import Client

log = logging.getLogger("rtkit.client")
LossCallback = Callable[[ContinuityLoss], Any]


class Channel:
    """A named channel of a client. Get one with ``client.channel(name)``.

    Messages reach subscribers once each, in serial order. After a reconnect the channel
    resumes from the last serial it delivered; when that is impossible it reports a
    :class:`~rtkit.ContinuityLoss` (``on_continuity_lost``, ``continuity_losses``) instead
    of losing messages silently. A skipped serial on a live link is repaired by the broker's
    replay. If the broker refuses the channel (a capability the token no longer has, a
    limit), :attr:`state` becomes ``failed`` with :attr:`error`, and the rest of the
    connection carries on.
    """

    def __init__(self, client: Client, name: str, core: ChannelCore) -> None:
        self._client = client
        self.name = name
        self._core_channel = core
        self.presence = Presence(self)
        self.continuity_losses: list[ContinuityLoss] = []
        self._subs: dict[int, Subscription] = {}
        self._loss_listeners: list[LossCallback] = []

    # ---------------------------------------------------------------- state

    @property
    def client(self) -> Client:
        """The client this channel belongs to."""
        return self._client

    @property
    def state(self) -> ChannelState:
        """``detached``, ``attaching``, ``attached``, ``detaching`` or ``failed``."""
        return self._core_channel.state

    @property
    def error(self) -> RtkitError | None:
        """Why the channel failed (None unless :attr:`state` is ``failed``)."""
        return self._core_channel.error

    @property
    def attached(self) -> bool:
        return self._core_channel.state is ChannelState.ATTACHED

    @property
    def serial(self) -> int:
        """The serial of the last message delivered on this channel (0 before any)."""
        return self._core_channel.tracker.serial

    @property
    def epoch(self) -> str | None:
        return self._core_channel.tracker.epoch

    @property
    def duplicates_dropped(self) -> int:
        return self._core_channel.tracker.duplicates

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def on_continuity_lost(self, callback: LossCallback) -> Callable[[], None]:
        """Call ``callback(loss)`` whenever messages were missed for good."""
        self._loss_listeners.append(callback)
        return lambda: self._loss_listeners.remove(callback) if callback in \
            self._loss_listeners else None

    # ---------------------------------------------------------------- operations

    async def attach(self, rewind: int | None = None) -> None:
        """Start receiving this channel's messages; ``rewind`` replays the last N first
        (to the subscriptions that exist when the channel first attaches)."""
        await self._client._driver.op(
            lambda now: self._client._core.attach(self.name, now, rewind))

    async def detach(self) -> None:
        """Stop receiving this channel's messages (subscriptions stay, idle, until the
        next subscribe or attach)."""
        await self._client._driver.op(lambda now: self._client._core.detach(self.name, now))

    async def publish(self, name: str, data: Any = None, *, id: str | None = None,
                      timeout: float | None = None) -> PublishResult:
        """Publish and wait for the broker's ack.

        The data is encoded at once (changing it afterwards changes nothing). While the
        client is reconnecting the publish waits in a queue bounded in bytes and is sent
        (once, thanks to its message id) when the link is back. ``id`` defaults to a unique
        id made by the client. ``timeout`` (seconds) bounds the wait; by default the publish
        fails only if the connection is suspended, fails or is closed.
        """
        client = self._client
        msg_id = id if id is not None else client._new_message_id()
        result: PublishResult = await client._driver.op(
            lambda now: client._core.publish(self.name, name, data, msg_id, now, timeout))
        return result

    async def subscribe(
        self,
        callback: MessageCallback | Callable[[Message], Awaitable[Any]] | None = None,
        *,
        event: str | None = None,
        rewind: int | None = None,
        buffer: int = 10_000,
    ) -> Subscription:
        """Attach (if needed) and deliver messages to ``callback`` or to the returned
        :class:`Subscription` (``async for msg in sub``). ``event`` filters by name;
        ``rewind`` first delivers the last N messages stored on the channel, to this
        subscription only.

        Before ``connect()`` this only registers the subscription: the channel attaches when
        the client connects (use this with a recovery key so no replayed message is missed).
        """
        client = self._client
        driver = client._driver
        wait = client.state.value != "initialized"
        try:
            sub_id, op = client._core.subscribe(self.name, driver.now(), rewind, wait)
        except BaseException:
            driver.pump()
            raise
        sub = Subscription(self, callback, event, buffer)
        sub.id = sub_id
        self._subs[sub_id] = sub
        done = driver.future(op) if op is not None else None
        driver.pump()
        if done is None:
            return sub
        try:
            await done
        except BaseException:
            self._remove(sub)
            raise
        return sub

    async def unsubscribe(self, target: Subscription | MessageCallback | None = None) -> None:
        """Remove one subscription (or every one of a callback, or all); detach when none
        are left."""
        for sub in list(self._subs.values()):
            # == rather than is: bound methods (list.append) are new objects on each access
            if target is None or sub is target or (sub.callback is not None
                                                   and sub.callback == target):
                self._remove(sub)

    def _remove(self, sub: Subscription) -> None:
        sub._close()
        if self._subs.pop(sub.id, None) is not None:
            client = self._client
            client._core.unsubscribe(self.name, sub.id, client._driver.now())
            client._driver.pump()

    async def history(self, limit: int = 100, before: int | None = None,
                      after: int | None = None) -> list[Message]:
        """Up to ``limit`` stored messages, oldest first: the latest ones (before serial
        ``before`` if given), or the first ones after serial ``after``."""
        client = self._client
        messages: list[Message] = await client._driver.op(
            lambda now: client._core.history(self.name, now, limit, before, after))
        return messages

    async def _presence(self, op: str, data: Any) -> list[PresenceMember]:
        client = self._client
        members: list[PresenceMember] = await client._driver.op(
            lambda now: client._core.presence(self.name, op, now, data))  # type: ignore[arg-type]
        return members

    # ---------------------------------------------------------------- events (client calls)

    def _deliver(self, messages: Sequence[Message], subs: tuple[int, ...]) -> None:
        for sub_id in subs:
            sub = self._subs.get(sub_id)
            if sub is not None:
                sub._push_all(messages)

    def _report(self, loss: ContinuityLoss) -> None:
        log.warning("continuity lost on %s from serial %s: %s", self.name, loss.first_lost,
                    loss.reason)
        self.continuity_losses.append(loss)
        for listener in list(self._loss_listeners):
            try:
                listener(loss)
            except Exception:
                log.exception("continuity listener failed")

    def _failed(self, err: RtkitError) -> None:
        for sub in self._subs.values():
            sub._fail(err)

    def _close_all(self) -> None:
        for sub in self._subs.values():
            sub._close()
        self._subs.clear()

    def __repr__(self) -> str:
        return f"<rtkit.Channel {self.name!r} {self.state.value} serial={self.serial}>"

