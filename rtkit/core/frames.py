"""Wire frames: one frozen dataclass per action, with strict decoding and JSON encoding.

Every frame is a JSON object with an ``action`` (see ``docs/protocol.md``). Decoding never
raises anything but :class:`~rtkit.errors.ProtocolError` (or a subclass) with a documented
code, whatever the input: wrong types, missing fields, unknown actions, binary data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rtkit.core.replies import (
    Ack,
    Attached,
    Authorized,
    Closed,
    Connected,
    Detached,
    Error,
    HistoryResult,
    Messages,
    Nack,
    PresenceEvent,
    PresenceResult,
)
from rtkit.core.wire import (
    CLIENT_FRAME_DEPTH,
    MAX_DEPTH,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_REF_LENGTH,
    PRESENCE_OPS,
    PROTOCOL_VERSION,
    Frame,
    Message,
    PresenceChange,
    PresenceMember,
    PresenceOp,
    Ref,
    _fail,
    _Reader,
    dumps,
    is_json_value,
    loads,
    nbytes,
    parse_json,
    validate,
    validate_channel_name,
)
from rtkit.errors import ProtocolError

__all__ = [
    "CLIENT_FRAME_DEPTH",
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_REF_LENGTH",
    "PRESENCE_OPS",
    "PROTOCOL_VERSION",
    "Ack",
    "Attached",
    "Authorized",
    "Closed",
    "Connected",
    "Detached",
    "Error",
    "Frame",
    "HistoryResult",
    "Message",
    "Messages",
    "Nack",
    "PresenceChange",
    "PresenceEvent",
    "PresenceMember",
    "PresenceOp",
    "PresenceResult",
    "Ref",
    "dumps",
    "is_json_value",
    "loads",
    "nbytes",
    "parse_json",
    "validate",
    "validate_channel_name",
]


# ---------------------------------------------------------------- client -> broker


@dataclass(frozen=True, slots=True)
class Connect(Frame):
    ACTION: ClassVar[str] = "connect"
    ref: Ref | None = None
    protocol: int = PROTOCOL_VERSION
    key: str | None = None
    token: str | None = None
    client_id: str | None = None
    #: The connection_key of an earlier connection to resume (within connection_state_ttl).
    resume: str | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Connect:
        return cls(
            ref=r.ref(),
            protocol=r.opt_integer("protocol", 1) or PROTOCOL_VERSION,
            key=r.opt_text("key", 512, 1),
            token=r.opt_text("token", 8192, 1),
            client_id=r.opt_text("client_id", MAX_ID_LENGTH, 1),
            resume=r.opt_text("resume", 512, 1),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat(Frame):
    """Sent by either side. A heartbeat with a ``ref`` asks the peer to echo it back."""

    ACTION: ClassVar[str] = "heartbeat"
    ref: Ref | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Heartbeat:
        return cls(ref=r.ref())


@dataclass(frozen=True, slots=True)
class Attach(Frame):
    ACTION: ClassVar[str] = "attach"
    ref: Ref | None = None
    channel: str = ""
    rewind: int | None = None
    #: Resume: the last serial the client saw, in the channel ``epoch`` it saw it in.
    from_serial: int | None = None
    epoch: str | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Attach:
        return cls(
            ref=r.ref(),
            channel=r.channel(),
            rewind=r.opt_integer("rewind"),
            from_serial=r.opt_integer("from_serial"),
            epoch=r.opt_text("epoch", 64),
        )


@dataclass(frozen=True, slots=True)
class Detach(Frame):
    ACTION: ClassVar[str] = "detach"
    ref: Ref | None = None
    channel: str = ""

    @classmethod
    def parse(cls, r: _Reader) -> Detach:
        return cls(ref=r.ref(), channel=r.channel())


@dataclass(frozen=True, slots=True)
class Publish(Frame):
    """Publish one message. ``id`` is optional: when given, republishing it is idempotent."""

    ACTION: ClassVar[str] = "publish"
    ref: Ref | None = None
    channel: str = ""
    name: str = ""
    data: Any = None
    id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out = Frame.to_wire(self)
        out["data"] = self.data  # keep an explicit null / false / 0
        out["name"] = self.name
        return out

    @classmethod
    def parse(cls, r: _Reader) -> Publish:
        return cls(
            ref=r.ref(),
            channel=r.channel(),
            name=r.text("name", MAX_NAME_LENGTH),
            data=r.obj.get("data"),
            id=r.opt_text("id", MAX_ID_LENGTH, 1),
        )


@dataclass(frozen=True, slots=True)
class History(Frame):
    """Ask for up to ``limit`` stored messages, oldest first, optionally before a serial."""

    ACTION: ClassVar[str] = "history"
    ref: Ref | None = None
    channel: str = ""
    limit: int | None = None
    before: int | None = None
    after: int | None = None

    @classmethod
    def parse(cls, r: _Reader) -> History:
        return cls(
            ref=r.ref(),
            channel=r.channel(),
            limit=r.opt_integer("limit", 1),
            before=r.opt_integer("before", 1),
            after=r.opt_integer("after", 0),
        )


@dataclass(frozen=True, slots=True)
class Presence(Frame):
    ACTION: ClassVar[str] = "presence"
    ref: Ref | None = None
    channel: str = ""
    op: PresenceOp = "get"
    data: Any = None

    @classmethod
    def parse(cls, r: _Reader) -> Presence:
        op = r.text("op")
        if op not in PRESENCE_OPS:
            raise _fail(r.action, "op", "one of " + ", ".join(PRESENCE_OPS))
        return cls(ref=r.ref(), channel=r.channel(), op=op, data=r.obj.get("data"))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Auth(Frame):
    """Present a renewed token on a live connection."""

    ACTION: ClassVar[str] = "auth"
    ref: Ref | None = None
    token: str = ""

    @classmethod
    def parse(cls, r: _Reader) -> Auth:
        return cls(ref=r.ref(), token=r.text("token", 8192, 1))


@dataclass(frozen=True, slots=True)
class Close(Frame):
    ACTION: ClassVar[str] = "close"
    ref: Ref | None = None

    @classmethod
    def parse(cls, r: _Reader) -> Close:
        return cls(ref=r.ref())


CLIENT_FRAMES: dict[str, type[Frame]] = {
    cls.ACTION: cls
    for cls in (Connect, Heartbeat, Attach, Detach, Publish, History, Presence, Auth, Close)
}
SERVER_FRAMES: dict[str, type[Frame]] = {
    cls.ACTION: cls
    for cls in (
        Connected, Heartbeat, Attached, Detached, Ack, Nack, Messages, HistoryResult,
        PresenceResult, PresenceEvent, Authorized, Error, Closed,
    )
}


def decode(text: str | bytes, table: dict[str, type[Frame]]) -> Frame:
    """Decode one frame using ``table`` (:data:`CLIENT_FRAMES` or :data:`SERVER_FRAMES`).

    Client frames may nest one level less than broker frames (see :data:`MAX_DEPTH`)."""
    if table is CLIENT_FRAMES:
        return decode_object(loads(text, CLIENT_FRAME_DEPTH), table)
    return decode_object(loads(text), table)


def decode_object(obj: dict[str, Any], table: dict[str, type[Frame]]) -> Frame:
    """Decode an already parsed JSON object (see :func:`loads`)."""
    action = obj.get("action")
    if not isinstance(action, str):
        raise ProtocolError("missing or non-string 'action'", code=40002)
    cls = table.get(action)
    if cls is None:
        raise ProtocolError(f"unknown action {action[:64]!r}", code=40002)
    return cls.parse(_Reader(obj, action))


def decode_client_frame(text: str | bytes) -> Frame:
    """Decode a frame sent by a client (as the broker does)."""
    return decode(text, CLIENT_FRAMES)


def decode_server_frame(text: str | bytes) -> Frame:
    """Decode a frame sent by the broker (as a client does)."""
    return decode(text, SERVER_FRAMES)


def encode(frame: Frame) -> str:
    """Encode a frame as the text of one WebSocket message."""
    return dumps(frame.to_wire())
