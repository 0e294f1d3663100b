"""Publishing for a client: the bounded outbox, ordered sends, acks and resends."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from rtkit.aio.subscription import PublishResult
from rtkit.core import frames as fr
from rtkit.core.outbox import Outbox
from rtkit.core.states import ConnectionState
from rtkit.errors import RequestTimeout, RtkitError

if TYPE_CHECKING:
    from rtkit.aio.client import Client

S = ConnectionState


class Publisher:
    """Every publish gets a client-made message id and waits in the outbox until acked.

    Sends happen in publish order under one lock; after a reconnect everything unacked is
    sent again with the same ids, so the broker's dedup window lets each in exactly once.
    """

    def __init__(self, client: Client, limit: int) -> None:
        self._client = client
        self.outbox = Outbox(limit)
        self._lock = asyncio.Lock()
        self._instance = secrets.token_hex(4)
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        return f"{self._instance}:{next(self._ids)}"

    async def publish(self, channel: str, name: str, data: Any, msg_id: str | None,
                      timeout: float | None) -> PublishResult:
        client = self._client
        if client.state in (S.INITIALIZED, S.SUSPENDED, S.FAILED, S.CLOSED, S.CLOSING):
            raise client._unusable("publish")
        entry = self.outbox.add(channel, name, data, msg_id or self.new_id())
        entry.waiter = asyncio.get_running_loop().create_future()
        if client.state is S.CONNECTED:
            await self.flush()
        try:
            if timeout is None:
                return await asyncio.shield(entry.waiter)
            return await asyncio.wait_for(
                asyncio.shield(entry.waiter), timeout)
        except TimeoutError:
            self.outbox.remove(entry)
            raise RequestTimeout(f"no ack for {entry.id!r} in {timeout:g} s (it may still "
                                 f"have been published)") from None

    async def flush(self) -> None:
        """Send every unsent publish, in the order they were made."""
        client = self._client
        async with self._lock:
            link = client._link
            if link is None or link.ws is None or client.state is not S.CONNECTED:
                return
            for entry in self.outbox.take_unsent():
                ref, text = client._core.request(fr.Publish, channel=entry.channel,
                                                 name=entry.name, data=entry.data, id=entry.id)
                self.outbox.mark_sent(entry, ref)
                try:
                    await link.ws.send(text)
                except ConnectionClosed:
                    return  # the supervisor will resend after reconnecting

    def acked(self, ref: fr.Ref, frame: fr.Ack) -> bool:
        """Resolve the publish ``ref`` answers; False if ``ref`` was not a publish."""
        if not self.outbox.is_publish(ref):
            return False
        entry = self.outbox.resolve(ref)
        if entry is not None and entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_result(PublishResult(frame.id, frame.serial, frame.timestamp,
                                                  frame.duplicate))
        return True

    def refused(self, ref: fr.Ref, err: RtkitError) -> bool:
        """Fail the publish ``ref`` names (a nack); False if ``ref`` was not a publish."""
        if not self.outbox.is_publish(ref):
            return False
        entry = self.outbox.resolve(ref)
        if entry is not None and entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_exception(err)
        return True

    def fail_all(self, err: RtkitError) -> None:
        for entry in self.outbox.take_all():
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_exception(err)
