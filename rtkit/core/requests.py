"""Requests of a client core, sans I/O: refs on the wire, operation numbers, deadlines, and
operations waiting for a connection.

An *operation* is something the application started and awaits (a publish, an attach, a
history query); its outcome is an ``OpDone`` or ``OpFailed`` event. A *request* is a frame
sent with a ``ref``, waiting for the broker's reply; internal requests (heartbeats, re-entering
presence) have no operation.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtkit.core import frames as fr
from rtkit.core.client_events import OpDone, OpFailed, Output, Send
from rtkit.errors import RtkitError

#: Requests whose operation fails with the link (the others are retried or moot).
FAIL_WITH_LINK = frozenset({"history", "presence", "ping"})


@dataclass(slots=True)
class Pending:
    """A request on the wire, waiting for its reply."""

    kind: str  # connect, attach, detach, history, presence, ping, auth, close
    op: int | None = None
    channel: str | None = None
    sent: float = 0.0
    extra: Any = None
    #: The frames of an answer that comes in several (``more: true``) so far.
    parts: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Waiting:
    """An operation that needs a live connection and waits for one."""

    op: int
    frame: type[fr.Frame]
    fields: dict[str, Any]
    kind: str
    channel: str | None = None
    extra: Any = None


class Requests:
    """Refs, operations and their deadlines. ``out`` is the core's output list."""

    def __init__(self, out: list[Output], on_send: Callable[[], None] | None = None) -> None:
        self.out = out
        self._on_send = on_send  # every request frame counts against the broker's rate
        self.pending: dict[fr.Ref, Pending] = {}
        self.waiting: dict[int, Waiting] = {}
        self._refs = itertools.count(1)
        self._ops = itertools.count(1)
        self._heap: list[tuple[float, int]] = []  # (deadline, op), lazily deleted
        self._deadline: dict[int, float] = {}

    def new_op(self) -> int:
        return next(self._ops)

    def new_ref(self) -> int:
        return next(self._refs)

    # ---------------------------------------------------------------- on the wire

    def send(self, frame_type: type[fr.Frame], pending: Pending, **fields: Any) -> fr.Ref:
        """Send a request frame with a new ref and remember it."""
        ref = next(self._refs)
        self.pending[ref] = pending
        self.out.append(Send(fr.encode(frame_type(ref=ref, **fields))))  # type: ignore[call-arg]
        if self._on_send is not None:
            self._on_send()
        return ref

    def pop(self, ref: fr.Ref | None) -> Pending | None:
        return self.pending.pop(ref, None) if ref is not None else None

    def holds(self, ref: fr.Ref | None) -> bool:
        return ref is not None and ref in self.pending

    def link_lost(self, err: RtkitError) -> None:
        """The link is gone: no reply will come to any request on it."""
        pending, self.pending = self.pending, {}
        for p in pending.values():
            if p.kind in FAIL_WITH_LINK:
                self.failed(p.op, err)

    def fail_all(self, err: RtkitError, keep: str = "close") -> None:
        for ref, p in list(self.pending.items()):
            if p.kind != keep:
                del self.pending[ref]
                self.failed(p.op, err)
        self.fail_waiting(err)

    def trim_pings(self, keep: int = 8) -> None:
        """Heartbeat replies that never came: stop waiting for all but the last few."""
        pings = [r for r, p in self.pending.items() if p.kind == "ping" and p.op is None]
        for ref in pings[:-keep]:
            del self.pending[ref]

    # ---------------------------------------------------------------- waiting for a link

    def later(self, waiting: Waiting) -> None:
        self.waiting[waiting.op] = waiting

    def send_waiting(self, now: float) -> None:
        waiting, self.waiting = self.waiting, {}
        for w in waiting.values():
            self.send(w.frame, Pending(w.kind, w.op, w.channel, now, w.extra), **w.fields)

    def fail_waiting(self, err: RtkitError) -> None:
        waiting, self.waiting = self.waiting, {}
        for w in waiting.values():
            self.failed(w.op, err)

    # ---------------------------------------------------------------- outcomes

    def deadline(self, op: int, at: float) -> None:
        self._deadline[op] = at
        heapq.heappush(self._heap, (at, op))

    def done(self, op: int | None, value: Any = None) -> None:
        if op is not None:
            self._deadline.pop(op, None)
            self.out.append(OpDone(op, value))

    def failed(self, op: int | None, error: RtkitError) -> None:
        if op is not None:
            self._deadline.pop(op, None)
            self.out.append(OpFailed(op, error))

    def forget(self, op: int) -> None:
        """Stop tracking ``op`` (it expired): drop its request or its wait."""
        self.waiting.pop(op, None)
        for ref, p in list(self.pending.items()):
            if p.op == op:
                del self.pending[ref]

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._deadline.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expired(self, now: float) -> list[int]:
        """Operations whose deadline has passed (each reported once)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, op = heapq.heappop(heap)
            if self._deadline.get(op) == at:
                del self._deadline[op]
                out.append(op)
        return out
