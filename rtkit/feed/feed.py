"""``rtkit.Feed``: any public WebSocket or Server-Sent Events feed, dependable.

The feed reconnects for ever by default (backoff with full jitter), re-sends its
subscription after every (re)connect, watches the link *and* the data, resumes SSE streams
with ``Last-Event-ID``, reports gaps and duplicates in numbered streams, and counts bad
frames without stopping. The pure logic is in :mod:`rtkit.core.feed`,
:mod:`rtkit.core.sequence`, :mod:`rtkit.core.watch` and :mod:`rtkit.core.sse`; one
connection is a :mod:`rtkit.feed.links` object, kept up by a
:class:`~rtkit.feed.supervisor.Supervisor`; what becomes of each frame is
:mod:`rtkit.feed.delivery`. This module holds the options, the properties and the public
operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from rtkit import _rerun
from rtkit.core import sse
from rtkit.core.feed import BadFrame, FeedCore, FeedRecord, ParseFunction, ParseName
from rtkit.core.sequence import Extractor, Gap
from rtkit.core.states import ConnectionState, StateChange, Trigger
from rtkit.core.timing import Backoff, RandomSource
from rtkit.core.watch import RetryPolicy
from rtkit.errors import ConnectionClosed, ConnectionFailed, Disconnected, ProtocolError, RtkitError
from rtkit.feed.delivery import Delivery, GapCallback, Resync
from rtkit.feed.lifecycle import ErrorListener, Lifecycle, StateListener
from rtkit.feed.subscription import FeedSubscription, RecordCallback
from rtkit.feed.supervisor import Supervisor, encode

S = ConnectionState
Subscribe = Any  # one message, a list of messages, or a callable returning either
KINDS = {"ws": "ws", "wss": "ws", "websocket": "ws", "sse": "sse", "http": "sse",
         "https": "sse"}


class Feed:
    """A live feed from ``url``: ``ws://``/``wss://`` (WebSocket) or ``http(s)://``
    (Server-Sent Events), chosen by the URL or by ``kind="ws"|"sse"``. ``url`` may be a
    callable returning the URL, called before each connect (to resume from a cursor).

    - ``subscribe``: a message, a list of messages, or a callable (sync or async) returning
      either, sent after every (re)connect. Dicts and lists go as JSON, str as text, bytes as
      binary. ``headers``: extra request headers; ``ssl``: an :class:`ssl.SSLContext`.
    - ``parse``: ``"json"`` (one value per frame, the default), ``"ndjson"`` (one per line),
      ``"text"``, ``"bytes"`` or a callable (frame -> record, None or a list of records).
    - ``sequence``: the (dotted) field or a callable giving each record's number;
      ``sequence_key`` scopes numbers (e.g. ``"product_id"``); ``contiguous=False`` for
      numbers that only increase (timestamps, cursors: duplicates only, no gaps). Gaps go to
      :meth:`on_gap`, :attr:`gaps` and ``resync(gap)`` (may return records to deliver).
    - ``timestamp``: the field or callable giving a record's own time (seconds, ms, µs, ns
      or ISO 8601), for latency.
    - Liveness: ``heartbeat`` (default 20 s): on a WebSocket, ping this often; on SSE, the
      server's expected keep-alive interval. Nothing heard for ``heartbeat`` plus
      ``heartbeat_grace`` (default half of it) drops the link; None turns it off.
      ``max_silence``: drop the link when no *record* came for that many seconds, even if
      pings or comments still flow (off by default: only you know how quiet the feed is).
    - Reconnection: ``backoff`` (default base 0.5 s, cap 15 s, full jitter;
      ``random_source`` for reproducible runs), never sooner than an SSE ``retry:``; never
      giving up unless ``max_retries`` is set; ``suspended`` after ``suspend_after`` seconds
      down (still retrying). ``connect_timeout`` bounds each attempt.
    - Bad frames (bad JSON, a parse callable that raised, over ``max_frame_size``) are
      counted in :attr:`bad_frame_count`, kept in :attr:`bad_frames` (latest
      ``keep_bad_frames``) and reported to :meth:`on_error`; the feed goes on.
    """

    def __init__(
        self,
        url: str | Callable[[], str],
        *,
        kind: str | None = None,
        subscribe: Subscribe = None,
        headers: Mapping[str, str] | None = None,
        parse: ParseName | ParseFunction | None = "json",
        sequence: str | Extractor | None = None,
        sequence_key: str | Extractor | None = None,
        contiguous: bool = True,
        timestamp: str | Extractor | None = None,
        resync: Resync | None = None,
        name: str | None = None,
        heartbeat: float | None = 20.0,
        heartbeat_grace: float | None = None,
        max_silence: float | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        max_retries: int | None = None,
        suspend_after: float = 120.0,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_size: int = 1024 * 1024,
        keep_bad_frames: int = 100,
        random_source: RandomSource | None = None,
    ) -> None:
        first_url = url() if callable(url) else url
        scheme = urlsplit(first_url).scheme.lower()
        chosen = KINDS.get((kind or scheme).lower())
        if chosen is None:
            raise ValueError(f"cannot tell the kind of feed from {first_url!r}: use a ws://, "
                             "wss://, http:// or https:// URL, or kind='ws' or 'sse'")
        if chosen == "sse" and subscribe is not None:
            raise ValueError("an SSE feed cannot send: subscribe with the URL (its query)")
        self.url = url
        self.kind = chosen
        self.name = name or _name_of(first_url)
        self.headers = dict(headers or {})
        self.ssl = ssl
        self.connect_timeout = connect_timeout
        self.suspend_after = suspend_after
        self.max_frame_size = max_frame_size
        self._subscribe = subscribe
        grace = heartbeat_grace if heartbeat_grace is not None else (heartbeat or 0) / 2
        self.backoff = backoff or Backoff()
        retry = RetryPolicy(self.backoff, random_source or random.Random(), max_retries)
        self._core = FeedCore(self.name, parse, sequence=sequence, sequence_key=sequence_key,
                              contiguous=contiguous, timestamp=timestamp,
                              max_frame_size=max_frame_size, keep_bad_frames=keep_bad_frames)
        self._parser = sse.SSEParser(max_line=max_frame_size, max_event=max_frame_size)
        self._life = Lifecycle(self.name)
        self._supervisor = Supervisor(self, retry, (heartbeat, grace, max_silence))
        self._delivery = Delivery(self.name, self._core, self._life, self._supervisor, resync,
                                  max_frame_size)
        _rerun.replace_previous("feed", self, Feed._close_soon)

    # ---------------------------------------------------------------- observing

    @property
    def state(self) -> ConnectionState:
        return self._life.state

    @property
    def state_history(self) -> list[StateChange]:
        """Every state change so far (bounded), oldest first."""
        return list(self._life.machine.history)

    @property
    def last_error(self) -> RtkitError | None:
        return self._life.last_error

    def on_state_change(self, callback: StateListener) -> Callable[[], None]:
        """Call ``callback(change)`` on every state change; returns a function to stop."""
        return self._life.on_state_change(callback)

    def on_error(self, callback: ErrorListener) -> Callable[[], None]:
        """Call ``callback(error)`` for connection failures, drops and bad frames."""
        return self._life.on_error(callback)

    def state_changes(self) -> AsyncIterator[StateChange]:
        """``async for change in feed.state_changes()``: changes as they happen."""
        return self._life.changes()

    async def wait_for_state(self, *states: ConnectionState, timeout: float = 10.0) -> None:
        """Wait until the state is one of ``states`` (TimeoutError after ``timeout``)."""
        await self._life.wait_for(*states, timeout=timeout)

    def on_gap(self, callback: GapCallback) -> Callable[[], None]:
        """Call ``callback(gap)`` for every gap in a numbered stream (see ``sequence=``)."""
        return self._delivery.on_gap(callback)

    @property
    def gaps(self) -> list[Gap]:
        """The gaps found so far (the latest 1,000), oldest first."""
        return self._core.gaps

    @property
    def duplicates(self) -> int:
        """Records dropped because their number was already passed."""
        return self._core.duplicates

    @property
    def sequences(self) -> dict[Any, int]:
        """The last number seen per key (the key is None for a single sequence)."""
        tracker = self._core.sequences
        return dict(tracker.last) if tracker is not None else {}

    @property
    def resyncs(self) -> int:
        """Resyncs done so far (``resync`` returned without raising)."""
        return self._delivery.resyncs

    @property
    def bad_frames(self) -> list[BadFrame]:
        """The latest bad frames, oldest first, with their first bytes kept."""
        return list(self._core.bad_frames)

    @property
    def bad_frame_count(self) -> int:
        return self._core.bad_frame_count

    @property
    def last_event_id(self) -> str:
        """The SSE stream's last event id ("" if none): sent as ``Last-Event-ID``."""
        return self._parser.last_event_id

    @property
    def last_rtt(self) -> float | None:
        """Round-trip time of the last WebSocket ping, in seconds."""
        return self._supervisor.last_rtt

    @property
    def connections(self) -> int:
        """Connections made so far."""
        return self._supervisor.connections

    @property
    def subscriptions_sent(self) -> int:
        """Subscription messages sent so far (over every connection)."""
        return self._supervisor.subscriptions_sent

    def stats(self) -> dict[str, Any]:
        """Counters: connections, frames, records, bad frames, gaps, missed, duplicates..."""
        tracker = self._core.sequences
        return {"state": self.state.value, "connections": self.connections,
                "frames": self._core.frames, "records": self._core.records,
                "bad_frames": self.bad_frame_count,
                "gaps": tracker.gap_count if tracker else 0,
                "missed": tracker.missing if tracker else 0,
                "duplicates": self.duplicates, "subscriptions_sent": self.subscriptions_sent,
                "resyncs": self.resyncs}

    # ---------------------------------------------------------------- lifecycle

    async def connect(self, timeout: float | None = None) -> None:
        """Connect (or wait for the reconnect in progress); returns once connected and the
        subscription is sent. If that takes longer than ``timeout`` (default
        ``connect_timeout``) the last error is raised and the feed keeps retrying in the
        background; ``close()`` stops it."""
        if self.state is S.CONNECTED:
            return
        if not self._supervisor.running:
            self._life.transition(Trigger.CONNECT, "connect() called")
            self._supervisor.start()
        else:
            self._supervisor.retry_now()
        try:
            await self.wait_for_state(S.CONNECTED, S.FAILED, S.CLOSED,
                                      timeout=timeout or self.connect_timeout)
        except TimeoutError:
            err = self.last_error or ConnectionFailed(f"cannot connect to {self.name}")
            raise type(err)(f"{err.message} (still retrying in the background; close() "
                            "stops it)", code=err.code) from None
        state: ConnectionState = self._life.state  # (re-read: it changed while we waited)
        if state is not S.CONNECTED:
            raise self.last_error or ConnectionClosed("closed while connecting")

    async def reconnect(self, timeout: float | None = None) -> None:
        """Drop the link now and connect again at once (no backoff)."""
        if self.state in (S.INITIALIZED, S.CLOSED, S.FAILED):
            await self.connect(timeout)
            return
        self._supervisor.retry_now()
        link = self._supervisor.link
        if self.state is S.CONNECTED and link is not None:
            link.abort(Disconnected("reconnect() called"))
            await self.wait_for_state(S.DISCONNECTED, S.CONNECTING, S.FAILED, S.CLOSED,
                                      timeout=self.connect_timeout)
        await self.connect(timeout)

    async def close(self) -> None:
        """Stop: close the link, end every subscription's iteration. Safe to call twice."""
        if self.state in (S.CLOSED, S.CLOSING):
            return
        self._life.transition(Trigger.CLOSE, "close() called")
        await self._delivery.stop_resyncs()
        await self._supervisor.stop()
        self._delivery.close_subscriptions()
        if self._life.state is S.CLOSING:
            self._life.transition(Trigger.CLOSED, "closed")

    def _close_soon(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.close())

    async def __aenter__(self) -> Feed:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def ping(self) -> float:
        """Ping the server now and return the round-trip time in seconds (also kept in
        :attr:`last_rtt`), as :meth:`rtkit.Client.ping` does; the connection panel pings
        once per connection. WebSocket only: an SSE feed raises :class:`~rtkit.ProtocolError`
        (40000); a feed that is reconnecting :class:`~rtkit.Disconnected`, a closed one
        :class:`~rtkit.ConnectionClosed`, and no pong within ``connect_timeout``
        :class:`~rtkit.RequestTimeout`."""
        if self.kind == "sse":
            raise ProtocolError("an SSE feed cannot ping: its liveness is the server's "
                                "keep-alive comments", code=40000)
        link = self._supervisor.link
        if self.state is not S.CONNECTED or link is None:
            raise (ConnectionClosed if self.state in (S.CLOSED, S.CLOSING, S.INITIALIZED)
                   else Disconnected)(f"cannot ping: the feed is {self.state.value}")
        return await link.round_trip(self.connect_timeout)

    async def send(self, obj: Any) -> None:
        """Send a message (dicts and lists as JSON, str as text, bytes as binary); waits up
        to ``connect_timeout`` while reconnecting. SSE feeds cannot send."""
        if self.kind == "sse":
            raise ProtocolError("an SSE feed only receives: it cannot send", code=40000)
        if self.state in (S.CONNECTING, S.DISCONNECTED, S.SUSPENDED):
            with contextlib.suppress(TimeoutError):
                await self.wait_for_state(S.CONNECTED, S.FAILED, S.CLOSED,
                                          timeout=self.connect_timeout)
        link = self._supervisor.link
        if self.state is not S.CONNECTED or link is None:
            raise (ConnectionClosed if self.state in (S.CLOSED, S.CLOSING, S.INITIALIZED)
                   else Disconnected)(f"cannot send: the feed is {self.state.value}")
        await link.send(encode(obj))

    # ---------------------------------------------------------------- records

    def subscribe(self, callback: RecordCallback | None = None, *, event: str | None = None,
                  buffer: int = 10_000) -> FeedSubscription:
        """Deliver records to ``callback`` (sync or async), or iterate over the returned
        subscription. ``event`` keeps only one SSE event type. Works with or without
        ``await``; records flow once the feed is connected."""
        sub = FeedSubscription(self, callback, event, buffer)
        self._delivery.subs.append(sub)
        return sub

    async def unsubscribe(self, target: FeedSubscription | RecordCallback | None = None
                          ) -> None:
        """Remove one subscription, every one of a callback, or all."""
        for sub in list(self._delivery.subs):
            if target is None or sub is target or (sub.callback is not None
                                                   and sub.callback == target):
                sub.close()

    def _forget(self, sub: FeedSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._delivery.subs.remove(sub)

    def __aiter__(self) -> AsyncIterator[FeedRecord]:
        """``async for record in feed``: a new subscription, ending when the feed closes."""
        return self.subscribe()

    def _fail(self, err: RtkitError) -> None:
        """Give up (the server said so, or ``max_retries``): failed, iterations end."""
        self._life.report(err)
        self._life.transition(Trigger.FATAL, err.message, err)
        self._delivery.close_subscriptions()

    # ---------------------------------------------------------------- channel-like surface

    @property
    def client(self) -> Feed:
        """The feed itself: widgets ask a channel for its client's state and controls."""
        return self

    @property
    def serial(self) -> int:
        """The serial of the last record delivered (0 before any)."""
        return self._core.serial

    epoch: None = None  # a feed has no broker epoch
    client_id: None = None
    queued_publishes = 0

    @property
    def connection_id(self) -> str | None:
        return f"{self.name}#{self.connections}" if self.state is S.CONNECTED else None

    @property
    def duplicates_dropped(self) -> int:
        return self.duplicates

    @property
    def continuity_losses(self) -> list[Gap]:
        """The gaps, as a channel lists its continuity losses."""
        return self.gaps

    def on_continuity_lost(self, callback: GapCallback) -> Callable[[], None]:
        """The same as :meth:`on_gap` (for tools written for channels)."""
        return self.on_gap(callback)

    def __repr__(self) -> str:
        return f"<rtkit.Feed {self.name} ({self.kind}) {self.state.value}>"


def _name_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}".rstrip("/") or url
