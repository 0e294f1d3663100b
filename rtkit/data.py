"""Live data as pandas DataFrames: a channel's messages and a client's state history.

Memory is bounded: a :class:`MessageRecorder` keeps the latest ``window`` messages.
Timestamps are ``datetime64[ns, UTC]``, serials ``int64``, latency in milliseconds
(``float64``: the time from the broker stamping a message to this client receiving it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from rtkit import _rerun
from rtkit.core.frames import Message

if TYPE_CHECKING:
    from rtkit.aio.channel import Channel
    from rtkit.aio.events import Observable
    from rtkit.aio.subscription import Subscription

MESSAGE_COLUMNS = ["channel", "serial", "id", "name", "data", "client_id", "timestamp",
                   "received", "latency_ms"]


class MessageRecorder:
    """Keeps the latest ``window`` messages of a channel (plus when they arrived)."""

    def __init__(self, window: int = 10_000) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.rows: deque[tuple[Message, float]] = deque(maxlen=window)
        self.count = 0
        self.listeners: list[Callable[[Message, float], None]] = []
        self._subscription: Subscription | None = None

    def __call__(self, msg: Message) -> None:
        """Record one message (use the recorder itself as a subscribe callback)."""
        now = time.time()
        self.rows.append((msg, now))
        self.count += 1
        for listener in self.listeners:
            listener(msg, now)

    async def attach(self, channel: Channel) -> MessageRecorder:
        """Record ``channel``'s messages from now on. In a notebook, running the cell again
        stops the recorder it made the time before."""
        self._subscription = await channel.subscribe(self)
        _rerun.replace_previous("recorder", self, MessageRecorder.close)
        return self

    async def stop(self) -> None:
        """Stop recording (and detach the channel if nothing else listens)."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    def close(self) -> None:
        """Stop recording now (sync; the rows recorded so far stay)."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def dataframe(self, flatten: bool = False) -> pd.DataFrame:
        """The recorded messages, oldest first. ``flatten`` adds a column per data key."""
        rows = list(self.rows)
        frame = pd.DataFrame({
            "channel": pd.Series([m.channel for m, _ in rows], dtype="string"),
            "serial": pd.Series([m.serial for m, _ in rows], dtype="int64"),
            "id": pd.Series([m.id for m, _ in rows], dtype="string"),
            "name": pd.Series([m.name for m, _ in rows], dtype="string"),
            "data": pd.Series([m.data for m, _ in rows], dtype="object"),
            "client_id": pd.Series([m.client_id for m, _ in rows], dtype="string"),
            "timestamp": utc_ns(pd.Series([m.timestamp for m, _ in rows], dtype="int64"),
                                "ms"),
            "received": utc_ns(pd.Series([t for _, t in rows], dtype="float64"), "s"),
            # A feed's record without a time of its own has no latency (NaN).
            "latency_ms": pd.Series([t * 1000 - m.timestamp if getattr(m, "source_time", True)
                                     else float("nan") for m, t in rows], dtype="float64"),
        }, columns=MESSAGE_COLUMNS)
        if flatten and rows:
            expanded = pd.json_normalize([m.data if isinstance(m.data, dict) else
                                          {"value": m.data} for m, _ in rows])
            expanded.index = frame.index
            frame = frame.join(expanded.add_prefix("data."))
        return frame


async def record(channel: Channel, window: int = 10_000) -> MessageRecorder:
    """Subscribe to ``channel`` and keep its latest ``window`` messages for DataFrames."""
    return await MessageRecorder(window).attach(channel)


def states_frame(client: Observable) -> pd.DataFrame:
    """A client's state changes: time (UTC), from, to, trigger, reason, error code, how
    long the previous state lasted (seconds) and the transport of the link (``websocket`` or
    ``sse``; empty for a feed)."""
    history = client.state_history
    at = [c.at for c in history]
    durations = [b - a for a, b in zip([h.at for h in history[:1]] + at[:-1], at, strict=True)]
    frame = pd.DataFrame({
        "at": utc_ns(pd.Series(at, dtype="float64"), "s"),
        "previous": pd.Series([c.previous.value for c in history], dtype="string"),
        "state": pd.Series([c.current.value for c in history], dtype="string"),
        "trigger": pd.Series([c.trigger.value for c in history], dtype="string"),
        "reason": pd.Series([c.reason for c in history], dtype="string"),
        "error_code": pd.Series([c.error.code if c.error else None for c in history],
                                dtype="Int64"),
        "previous_lasted_s": pd.Series(durations, dtype="float64").round(3),
        "transport": pd.Series([getattr(c, "transport", None) for c in history],
                               dtype="string"),
    })
    return frame


def utc_ns(values: pd.Series[Any], unit: Literal["s", "ms"]) -> pd.Series[Any]:
    """Epoch numbers as ``datetime64[ns, UTC]`` (pandas may otherwise pick another unit),
    to the millisecond: the clock's nanoseconds are noise and make tables unreadable."""
    return pd.to_datetime(values, unit=unit, utc=True).astype("datetime64[ns, UTC]") \
        .dt.floor("ms")


def numeric(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
