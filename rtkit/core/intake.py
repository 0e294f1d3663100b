"""The broker's fast path for the frame it receives most: ``publish``.

:func:`fast_publish` decodes a publish frame with msgspec into a typed struct whose ``data``
is the sender's JSON text, passed through untouched (no decode and re-encode of the payload).
It is a pure accelerator: it answers only when its result is certain to be what the full
decoder (:func:`rtkit.core.frames.decode_client_frame`) would accept, and ``None`` otherwise
(another action, a field out of range, any doubt at all). The caller then uses the full
decoder, which gives the exact, documented error. A test checks that both agree.

What can only be decided by looking inside ``data`` sends a frame down the full path: an
escaped lone surrogate (40001), more brackets than the depth limit allows (40011), a number
that may overflow a float (40001: no client could decode it), or a run of digits long enough
to hit Python's integer parsing limit. So does a channel name not yet known to the broker
that fails its check (40007).
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import Annotated

import msgspec

from rtkit.core.wire import (
    _LONE_SURROGATE,
    CLIENT_FRAME_DEPTH,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_REF_LENGTH,
    validate_channel_name,
)
from rtkit.errors import ProtocolError

__all__ = ["FastPublish", "fast_publish", "raw_data"]

_NULL = msgspec.Raw(b"null")
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)]
MsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
RefText = Annotated[str, msgspec.Meta(max_length=MAX_REF_LENGTH)]


class FastPublish(msgspec.Struct, tag_field="action", tag="publish", gc=False):
    """A decoded ``publish`` frame; ``data`` is the payload's JSON text as sent."""

    channel: str
    name: Name
    data: msgspec.Raw = _NULL
    id: MsgId | None = None
    ref: int | RefText | None = None


class _RawData(msgspec.Struct, gc=False):
    data: msgspec.Raw = _NULL


class _Unused(msgspec.Struct, tag_field="action", tag="\x00"):
    """In a union with FastPublish so that decoding requires the tag (a lone tagged struct
    would accept an object without ``action``)."""


_decode = msgspec.json.Decoder(FastPublish | _Unused).decode
# A number whose exponent has three digits (may overflow to infinity), and a digit run as long
# as huge integers or long decimals need: only possible trouble, judged by the full decoder.
_BIG_EXPONENT = re.compile(r"[eE][+-]?[0-9]{3}")
_LONG_DIGITS = re.compile(r"[0-9]{300}")


def fast_publish(text: str, channels: Container[str] = ()) -> tuple[FastPublish, str] | None:
    """The publish frame ``text`` holds and its data's JSON text, or None to use the full
    decoder. ``channels``: names known to be valid (the broker's channels), not checked again.
    """
    if (
        '"publish"' not in text
        # Cheap scans first: each rules out what only a full decode can judge.
        or ("\\u" in text and ("\\ud" in text or "\\uD" in text)
        and _LONE_SURROGATE.search(text) is not None)
        or text.count("[") + text.count("{") > CLIENT_FRAME_DEPTH
    ):
        return None
    try:
        frame = _decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if type(frame) is not FastPublish:
        return None
    if frame.channel not in channels:
        try:
            validate_channel_name(frame.channel)
        except ProtocolError:
            return None
    data = bytes(frame.data).decode()
    if ((("e" in data or "E" in data) and _BIG_EXPONENT.search(data) is not None)
            or (len(data) >= 300 and _LONG_DIGITS.search(data) is not None)):
        return None
    return frame, data


_decode_raw = msgspec.json.Decoder(_RawData).decode


def raw_data(text: str) -> str | None:
    """The ``data`` of a publish frame the full decoder accepted, as sent (None when this
    codec cannot isolate it: the caller then encodes the decoded value)."""
    try:
        return bytes(_decode_raw(text).data).decode()
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
