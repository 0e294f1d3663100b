"""Wire frames: frozen dataclasses, JSON encoding and strict decoding.

Every frame is a JSON object with an ``action``. Decoding never raises anything but
:class:`~rtkit.errors.ProtocolError` (or a subclass) with a documented code, whatever the
input: wrong types, missing fields, unknown actions, invalid UTF-8 or binary data.
Unknown *fields* are ignored so that newer peers can add optional fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from rtkit.errors import ProtocolError, RtkitError, error_from_wire

PROTOCOL_VERSION = 1
Ref = int | str
MAX_REF_LENGTH = 64
MAX_CHANNEL_LENGTH = 256
MAX_NAME_LENGTH = 256
MAX_ID_LENGTH = 128
PRESENCE_OPS = ("enter", "update", "leave", "get")
PresenceOp = Literal["enter", "update", "leave", "get"]


def _fail(action: str, key: str, expected: str) -> ProtocolError:
    return ProtocolError(f"{action}: field {key!r} must be {expected}", code=40003)


class _Reader:
    """Typed access to the fields of one decoded JSON object."""

    __slots__ = ("action", "obj")

    def __init__(self, obj: dict[str, Any], action: str) -> None:
        self.obj = obj
        self.action = action

    def opt_text(self, key: str, max_len: int = 4096, min_len: int = 0) -> str | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not min_len <= len(value) <= max_len:
            raise _fail(self.action, key, f"a string of {min_len} to {max_len} characters")
        return value

    def text(self, key: str, max_len: int = 4096, min_len: int = 0) -> str:
        value = self.opt_text(key, max_len, min_len)
        if value is None:
            raise _fail(self.action, key, "present")
        return value

    def opt_integer(self, key: str, minimum: int = 0) -> int | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise _fail(self.action, key, f"an integer >= {minimum}")
        return value

    def integer(self, key: str, minimum: int = 0) -> int:
        value = self.opt_integer(key, minimum)
        if value is None:
            raise _fail(self.action, key, "present")
        return value

    def opt_bool(self, key: str) -> bool:
        value = self.obj.get(key, False)
        if not isinstance(value, bool):
            raise _fail(self.action, key, "a boolean")
        return value

    def opt_dict(self, key: str) -> dict[str, Any] | None:
        value = self.obj.get(key)
        if value is not None and not isinstance(value, dict):
            raise _fail(self.action, key, "an object")
        return value

    def array(self, key: str) -> list[Any]:
        value = self.obj.get(key)
        if not isinstance(value, list):
            raise _fail(self.action, key, "an array")
        return value

    def ref(self) -> Ref | None:
        value = self.obj.get("ref")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _fail(self.action, "ref", "an integer or a string")
        if isinstance(value, str) and len(value) > MAX_REF_LENGTH:
            raise _fail(self.action, "ref", f"at most {MAX_REF_LENGTH} characters")
        return value

    def channel(self, key: str = "channel") -> str:
        value = self.obj.get(key)
        if not isinstance(value, str):
            raise _fail(self.action, key, "a channel name")
        validate_channel_name(value)
        return value

    def error(self) -> RtkitError:
        return error_from_wire(self.obj.get("error"))


def validate_channel_name(name: object) -> str:
    """Check a channel name: 1-256 printable characters, no whitespace, no ``*``."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_CHANNEL_LENGTH
        or "*" in name
        or not name.isprintable()
        or any(ch.isspace() for ch in name)
    ):
        raise ProtocolError(f"invalid channel name {name!r}", code=40007)
    return name


@dataclass(frozen=True, slots=True)
class Message:
    """One message delivered on a channel.

    ``serial`` is strictly increasing per channel; ``timestamp`` is the broker's time in
    milliseconds since the Unix epoch; ``client_id`` is the publisher's client id (or None).
    """

    id: str
    channel: str
    name: str
    data: Any
    serial: int
    timestamp: int
    client_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The message object as it appears inside a ``message`` frame (no channel)."""
        return {
            "id": self.id,
            "name": self.name,
            "data": self.data,
            "serial": self.serial,
            "timestamp": self.timestamp,
            "client_id": self.client_id,
        }

    @classmethod
    def from_wire(cls, obj: object, channel: str, action: str = "message") -> Message:
        if not isinstance(obj, dict):
            raise _fail(action, "messages", "an array of message objects")
        r = _Reader(obj, action)
        return cls(
            id=r.text("id", MAX_ID_LENGTH, 1),
            channel=channel,
            name=r.text("name", MAX_NAME_LENGTH),
            data=obj.get("data"),
            serial=r.integer("serial", 1),
            timestamp=r.integer("timestamp"),
            client_id=r.opt_text("client_id", MAX_ID_LENGTH),
        )


@dataclass(frozen=True, slots=True)
class PresenceMember:
    """A member present on a channel (one per client id and connection)."""

    client_id: str
    connection_id: str
    data: Any = None
    timestamp: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "connection_id": self.connection_id,
            "data": self.data,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_wire(cls, obj: object, action: str) -> PresenceMember:
        if not isinstance(obj, dict):
            raise _fail(action, "members", "an array of member objects")
        r = _Reader(obj, action)
        return cls(
            client_id=r.text("client_id", MAX_ID_LENGTH),
            connection_id=r.text("connection_id", MAX_ID_LENGTH),
            data=obj.get("data"),
            timestamp=r.integer("timestamp"),
        )


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """One presence event: ``type`` is enter, update or leave."""

    type: Literal["enter", "update", "leave"]
    member: PresenceMember


class Frame:
    """Base of all frames. ``ACTION`` is the wire action name."""

    ACTION: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.ACTION}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or value is False:
                continue
            if isinstance(value, RtkitError):
                value = value.to_wire()
            out[f.name] = value
        return out

    @classmethod
    def parse(cls, r: _Reader) -> Frame:
        raise NotImplementedError  # pragma: no cover


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


# ---------------------------------------------------------------- broker -> client


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

    def to_wire(self) -> dict[str, Any]:
        out = Frame.to_wire(self)
        out["serial"] = self.serial
        return out

    @classmethod
    def parse(cls, r: _Reader) -> Attached:
        return cls(
            ref=r.ref(), channel=r.channel(), serial=r.integer("serial"), epoch=r.text("epoch"),
            lost=r.opt_bool("lost"), lost_from=r.opt_integer("lost_from", 1),
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

    def to_wire(self) -> dict[str, Any]:
        return {
            "action": self.ACTION,
            "channel": self.channel,
            "messages": [m.to_wire() for m in self.messages],
        }

    @classmethod
    def parse(cls, r: _Reader) -> Messages:
        channel = r.channel()
        items = r.array("messages")
        return cls(channel=channel, messages=tuple(Message.from_wire(m, channel) for m in items))


@dataclass(frozen=True, slots=True)
class HistoryResult(Frame):
    ACTION: ClassVar[str] = "history_result"
    ref: Ref | None = None
    channel: str = ""
    messages: tuple[Message, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "action": self.ACTION,
            "ref": self.ref,
            "channel": self.channel,
            "messages": [m.to_wire() for m in self.messages],
        }

    @classmethod
    def parse(cls, r: _Reader) -> HistoryResult:
        channel = r.channel()
        items = r.array("messages")
        msgs = tuple(Message.from_wire(m, channel, r.action) for m in items)
        return cls(ref=r.ref(), channel=channel, messages=msgs)


@dataclass(frozen=True, slots=True)
class PresenceResult(Frame):
    ACTION: ClassVar[str] = "presence_result"
    ref: Ref | None = None
    channel: str = ""
    members: tuple[PresenceMember, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "action": self.ACTION,
            "ref": self.ref,
            "channel": self.channel,
            "members": [m.to_wire() for m in self.members],
        }

    @classmethod
    def parse(cls, r: _Reader) -> PresenceResult:
        members = tuple(PresenceMember.from_wire(m, r.action) for m in r.array("members"))
        return cls(ref=r.ref(), channel=r.channel(), members=members)


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


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON", code=40001)


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse one frame's JSON object (strict: no NaN/Infinity, text frames only)."""
    if not isinstance(text, str):
        raise ProtocolError(code=40004)
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"invalid JSON: {exc}", code=40001) from None
    if not isinstance(obj, dict):
        raise ProtocolError("a frame must be a JSON object", code=40000)
    return obj


def decode(text: str | bytes, table: dict[str, type[Frame]]) -> Frame:
    """Decode one frame using ``table`` (:data:`CLIENT_FRAMES` or :data:`SERVER_FRAMES`)."""
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


# One encoder for the process: json.dumps() with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode_str: Any = getattr(json.encoder, "c_encode_basestring", None) or \
    json.encoder.py_encode_basestring


def dumps(obj: Any) -> str:
    """Compact JSON, refusing NaN and Infinity (they are not JSON)."""
    if type(obj) is str:
        return str(_encode_str(obj))
    return _ENCODER.encode(obj)


def encode(frame: Frame) -> str:
    """Encode a frame as the text of one WebSocket message."""
    return dumps(frame.to_wire())


def is_json_value(value: Any) -> bool:
    """True when ``value`` can be sent as message data."""
    try:
        dumps(value)
    except (TypeError, ValueError):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))
