"""The frames the broker sends (replies and deliveries): one frozen dataclass per action."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rtkit.core.wire import (
    MAX_ID_LENGTH,
    Frame,
    Message,
    PresenceChange,
    PresenceMember,
    Ref,
    _fail,
    _Reader,
)
from rtkit.errors import RtkitError


@dataclass(frozen=True, slots=True)
class Connected(Frame):
    ACTION: ClassVar[str] = "connected"
    ref: Ref | None = None
    connection_id: str = ""
    connection_key: str = ""
    client_id: str | None = None
    heartbeat_interval: int = 15000
    connection_state_ttl: int = 120000
    server_time: int = 0
    token_expires: int | None = None
    limits: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    #: Why a requested resume was refused (40401): the client lost continuity.
    error: RtkitError | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Connected:
        limits = r.opt_dict("limits") or {}
        return cls(
            ref=r.ref(),
            connection_id=r.text("connection_id", MAX_ID_LENGTH, 1),
            connection_key=r.text("connection_key", 512, 1),
            client_id=r.opt_text("client_id", MAX_ID_LENGTH),
            heartbeat_interval=r.integer("heartbeat_interval", 1),
            connection_state_ttl=r.integer("connection_state_ttl", 0),
            server_time=r.integer("server_time"),
            token_expires=r.opt_integer("token_expires"),
            limits={k: v for k, v in limits.items() if isinstance(v, int)},
            resumed=r.opt_bool("resumed"),
            error=r.error() if r.obj.get("error") is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Attached(Frame):
    ACTION: ClassVar[str] = "attached"
    ref: Ref | None = None
    channel: str = ""
    serial: int = 0
    epoch: str = ""
    #: For a resume: true when the missed messages could not all be replayed.
    lost: bool = False
    #: The first serial that could not be recovered (absent when unknown, e.g. new epoch).
    lost_from: int | None = None
    #: The last serial that could not be recovered (absent when unknown).
    lost_to: int | None = None

    def to_wire(self) -> dict[str, Any]:
        out = Frame.to_wire(self)
        out["serial"] = self.serial
        return out

    @classmethod
    def parse(cls, r: _Reader) -> Attached:
        return cls(
            ref=r.ref(), channel=r.channel(), serial=r.integer("serial"), epoch=r.text("epoch"),
            lost=r.opt_bool("lost"), lost_from=r.opt_integer("lost_from", 1),
            lost_to=r.opt_integer("lost_to", 1),
        )


@dataclass(frozen=True, slots=True)
class Detached(Frame):
    ACTION: ClassVar[str] = "detached"
    ref: Ref | None = None
    channel: str = ""
    error: RtkitError | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Detached:
        err = r.error() if r.obj.get("error") is not None else None
        return cls(ref=r.ref(), channel=r.channel(), error=err)


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    ACTION: ClassVar[str] = "ack"
    ref: Ref | None = None
    channel: str = ""
    id: str = ""
    serial: int = 0
    timestamp: int = 0
    duplicate: bool = False

    @classmethod
    def parse(cls, r: _Reader) -> Ack:
        return cls(
            ref=r.ref(),
            channel=r.channel(),
            id=r.text("id", MAX_ID_LENGTH, 1),
            serial=r.integer("serial", 1),
            timestamp=r.integer("timestamp"),
            duplicate=r.opt_bool("duplicate"),
        )


@dataclass(frozen=True, slots=True)
class Nack(Frame):
    ACTION: ClassVar[str] = "nack"
    ref: Ref | None = None
    error: RtkitError | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Nack:
        return cls(ref=r.ref(), error=r.error())


@dataclass(frozen=True, slots=True)
class Messages(Frame):
    """One or more messages of one channel, in serial order."""

    ACTION: ClassVar[str] = "message"
    channel: str = ""
    messages: tuple[Message, ...] = ()

    @classmethod
    def parse(cls, r: _Reader) -> Messages:
        channel = r.channel()
        items = r.array("messages")
        return cls(channel=channel, messages=tuple(Message.from_wire(m, channel) for m in items))


@dataclass(frozen=True, slots=True)
class HistoryResult(Frame):
    """Stored messages, oldest first. A long answer comes as several frames with the same
    ``ref``: every one but the last has ``more: true``."""

    ACTION: ClassVar[str] = "history_result"
    ref: Ref | None = None
    channel: str = ""
    messages: tuple[Message, ...] = ()
    more: bool = False

    @classmethod
    def parse(cls, r: _Reader) -> HistoryResult:
        channel = r.channel()
        items = r.array("messages")
        msgs = tuple(Message.from_wire(m, channel, r.action) for m in items)
        return cls(ref=r.ref(), channel=channel, messages=msgs, more=r.opt_bool("more"))


@dataclass(frozen=True, slots=True)
class PresenceResult(Frame):
    """The members of a channel; like ``history_result``, split over several frames with
    ``more: true`` on all but the last when they do not fit in one."""

    ACTION: ClassVar[str] = "presence_result"
    ref: Ref | None = None
    channel: str = ""
    members: tuple[PresenceMember, ...] = ()
    more: bool = False

    @classmethod
    def parse(cls, r: _Reader) -> PresenceResult:
        members = tuple(PresenceMember.from_wire(m, r.action) for m in r.array("members"))
        return cls(ref=r.ref(), channel=r.channel(), members=members, more=r.opt_bool("more"))


@dataclass(frozen=True, slots=True)
class PresenceEvent(Frame):
    ACTION: ClassVar[str] = "presence_event"
    channel: str = ""
    changes: tuple[PresenceChange, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        events = [{"type": c.type, **c.member.to_wire()} for c in self.changes]
        return {"action": self.ACTION, "channel": self.channel, "events": events}

    @classmethod
    def parse(cls, r: _Reader) -> PresenceEvent:
        changes = []
        for item in r.array("events"):
            member = PresenceMember.from_wire(item, r.action)
            kind = item.get("type")
            if kind not in ("enter", "update", "leave"):
                raise _fail(r.action, "type", "enter, update or leave")
            changes.append(PresenceChange(type=kind, member=member))
        return cls(channel=r.channel(), changes=tuple(changes))


@dataclass(frozen=True, slots=True)
class Authorized(Frame):
    ACTION: ClassVar[str] = "authorized"
    ref: Ref | None = None
    client_id: str | None = None
    token_expires: int | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Authorized:
        return cls(
            ref=r.ref(),
            client_id=r.opt_text("client_id", MAX_ID_LENGTH),
            token_expires=r.opt_integer("token_expires"),
        )


@dataclass(frozen=True, slots=True)
class Error(Frame):
    """An error. With a ``ref`` it answers that request; with ``fatal`` the broker closes."""

    ACTION: ClassVar[str] = "error"
    ref: Ref | None = None
    error: RtkitError | None = None
    fatal: bool = False

    @classmethod
    def parse(cls, r: _Reader) -> Error:
        return cls(ref=r.ref(), error=r.error(), fatal=r.opt_bool("fatal"))


@dataclass(frozen=True, slots=True)
class Closed(Frame):
    ACTION: ClassVar[str] = "closed"
    ref: Ref | None = None
    error: RtkitError | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Closed:
        err = r.error() if r.obj.get("error") is not None else None
        return cls(ref=r.ref(), error=err)
