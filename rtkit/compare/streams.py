"""The receiving ends of a comparison: rtkit's WebSocket and SSE clients, and a poller of
the REST history endpoint. Each notes, per message, the time from publish to delivery."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Protocol
from urllib.parse import quote

from rtkit.aio import http
from rtkit.aio.client import Client
from rtkit.aio.sselink import http_base
from rtkit.aio.subscription import Subscription
from rtkit.core.frames import Message
from rtkit.errors import RtkitError


class Tally:
    """The latencies of one receiver. Counts only the messages of the current run (their
    data carries ``run``) and sets :attr:`done` once ``expected`` have arrived, or when
    the receiver failed (:attr:`error`)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.error: BaseException | None = None
        self._run: str | None = None
        self._expected = 0

    def arm(self, run: str, expected: int) -> None:
        """Count from now on the messages of ``run``, until ``expected`` have arrived."""
        self.latencies.clear()
        self.error = None
        self.done.clear()
        self._run, self._expected = run, expected

    def note(self, data: Any, now: float) -> None:
        """A message with ``data`` arrived at ``now`` (seconds since the epoch)."""
        if (self._run is None or not isinstance(data, dict) or data.get("run") != self._run
                or not isinstance(data.get("sent"), float | int)):
            return
        self.latencies.append(now - data["sent"])
        if len(self.latencies) >= self._expected:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        """The receiver stopped receiving because of ``error``."""
        self.error = error
        self.done.set()


class Receiver(Protocol):
    """One protocol's subscriber: ``open()`` connects and subscribes, ``close()`` ends it;
    ``polls`` counts its requests (a push subscriber makes none)."""

    tally: Tally
    polls: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class RtkitReceiver:
    """An :class:`rtkit.Client` subscribed over one transport (``"websocket"`` or ``"sse"``)."""

    def __init__(self, url: str, key: str, transport: str, channel: str) -> None:
        self.tally = Tally()
        self.polls = 0
        self.client = Client(url, key=key, client_id=f"compare-{transport}",
                             transports=(transport,))
        self._channel = channel
        self._sub: Subscription | None = None

    async def open(self) -> None:
        await self.client.connect()
        tally = self.tally

        def on_message(message: Message) -> None:
            tally.note(message.data, time.time())

        self._sub = await self.client.channel(self._channel).subscribe(on_message)

    async def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
        await self.client.close()


class PollingReceiver:
    """Asks ``GET /channels/{channel}/messages?after=<last serial>`` every ``every`` seconds
    on one kept-alive HTTP connection (at once again when a page was full), as a polling
    client of the REST interface does. Stops polling once its tally is done."""

    def __init__(self, url: str, key: str, channel: str, every: float) -> None:
        self.tally = Tally()
        self.every = every
        self.polls = 0
        self._http = http.KeepAlive(http_base(url))
        self._path = f"/channels/{quote(channel, safe='')}/messages"
        self._auth = {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()}
        self._after = 0
        self._task: asyncio.Task[None] | None = None

    async def _get(self, query: str) -> dict[str, Any]:
        status, _, body = await self._http.request("GET", f"{self._path}?{query}", self._auth)
        if status != 200:
            raise RuntimeError(f"GET {self._path}?{query} answered {status}: {body[:200]!r}")
        page: dict[str, Any] = json.loads(body)
        self.polls += 1
        return page

    async def open(self) -> None:
        latest = (await self._get("limit=1"))["messages"]  # where the channel is now
        self._after = latest[-1]["serial"] if latest else 0
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        try:
            while not self.tally.done.is_set():
                page = await self._get(f"after={self._after}&limit=100")
                now = time.time()
                for message in page["messages"]:
                    self.tally.note(message["data"], now)
                    self._after = message["serial"]
                if not page["more"]:
                    await asyncio.sleep(self.every)
        except (RtkitError, RuntimeError, ValueError, KeyError) as exc:
            self.tally.fail(exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # our own task ends; a cancel of ours propagates
        await self._http.close()
