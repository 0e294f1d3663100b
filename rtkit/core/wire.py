"""Wire primitives shared by every frame: JSON in and out, typed field access, channel
names, and the message and presence objects that frames carry.

Decoding never raises anything but :class:`~rtkit.errors.ProtocolError` with a documented
code. Unknown *fields* are ignored so that newer peers can add optional fields.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from rtkit.errors import ProtocolError, RtkitError, error_from_wire

PROTOCOL_VERSION = 1
Ref = int | str
MAX_REF_LENGTH = 64
MAX_CHANNEL_LENGTH = 256
MAX_NAME_LENGTH = 256
MAX_ID_LENGTH = 128
PRESENCE_OPS = ("enter", "update", "leave", "get")
#: Message and presence data may nest arrays and objects at most this deep (``[[1]]`` is 2).
MAX_DEPTH = 64
#: A frame from a client: its data sits one level down (``{"data": ...}``).
CLIENT_FRAME_DEPTH = MAX_DEPTH + 1
#: A frame from the broker: data sits three levels down (``{"messages": [{"data": ...}]}``),
#: so every frame the broker can build from accepted data decodes within this limit.
SERVER_FRAME_DEPTH = MAX_DEPTH + 3
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
            elif isinstance(value, tuple):  # messages, members: objects with to_wire()
                value = [item.to_wire() for item in value]
            out[f.name] = value
        return out

    @classmethod
    def parse(cls, r: _Reader) -> Frame:
        raise NotImplementedError  # pragma: no cover


# One encoder for the process: json.dumps() with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode_str: Any = getattr(json.encoder, "c_encode_basestring", None) or \
    json.encoder.py_encode_basestring


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON", code=40001)


# A JSON escape of a surrogate not paired with its partner, or a raw surrogate (possible only
# in text built by Python code): such strings are not valid Unicode and cannot be encoded as
# UTF-8, so no client could receive them. A match is confirmed by encoding (see _refuse_...).
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|[\ud800-\udfff]"
)


def parse_json(text: str | bytes) -> dict[str, Any]:
    """Parse one frame's JSON object, without the checks of :func:`validate`."""
    if not isinstance(text, str):
        raise ProtocolError(code=40004)
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:  # RecursionError: too deep for the parser
        raise ProtocolError(f"invalid JSON: {exc}", code=40001) from None
    if not isinstance(obj, dict):
        raise ProtocolError("a frame must be a JSON object", code=40000)
    return obj


def validate(obj: dict[str, Any], text: str, max_depth: int = SERVER_FRAME_DEPTH) -> None:
    """Refuse what some client could not encode or decode: strings that are not valid Unicode
    (lone surrogates, ``40001``) and nesting deeper than ``max_depth`` (``40011``).

    Both checks look at the raw text first (C-speed scans) and walk the object only when the
    text could hold a problem, so ordinary frames pay almost nothing.
    """
    if _LONE_SURROGATE.search(text) is not None:
        try:
            dumps(obj).encode()
        except UnicodeEncodeError:
            raise ProtocolError("invalid JSON: a string holds a lone UTF-16 surrogate",
                                code=40001) from None
    if text.count("[") + text.count("{") > max_depth and depth_exceeds(obj, max_depth):
        raise ProtocolError(f"nested more than {max_depth} levels", code=40011)


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects more than ``limit`` levels (iterative)."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > limit:
            return True
        for child in (node.values() if type(node) is dict else node):
            if type(child) is dict or type(child) is list:
                stack.append((child, level + 1))
    return False


def loads(text: str | bytes, max_depth: int = SERVER_FRAME_DEPTH) -> dict[str, Any]:
    """Parse and check one frame's JSON object: strict (no NaN/Infinity, text frames only,
    valid Unicode) and nested at most ``max_depth`` levels."""
    obj = parse_json(text)
    validate(obj, text, max_depth)  # type: ignore[arg-type]
    return obj


def nbytes(text: str) -> int:
    """The UTF-8 size of ``text`` (no copy for ASCII)."""
    return len(text) if text.isascii() else len(text.encode())


def dumps(obj: Any) -> str:
    """Compact JSON, refusing NaN and Infinity (they are not JSON)."""
    if type(obj) is str:
        return str(_encode_str(obj))
    return _ENCODER.encode(obj)


def is_json_value(value: Any) -> bool:
    """True when ``value`` can be sent as message data."""
    try:
        dumps(value)
    except (TypeError, ValueError):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))
