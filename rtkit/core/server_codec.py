"""Decoding the frames the broker sends, in one msgspec pass, sans I/O.

:func:`decode` accepts and refuses what :func:`rtkit.core.frames.decode_server_frame` does,
with the same content and the same error codes; it is faster for the frames that come in
volume (``message``, ``history_result``, ``ack``, ``heartbeat``). Those are decoded by msgspec
into typed structs: the schema checks every field's type and range in C (strict: no bool
for an int, no float for an int, lengths in characters), message objects are built as
:class:`~rtkit.core.wire.Message` without running Python code per field, and the only
Python work per message is naming its channel.

Anything else takes the general decoder, :func:`~rtkit.core.frames.decode_server_frame`,
which is the reference: another action, an unknown field in a frame (a newer broker), a
value the schema refuses, a channel name to refuse, data that may nest too deeply. It
decides, and names the error with its documented code. So the fast path only has to be as
strict as the reference, never more lenient; ``tests/core/test_server_codec.py`` checks
that both agree on every input.

Depth: data may nest at most :data:`~rtkit.core.wire.MAX_DEPTH` levels. The bracket count
of the text bounds the nesting; the data is walked only when that bound leaves room for
doubt (see :func:`_shallow`).

One difference remains, in what the client ignores: an integer of more than 4,300 digits
inside an unknown field of a message object is skipped here, while the stdlib parser of the
reference refuses the frame.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from rtkit.core import frames as fr
from rtkit.core.wire import (
    MAX_DEPTH,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_REF_LENGTH,
    Message,
    validate_channel_name,
)
from rtkit.errors import ProtocolError

__all__ = ["MessageFrame", "decode", "decode_frame", "messages_of"]

Ref = int | Annotated[str, msgspec.Meta(max_length=MAX_REF_LENGTH)] | None
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)]
OptId = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)] | None
Serial = Annotated[int, msgspec.Meta(ge=1)]
Millis = Annotated[int, msgspec.Meta(ge=0)]


@dataclass
class _WireMessage:
    """A message object as msgspec builds it, with :class:`Message`'s layout: the same
    slots in the same order, ``channel`` included but not a field (the wire gives it once
    per frame). Once its channel is set it *becomes* a :class:`Message` (``__class__``
    assignment, allowed between classes of the same layout): users get the one public type,
    built in C. Every field is required, as the broker always writes them all (a message
    without ``data`` or ``client_id`` takes the general path): a field left to its default
    costs msgspec more than it sets."""

    __slots__ = ("id", "channel", "name", "data", "serial", "timestamp", "client_id")  # noqa: RUF023
    id: Id
    name: Name
    data: Any
    serial: Serial
    timestamp: Millis
    client_id: OptId


if _WireMessage.__slots__ != Message.__slots__:  # pragma: no cover - a guard for editors
    raise ImportError("server_codec._WireMessage must have Message's slots, in order")


class MessageFrame(msgspec.Struct, tag="message", tag_field="action",
                   forbid_unknown_fields=True):
    """A ``message`` frame as :func:`decode_frame` returns it: ``messages`` are
    :class:`Message` objects of ``channel``, in the broker's order."""

    channel: str
    messages: list[_WireMessage]


class _HistoryFrame(msgspec.Struct, tag="history_result", tag_field="action",
                    forbid_unknown_fields=True):
    channel: str
    messages: list[_WireMessage]
    ref: Ref = None
    more: bool = False


class _AckFrame(msgspec.Struct, tag="ack", tag_field="action", forbid_unknown_fields=True):
    channel: str
    id: Id
    serial: Serial
    timestamp: Millis
    ref: Ref = None
    duplicate: bool = False


class _HeartbeatFrame(msgspec.Struct, tag="heartbeat", tag_field="action",
                      forbid_unknown_fields=True):
    ref: Ref = None


_DECODER = msgspec.json.Decoder(MessageFrame | _HistoryFrame | _AckFrame | _HeartbeatFrame)
# msgspec refuses with DecodeError (ValidationError is one); a number the stdlib parser would
# take but msgspec cannot represent is a ValueError; very deep input a RecursionError.
_REFUSED = (msgspec.DecodeError, ValueError, RecursionError)

#: Channel names already checked (a memo of a pure check; cleared when it grows large).
_valid_channels: set[str] = set()
_MAX_REMEMBERED = 4096


def _channel_ok(name: str) -> bool:
    if name in _valid_channels:
        return True
    try:
        validate_channel_name(name)
    except ProtocolError:
        return False
    if len(_valid_channels) >= _MAX_REMEMBERED:
        _valid_channels.clear()
    _valid_channels.add(name)
    return True


def decode_frame(text: str | bytes) -> fr.Frame | MessageFrame:
    """Decode one frame from the broker. ``message`` frames come as a
    :class:`MessageFrame` (no further copy); every other frame as the
    :mod:`rtkit.core.frames` dataclass :func:`decode` returns.

    Raises :class:`~rtkit.errors.ProtocolError` with the documented code, as
    :func:`~rtkit.core.frames.decode_server_frame` does (bytes are a binary frame: 40004).
    """
    if type(text) is not str:
        return fr.decode_server_frame(text)
    try:
        frame: MessageFrame | _HistoryFrame | _AckFrame | _HeartbeatFrame = \
            _DECODER.decode(text)
    except _REFUSED:
        return fr.decode_server_frame(text)  # the reference decides, and names the error
    if type(frame) is MessageFrame:
        if not _channel_ok(frame.channel) or not _shallow(text, frame.channel,
                                                          frame.messages):
            return fr.decode_server_frame(text)
        return frame
    if type(frame) is _HistoryFrame:
        if not _channel_ok(frame.channel) or not _shallow(text, frame.channel,
                                                          frame.messages):
            return fr.decode_server_frame(text)
        return fr.HistoryResult(ref=frame.ref, channel=frame.channel,
                                messages=tuple(_as_messages(frame.messages)),
                                more=frame.more)
    if type(frame) is _AckFrame:
        if not _channel_ok(frame.channel):
            return fr.decode_server_frame(text)
        return fr.Ack(ref=frame.ref, channel=frame.channel, id=frame.id, serial=frame.serial,
                      timestamp=frame.timestamp, duplicate=frame.duplicate)
    assert type(frame) is _HeartbeatFrame
    return fr.Heartbeat(ref=frame.ref)


def messages_of(frame: MessageFrame) -> list[Message]:
    """The messages of a ``message`` frame :func:`decode_frame` returned."""
    return _as_messages(frame.messages)


def _as_messages(messages: list[_WireMessage]) -> list[Message]:
    return messages  # type: ignore[return-value]  # (they became Messages in _shallow)


def decode(text: str | bytes) -> fr.Frame:
    """Decode one frame from the broker: a drop-in for
    :func:`~rtkit.core.frames.decode_server_frame` (``message`` frames as
    :class:`~rtkit.core.frames.Messages`)."""
    frame = decode_frame(text)
    if type(frame) is MessageFrame:
        return fr.Messages(channel=frame.channel, messages=tuple(messages_of(frame)))
    assert isinstance(frame, fr.Frame)
    return frame


_CONTAINERS = (dict, list)
_data = operator.attrgetter("data")


def _shallow(text: str, channel: str, messages: list[_WireMessage]) -> bool:
    """Make ``messages`` :class:`Message` objects of ``channel``, and tell whether nothing in
    their frame nests deeper than the reference allows (:data:`SERVER_FRAME_DEPTH`: data at
    most :data:`MAX_DEPTH` levels); if not, the reference must judge the frame.

    The text's brackets bound the containers in the frame (strings may hold brackets too:
    the bound only gets looser). The frame, its array and each message object are
    containers; a chain of nested containers inside one message's values can use at most
    one message's data as its top, so when the brackets left over leave no room for a chain
    of ``MAX_DEPTH``, nothing is walked. Otherwise each container data is walked, and
    whatever the text holds outside data (ignored fields) is bounded the same way.
    """
    spare = text.count("[") + text.count("{") - 2 - len(messages)  # below message objects
    if spare <= MAX_DEPTH:  # (every frame with messages and few brackets: most of them)
        for msg in messages:
            msg.channel = channel  # type: ignore[attr-defined]  # (a slot, not a field)
            msg.__class__ = Message  # type: ignore[assignment]
        return True
    kinds = list(map(type, map(_data, messages)))
    for msg in messages:
        msg.channel = channel  # type: ignore[attr-defined]
        msg.__class__ = Message  # type: ignore[assignment]
    if spare - kinds.count(dict) - kinds.count(list) < MAX_DEPTH:
        return True
    in_data = 0
    for value in [m.data for m in messages if type(m.data) in _CONTAINERS]:
        size = _containers(value, MAX_DEPTH)
        if size < 0:
            return False
        in_data += size
    return spare - in_data <= MAX_DEPTH


def _containers(value: Any, limit: int) -> int:
    """How many arrays and objects ``value`` holds (itself included), or -1 when it nests
    more than ``limit`` levels."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > limit:
            return -1
        count += 1
        for child in (node.values() if type(node) is dict else node):
            if type(child) is dict or type(child) is list:
                stack.append((child, level + 1))
    return count
