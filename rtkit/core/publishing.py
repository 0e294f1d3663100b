"""Publishing for a client core, sans I/O: checks, the outbox, paced sends, acks and nacks.

A publish is checked and encoded when it is made, queued in the :class:`Outbox` (bounded in
bytes), sent in order as the link and the pacing allow, and answered by an ``ack`` (done) or
a ``nack`` (failed; a rate-limit nack is sent again instead). A publish that was sent but
never acked fails, if it must, as :class:`~rtkit.RequestTimeout`: it may have been published.
"""

from __future__ import annotations

from typing import Any

from rtkit.core import frames as fr
from rtkit.core.client_events import Output, PublishResult, Send
from rtkit.core.outbox import Outbox
from rtkit.core.requests import Requests
from rtkit.core.wire import depth_exceeds
from rtkit.errors import LimitExceeded, ProtocolError, RequestTimeout, RtkitError


def encode_data(name: object, data: Any, max_size: int | None) -> str:
    """``data`` as JSON, after the checks a broker would make (raises typed errors)."""
    if not isinstance(name, str) or len(name) > fr.MAX_NAME_LENGTH:
        raise ProtocolError(f"the event name must be a string of at most "
                            f"{fr.MAX_NAME_LENGTH} characters", code=40003)
    try:
        data_json = fr.dumps(data)
        size = len(data_json.encode()) + len(name.encode())
    except UnicodeEncodeError:
        raise ProtocolError("data or name is not valid UTF-8 (a lone surrogate?)",
                            code=40001) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"data is not JSON: {exc}", code=40003) from None
    if max_size is not None and size > max_size:
        raise LimitExceeded(f"message is {size} bytes; the limit is {max_size}", code=42901)
    if (data_json.count("[") + data_json.count("{") > fr.MAX_DEPTH
            and depth_exceeds(data, fr.MAX_DEPTH)):
        raise ProtocolError(f"data is nested more than {fr.MAX_DEPTH} levels deep",
                            code=40011)
    return data_json


class Publishing:
    """The outbox and what moves it."""

    def __init__(self, outbox: Outbox, requests: Requests, out: list[Output]) -> None:
        self.outbox = outbox
        self.requests = requests
        self.out = out
        #: When the pacing allows the next send (None: nothing waits for it).
        self.flush_at: float | None = None

    def publish(self, channel: str, name: str, data: Any, msg_id: str, now: float,
                timeout: float | None, max_size: int | None) -> int:
        """Check, encode and queue a publish; returns its operation."""
        fr.validate_channel_name(channel)
        data_json = encode_data(name, data, max_size)
        op = self.requests.new_op()
        self.outbox.add(channel, name, data_json, msg_id, op,
                        None if timeout is None else now + timeout)
        if timeout is not None:
            self.requests.deadline(op, now + timeout)
        return op

    def flush(self, now: float) -> None:
        """Send what the pacing allows, in publish order (call only while connected)."""
        box = self.outbox
        for entry in box.take_sendable(now):
            ref = self.requests.new_ref()
            box.mark_sent(entry, ref)
            self.out.append(Send(entry.frame(ref)))
        self.flush_at = box.next_send_at(now)

    def ack(self, f: fr.Ack) -> bool:
        entry = self.outbox.by_ref(f.ref) if f.ref is not None else None
        if entry is None:
            return False
        self.outbox.remove(entry)
        self.requests.done(entry.op, PublishResult(f.id, f.serial, f.timestamp, f.duplicate))
        return True

    def nack(self, ref: fr.Ref, error: RtkitError, now: float) -> bool:
        entry = self.outbox.by_ref(ref)
        if entry is None:
            return False
        if error.code == 42900:  # over the broker's rate: keep it, send it again shortly
            self.outbox.retry(entry)
            self.flush_at = now + 0.2
            return True
        self.outbox.remove(entry)
        self.requests.failed(entry.op, error)
        return True

    def fail(self, error: RtkitError, unsent_only: bool = False) -> None:
        """Fail queued publishes: those never sent with ``error``; those sent without an
        ack with :class:`RequestTimeout`, since the broker may have published them."""
        for entry in self.outbox.take_all(unsent_only):
            if entry.sends:
                self.requests.failed(entry.op, RequestTimeout(
                    f"{error.message}: no ack for {entry.id!r} (it may have been published)"))
            else:
                self.requests.failed(entry.op, error)

    def expire(self, op: int) -> RtkitError | None:
        """``op`` timed out: if it is a publish, forget it and say why it failed."""
        entry = self.outbox.by_op(op)
        if entry is None:
            return None
        self.outbox.remove(entry)
        return RequestTimeout(f"no ack for {entry.id!r} in time (it may still have been "
                              f"published)")
