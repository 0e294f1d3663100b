"""Server-Sent Events, sans I/O: an incremental parser (bytes in, events out) and an encoder.

The parser follows the WHATWG "event stream interpretation" rules: UTF-8, one leading BOM
ignored, lines ended by CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of
the next are one line ending), ``field: value`` lines with one optional space after the colon,
``data`` lines joined with LF, an event dispatched on an empty line, ``id`` values containing
NUL ignored, ``retry`` taken only when all ASCII digits, lines starting with ``:`` are
comments, and an unfinished event at the end of the stream is dropped. Chunks may split the
stream anywhere: feeding it in one piece or byte by byte gives the same items.

Memory is bounded: a line longer than ``max_line`` bytes, or an event whose data is longer
than ``max_event`` bytes, is skipped (the whole event with it) and reported as an
:class:`Oversized` item carrying its size and its first ``keep`` bytes.

    parser = SSEParser()
    for item in parser.feed(chunk):          # Event | Comment | Retry | Oversized
        ...
    headers["Last-Event-ID"] = parser.last_event_id   # when reconnecting
    parser.reset()                                     # a new response starts
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX = 1024 * 1024
_NEWLINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event. ``event`` is the type (``"message"`` unless the server named
    one); ``id`` is the stream's last event id when the event was dispatched ("" if none)."""

    data: str
    event: str = "message"
    id: str = ""


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line (``: text``), usually a keep-alive. ``text`` has one leading space
    removed."""

    text: str


@dataclass(frozen=True, slots=True)
class Retry:
    """The server asked clients to wait ``milliseconds`` before reconnecting."""

    milliseconds: int


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line (``what="line"``) or an event's data (``what="event"``) over the limit was
    skipped; ``size`` is its length in bytes, ``head`` its first bytes."""

    what: str
    size: int
    head: bytes


Item = Event | Comment | Retry | Oversized


class SSEParser:
    """Turns the bytes of an event stream into :data:`Item` objects, chunk by chunk."""

    __slots__ = ("_data", "_data_size", "_dropped", "_event_skip", "_event_type", "_head",
                 "_id_buffer", "_keep", "_line", "_line_skip", "_oversized", "_skip_lf",
                 "_start", "last_event_id", "max_event", "max_line", "retry")

    def __init__(self, max_line: int = DEFAULT_MAX, max_event: int = DEFAULT_MAX,
                 keep: int = 1024) -> None:
        if max_line < 1 or max_event < 1 or keep < 0:
            raise ValueError("max_line and max_event must be >= 1, keep >= 0")
        self.max_line = max_line
        self.max_event = max_event
        self._keep = keep
        #: The last event id the stream set (send it as ``Last-Event-ID`` to resume).
        self.last_event_id = ""
        #: The reconnection delay the stream asked for, in milliseconds (None: not given).
        self.retry: int | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new stream (a new response): pending bytes and any unfinished event are
        dropped; ``last_event_id`` and ``retry`` are kept, as a browser keeps them."""
        self._start = True  # a BOM may still come
        self._head = b""  # bytes held while deciding whether they are a BOM
        self._skip_lf = False  # the previous chunk ended with CR: drop an LF that follows
        self._line = bytearray()  # an unfinished line
        self._line_skip: int | None = None  # size so far of an oversized line being skipped
        self._oversized: bytes | None = None  # head of the oversized line being skipped
        self._new_event()
        self._id_buffer = self.last_event_id

    def _new_event(self) -> None:
        self._data: list[bytes] = []
        self._data_size = 0
        self._event_type = ""
        self._event_skip: bytes | None = None  # the head of oversized data being skipped
        self._dropped = False  # the event lost an oversized line: drop it silently

    # ---------------------------------------------------------------- input

    def feed(self, data: bytes) -> list[Item]:
        """Parse the next chunk of the stream; returns the items it completed."""
        if self._start:
            data = self._head + data
            if len(data) < len(BOM) and BOM.startswith(data):
                self._head = data
                return []
            self._start, self._head = False, b""
            if data.startswith(BOM):
                data = data[len(BOM):]
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        out: list[Item] = []
        if not data:
            return out
        lines = data.splitlines(keepends=True)  # bytes split on CR, LF and CRLF only
        last = lines[-1]
        if last[-1:] == b"\r":
            self._skip_lf = True
        complete = last[-1:] in (b"\r", b"\n")
        if not complete:
            lines.pop()
        for line in lines:
            self._end_line(line.rstrip(b"\r\n"), out)
        if not complete:
            self._partial(last)
        return out

    def _partial(self, part: bytes) -> None:
        """Hold an unfinished line (or count it, when it is already too long)."""
        if self._line_skip is not None:
            self._line_skip += len(part)
            return
        self._line += part
        if len(self._line) > self.max_line:
            self._line_skip = len(self._line)
            self._oversized = bytes(self._line[: self._keep])
            self._line = bytearray()

    def _end_line(self, line: bytes, out: list[Item]) -> None:
        if self._line_skip is not None:
            out.append(Oversized("line", self._line_skip + len(line), self._oversized or b""))
            self._line_skip, self._oversized = None, None
            self._drop_event()
            return
        if self._line:
            self._line += line
            line = bytes(self._line)
            self._line = bytearray()
        if len(line) > self.max_line:
            out.append(Oversized("line", len(line), line[: self._keep]))
            self._drop_event()
            return
        self._process(line, out)

    def _drop_event(self) -> None:
        """The current event lost a line: drop it rather than deliver it mangled (the line
        was reported; the event is not reported again)."""
        self._dropped = True
        self._data = []

    def _process(self, line: bytes, out: list[Item]) -> None:
        if not line:
            self._dispatch(out)
            return
        colon = line.find(b":")
        if colon == 0:
            text = line[1:]
            out.append(Comment(_text(text[1:] if text[:1] == b" " else text)))
            return
        if colon < 0:
            field, value = line, b""
        else:
            field, value = line[:colon], line[colon + 1:]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            self._data_size += len(value) + 1
            if self._dropped or self._event_skip is not None:
                pass
            elif self._data_size - 1 > self.max_event:
                self._event_skip = b"\n".join([*self._data, value])[: self._keep]
                self._data = []
            else:
                self._data.append(value)
        elif field == b"event":
            self._event_type = _text(value)
        elif field == b"id":
            if b"\0" not in value:
                self._id_buffer = _text(value)
        elif field == b"retry" and value.isdigit():  # ASCII digits only, for bytes
            self.retry = int(value)
            out.append(Retry(self.retry))
        # any other field is ignored, as the standard says

    def _dispatch(self, out: list[Item]) -> None:
        self.last_event_id = self._id_buffer
        if self._dropped:
            pass
        elif self._event_skip is not None:
            out.append(Oversized("event", self._data_size - 1, self._event_skip))
        elif self._data_size:
            out.append(Event(_text(b"\n".join(self._data)), self._event_type or "message",
                             self.last_event_id))
        self._new_event()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


# -------------------------------------------------------------------- encoding


def encode(data: str | None = None, *, event: str | None = None, id: str | None = None,
           retry: int | None = None) -> bytes:
    """One event as bytes: ``retry``, ``id``, ``event`` and one ``data`` line per line of
    ``data`` (CRLF, CR and LF all split lines), then the empty line that dispatches it.

    ``data=None`` with an ``id`` only moves the stream's last event id. Raises
    :class:`ValueError` for an ``event`` or ``id`` with a line break (or NUL, for ``id``).
    """
    parts: list[str] = []
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError("retry must be a non-negative integer (milliseconds)")
        parts.append(f"retry: {retry}\n")
    if id is not None:
        if "\r" in id or "\n" in id or "\0" in id:
            raise ValueError("an event id cannot contain CR, LF or NUL")
        parts.append(f"id: {id}\n")
    if event is not None:
        if "\r" in event or "\n" in event:
            raise ValueError("an event type cannot contain CR or LF")
        parts.append(f"event: {event}\n")
    if data is not None:
        parts.extend(f"data: {line}\n" for line in _NEWLINE.split(data))
    parts.append("\n")
    return "".join(parts).encode()


def encode_comment(text: str = "") -> bytes:
    """A comment (one ``:`` line per line of ``text``): a keep-alive clients ignore."""
    return "".join(f": {line}\n" if line else ":\n"
                   for line in _NEWLINE.split(text)).encode()


def padding(size: int = 2048) -> bytes:
    """A comment of ``size`` bytes: some proxies buffer a stream until they have seen ~2 KB."""
    if size < 2:
        raise ValueError("padding needs at least 2 bytes")
    return b":" + b" " * (size - 2) + b"\n"
