"""What a client core does with each frame the broker sends, sans I/O.

Frames are decoded by :mod:`rtkit.core.server_codec` (msgspec, typed); a ``message`` frame
goes straight to its channel as one batch. A frame the codec refuses is decoded again the
general way: if it is a ``message`` frame, each message in it is decoded on its own, so one
bad item does not lose the others. Replies are matched to their request by ``ref``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtkit.core import frames as fr
from rtkit.core.client_events import AbortLink, CloseLink, Measured, PresenceChanged, Problem
from rtkit.core.server_codec import MessageFrame, decode_frame, messages_of
from rtkit.errors import ConnectionClosed, ProtocolError, TokenExpired

if TYPE_CHECKING:
    from rtkit.core.client import ClientCore


class Input:
    """Frames from the broker, for one :class:`~rtkit.core.client.ClientCore`."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core

    def receive(self, text: str | bytes, now: float) -> None:
        try:
            frame = decode_frame(text)
        except ProtocolError:
            self._receive_bad(text, now)
            return
        if type(frame) is MessageFrame:
            ch = self.core.channels.get(frame.channel)
            if ch is not None:
                ch.deliver(messages_of(frame), now)
                if ch.repairing and ch.inflight is None:
                    self.core.reconcile(now, ch)
            return
        assert isinstance(frame, fr.Frame)
        self._dispatch(frame, now)

    def _receive_bad(self, text: str | bytes, now: float) -> None:
        """A frame the codec refused: a ``message`` frame may still hold good messages."""
        try:
            obj = fr.loads(text)
            if obj.get("action") == "message":
                self._messages(obj, now)
                return
            frame = fr.decode_object(obj, fr.SERVER_FRAMES)
        except ProtocolError as exc:
            self.core.stats["malformed"] += 1
            shown = text if isinstance(text, str) else repr(text)
            self.core.out.append(Problem(exc, f"ignored a malformed frame from the broker: "
                                              f"{shown[:200]}"))
            return
        self._dispatch(frame, now)

    def _messages(self, obj: dict[str, Any], now: float) -> None:
        """A ``message`` frame. An undecodable message is reported; if its serial is the
        next one due it is declared lost, so the others still flow."""
        core = self.core
        channel = obj.get("channel")
        items = obj.get("messages")
        if not isinstance(channel, str) or not isinstance(items, list):
            raise ProtocolError("message: needs 'channel' and 'messages'", code=40003)
        ch = core.channels.get(channel)
        if ch is None:
            return
        from_wire = fr.Message.from_wire
        good: list[fr.Message] = []
        for item in items:
            try:
                good.append(from_wire(item, channel))
            except ProtocolError as exc:
                core.stats["malformed"] += 1
                serial = item.get("serial") if isinstance(item, dict) else None
                core.out.append(Problem(exc, f"undecodable message on {channel}"))
                if isinstance(serial, int) and not isinstance(serial, bool):
                    ch.deliver(good, now)
                    good = []
                    if serial == ch.tracker.serial + 1 and ch.state.value == "attached" \
                            and not ch.repairing:
                        ch.skip(serial, "a message could not be decoded", now)
        ch.deliver(good, now)
        if ch.repairing and ch.inflight is None:
            core.reconcile(now, ch)

    def _dispatch(self, f: fr.Frame, now: float) -> None:
        core = self.core
        ref = getattr(f, "ref", None)
        if isinstance(f, fr.Ack):
            core.publishing.ack(f)
        elif isinstance(f, fr.Heartbeat):
            p = core.requests.pop(ref)
            if p is not None:
                core.last_rtt = now - p.sent
                core.out.append(Measured(core.last_rtt))
                core.requests.done(p.op, core.last_rtt)
        elif isinstance(f, fr.PresenceEvent):
            core.out.append(PresenceChanged(f.channel, f.changes))
        elif isinstance(f, fr.Nack):
            if ref is not None and f.error is not None:
                core.publishing.nack(ref, f.error, now)
        elif isinstance(f, fr.Error):
            self._error(f, now)
        elif isinstance(f, fr.Detached) and ref is None:  # the broker's own decision
            ch = core.channels.get(f.channel)
            if ch is not None:
                ch.on_detached(f.error, solicited=False)
                core.connection.resume_done(ch.name, now)
            if f.error is not None:
                core.out.append(Problem(f.error, f"the broker detached {f.channel}"))
        elif isinstance(f, fr.Closed):
            core.connection.close_error = f.error or ConnectionClosed("closed by the broker")
            if core.requests.pop(ref) is not None:
                core.out.append(CloseLink(1000, "closed"))
        else:
            self._reply(f, ref, now)

    def _reply(self, f: fr.Frame, ref: fr.Ref | None, now: float) -> None:
        core = self.core
        p = core.requests.pop(ref)
        if p is None or ref is None:
            return  # a late reply to a request we gave up on
        if isinstance(f, fr.Connected):
            core.connection.connected(f, now)
        elif isinstance(f, fr.Attached):
            ch = core.channels.get(f.channel)
            if ch is not None:
                ch.on_attached(f, ref, now)
                core.reconcile(now, ch)
                if ch.inflight is None:
                    core.connection.resume_done(ch.name, now)
        elif isinstance(f, fr.Detached):
            ch = core.channels.get(f.channel)
            if ch is not None:
                ch.on_detached(None, solicited=True)
                core.reconcile(now, ch)
        elif isinstance(f, fr.HistoryResult):
            if f.more:  # a long answer comes in several frames: gather them
                p.parts.extend(f.messages)
                core.requests.pending[ref] = p
                return
            core.requests.done(p.op, [*p.parts, *f.messages])
        elif isinstance(f, fr.PresenceResult):
            if f.more:
                p.parts.extend(f.members)
                core.requests.pending[ref] = p
                return
            ch = core.channels.get(f.channel)
            if ch is not None and p.extra is not None:
                op_name, data = p.extra
                if op_name in ("enter", "update"):
                    ch.entered = (True, data)
                elif op_name == "leave":
                    ch.entered = (False, None)
            core.requests.done(p.op, [*p.parts, *f.members])
        elif isinstance(f, fr.Authorized):
            if core.session is not None:
                core.session.token_expires = (None if f.token_expires is None
                                              else f.token_expires / 1000)
            core.renewal.settle(p.extra)

    def _error(self, f: fr.Error, now: float) -> None:
        core = self.core
        err = f.error
        assert err is not None
        p = core.requests.pop(f.ref)
        if f.fatal:
            # The broker closes next: do not wait for it.
            core.connection.close_error = err
            if isinstance(err, TokenExpired):
                core.credentials.reject()
            link = core.link_id
            core.out.append(AbortLink(err))
            core.link_down(link, err, now)
            return
        if p is None or f.ref is None:
            core.out.append(Problem(err, "error from the broker"))
        elif p.kind in ("attach", "detach"):
            ch = core.channels.get(p.channel or "")
            if ch is not None:
                ch.on_refused(f.ref, err, now)
                if ch.state.value == "failed":
                    core.out.append(Problem(err, f"cannot attach {ch.name}"))
                core.connection.resume_done(ch.name, now)
        elif p.kind == "presence" and p.op is None:
            ch = core.channels.get(p.channel or "")
            if ch is not None:
                ch.entered = (False, None)  # cannot re-enter (capability narrowed)
            core.out.append(Problem(err, f"cannot re-enter presence on {p.channel}"))
        elif p.kind == "auth":
            core.token_trouble(err, now)
            if isinstance(err, TokenExpired):
                core.credentials.reject()
                core.credentials.retry_at = None
                core.renewal.fetch("the renewed token had already expired", now)
        else:
            core.requests.failed(p.op, err)
