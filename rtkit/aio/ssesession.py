"""Session transports over plain HTTP: the SSE transport of the protocol (:class:`SseSession`)
and the REST event stream of one channel (:class:`ChannelEvents`).

Each is the ``transport`` of a core :class:`~rtkit.core.session.Session`, beside the
WebSocket :class:`~rtkit.aio.conn.Connection`: the broker's flush queues what the core sends
on it (the same text, encoded once for every SSE target of a flush) and writes it once per
flush on its current event-stream connection.

An :class:`SseSession` outlives the HTTP connections it uses. Broker to client: one event
stream at a time (``GET /v1/connect``); when it breaks, the client opens another with the
stream key and ``Last-Event-ID``, and the events it missed are written again from a replay
buffer (bounded by ``max_outbound_buffer``; acknowledged by the client's ``Last-Event-ID`` on
its POSTs). Client to broker: POSTs to ``/v1/send`` of newline-separated frames, handled in
order, a turn at a time like a WebSocket's frames, and idempotent by their ``Rtkit-Seq``.
A session whose stream stays away longer than :meth:`SseSession.reopen_window` ends (the
core parks it: the client resumes it like a dropped WebSocket).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING

from rtkit.aio.conn import EVENTS, FLOOD_PAUSE, SSE, TURN_FRAMES, Connection
from rtkit.core import sse
from rtkit.core.session import Session

if TYPE_CHECKING:
    from rtkit.aio.broker import Broker

log = logging.getLogger("rtkit.broker")

#: Response headers of every event stream: no caching, no buffering by proxies (nginx and
#: others honour X-Accel-Buffering), no compression that would hold bytes back.
STREAM_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache, no-transform"),
    ("X-Accel-Buffering", "no"),
]
#: The comment that opens every stream: some proxies hold a response until ~2 KB have passed.
PADDING = sse.padding(2048)
#: Keep-alive comments are written on a stream quiet for this long at most (or the broker's
#: heartbeat interval, if shorter): idle HTTP connections are cut by many proxies.
KEEPALIVE = 15.0
KEEPALIVE_COMMENT = b":\n\n"


def event_bytes(seq: int, text: str) -> bytes:
    """One protocol frame as an SSE event with id ``seq`` (a frame holding line breaks, which
    JSON allows between tokens, takes one ``data:`` line per line)."""
    if "\n" in text or "\r" in text:
        return sse.encode(text, id=str(seq))
    return b"id: %d\ndata: %s\n\n" % (seq, text.encode())


class SseSession:
    """The SSE transport of one core session (see the module docstring)."""

    mode = SSE

    def __init__(self, broker: Broker, address: str | None) -> None:
        self.broker = broker
        self.address = address
        self.id = f"s{next(broker.http.stream_ids)}"
        self.secret = secrets.token_urlsafe(24)
        self.session: Session = broker.open_session(self)
        self.stream: Connection | None = None
        self.out: list[bytes] = []
        self.out_bytes = 0  # the size of ``out``
        self.overflowed = False  # over the outbound limit: to be aborted
        # What was written, kept until the client acknowledges it (ids and bytes).
        self.replay: deque[bytes] = deque()
        self.replay_ids: deque[int] = deque()
        self.replay_bytes = 0
        self.replay_limit = broker.config.max_outbound_buffer
        self.trimmed = 0  # the highest id dropped without an acknowledgement
        self.detached_at: float | None = None
        self.detached_bytes = 0
        self.last_rx = time.monotonic()
        self.last_seq = 0
        self.posts: deque[tuple[Connection, int | None, deque[str]]] = deque()
        self._turn: asyncio.Handle | None = None
        self.ended = False

    @property
    def key(self) -> str:
        """What the client presents (``Authorization: Bearer <key>``) on POSTs and when it
        re-opens the stream."""
        return f"{self.id}.{self.secret}"

    def matches(self, secret: str) -> bool:
        return secrets.compare_digest(self.secret.encode(), secret.encode())

    # ---------------------------------------------------------------- the stream

    def attach(self, conn: Connection, last_id: int | None) -> bool:
        """Make ``conn`` the event stream: False (nothing written) when the events after
        ``last_id`` are no longer all held."""
        if self.ended or (last_id or 0) < self.trimmed:
            return False
        if last_id is not None:
            self.acknowledge(last_id)
        old, self.stream = self.stream, conn
        if old is not None and old is not conn:
            old.owner = None
            old.abort()
        self.detached_at, self.detached_bytes = None, 0
        self.last_rx = time.monotonic()
        conn.start_stream(self, STREAM_HEADERS)
        hello = json.dumps({"stream": self.key,
                            "heartbeat_interval": round(self.broker.config.heartbeat_interval
                                                        * 1000),
                            "reopen_window": round(self.reopen_window() * 1000)},
                           separators=(",", ":"))
        # Every event after last_id is in the replay buffer (what ``out`` holds too).
        conn.write(PADDING + sse.encode(hello, event="transport") + b"".join(self.replay))
        self.out = []
        if self.session.streams:
            self.broker.pump(self)
        return True

    def reopen_window(self) -> float:
        """How long the session waits for its stream to be re-opened."""
        return max(1.0, self.broker.config.heartbeat_interval)

    def stream_lost(self, conn: Connection) -> None:
        if conn is self.stream:
            self.stream = None
            self.detached_at = time.monotonic()

    def drained(self) -> None:
        if self.session.streams:
            self.broker.pump(self)

    @property
    def writable(self) -> bool:
        return self.stream is not None and self.stream.writable

    # ---------------------------------------------------------------- output (the flush)

    def queue(self, seq: int, data: bytes) -> None:
        # The outbound limit holds as output is queued, not only after the flush: past it,
        # nothing more is queued and the broker aborts this slow consumer once the flush
        # ends (its client resumes from its last serial: the messages are in the history).
        if self.overflowed:
            return
        self.out_bytes += len(data)
        if self.out_bytes + self.buffered() > self.replay_limit:
            self.overflowed = True
            return
        self.out.append(data)
        self.replay.append(data)
        self.replay_ids.append(seq)
        self.replay_bytes += len(data)
        if self.replay_bytes > self.replay_limit:
            self._trim()

    def _trim(self) -> None:
        """Forget the oldest unacknowledged events beyond the limit (a stream re-opened
        from before them cannot continue: the client resumes instead)."""
        while self.replay_bytes > self.replay_limit and len(self.replay) > 1:
            self.trimmed = self.replay_ids.popleft()
            self.replay_bytes -= len(self.replay.popleft())

    def flush_out(self) -> None:
        out = self.out
        self.out_bytes = 0
        if not out:
            return
        self.out = []
        data = out[0] if len(out) == 1 else b"".join(out)
        if self.stream is not None:
            self.stream.write(data)
        else:
            self.detached_bytes += len(data)

    def buffered(self) -> int:
        if self.stream is not None:
            return self.stream.buffered()
        return self.detached_bytes

    def acknowledge(self, last_id: int) -> None:
        """The client has every event up to ``last_id``: forget them."""
        ids, replay = self.replay_ids, self.replay
        while ids and ids[0] <= last_id:
            ids.popleft()
            self.replay_bytes -= len(replay.popleft())

    # ---------------------------------------------------------------- client to broker

    def post(self, conn: Connection, seq: int | None, ack: int | None, body: bytes) -> None:
        """A POST of frames: handled after the ones before it, then answered 204."""
        self.last_rx = time.monotonic()
        if ack is not None:
            self.acknowledge(ack)
        lines = deque(line.decode("utf-8", "surrogateescape") for line in
                      body.replace(b"\r", b"\n").split(b"\n") if line.strip())
        self.posts.append((conn, seq, lines))
        if len(self.posts) == 1 and self._turn is None:
            self._run()
        else:
            conn.pause()

    def _run(self) -> None:
        """Hand the current POST's frames to the core, a turn at a time; answer it when they
        are all handled, then start the next POST."""
        self._turn = None
        broker, s = self.broker, self.session
        while self.posts:
            conn, seq, lines = self.posts[0]
            if seq is not None and seq <= self.last_seq:
                lines.clear()  # sent again after a lost response: handled already
            elif seq is not None and lines:
                self.last_seq = seq
                self.posts[0] = (conn, None, lines)
            refused_before = s.rate_limited
            handled = 0
            now = time.monotonic()
            while lines and handled < TURN_FRAMES and not s.closed:
                broker.core.receive(s, lines.popleft(), now)
                handled += 1
                if s.streams:
                    break  # a replay is written first; the next frames wait for it
            broker.schedule_flush()
            if s.closed:
                lines.clear()
            if s.streams and not s.closed:
                broker.streaming.add(self)
                return
            if lines:
                loop = asyncio.get_running_loop()
                if s.rate_limited != refused_before:
                    self._turn = loop.call_later(FLOOD_PAUSE, self._run)
                else:
                    self._turn = loop.call_soon(self._run)
                return
            self.posts.popleft()
            conn.respond(204, b"")

    def streams_done(self) -> None:
        if self.posts and self._turn is None:
            self._run()

    # ---------------------------------------------------------------- the end

    def close(self, code: int, reason: str) -> None:
        """The core ended the session: say why on the stream (``event: close``), then end."""
        self.flush_out()  # what the core sent before ending it goes first
        if self.stream is not None:
            self.stream.write(sse.encode(json.dumps({"code": code, "reason": reason}),
                                         event="close"))
        self.end()

    def abort(self) -> None:
        self.out = []
        if self.stream is not None:
            self.stream.abort()
        self.end()

    def end(self) -> None:
        """Forget this transport: its stream closes, later POSTs and re-opens get 404, and
        the core session is lost (parked when it may be resumed)."""
        if self.ended:
            return
        self.ended = True
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.owner = None
            stream.close_transport()
        for conn, _, _ in self.posts:
            conn.respond(204, b"")
        self.posts.clear()
        self.replay.clear()
        self.replay_ids.clear()
        self.broker.http.sse_ended(self)
        self.broker.session_ended(self.session)

    def check(self, now: float, hb: float) -> None:
        """The sweep: end a session whose stream stayed away, or whose client has said
        nothing for three heartbeat intervals (it sends at least a heartbeat each one)."""
        if self.stream is None and self.detached_at is not None \
                and now - self.detached_at > self.reopen_window():
            log.info("SSE stream %s not re-opened in time: ending it", self.id)
            self.end()
        elif self.session.connected and now - self.last_rx > 3 * hb:
            log.info("nothing from SSE session %s for %.1f s: dropping it", self.id,
                     now - self.last_rx)
            self.abort()


class ChannelEvents:
    """The event stream of one channel (``GET /channels/{channel}/events``): every message
    as an event whose id is ``<epoch>:<serial>``, after an ``attached`` event."""

    mode = EVENTS
    overflowed = False  # (bounded by the broker after each flush)

    def __init__(self, broker: Broker, conn: Connection) -> None:
        self.broker = broker
        self.address = conn.address
        self.stream: Connection | None = conn
        self.session: Session | None = None
        self.epoch = ""
        self.out: list[bytes] = []
        self.finished = False
        self.ended = False

    def encode(self, text: str) -> bytes:
        """The events a frame for this stream becomes (b"" for frames it does not show)."""
        obj = json.loads(text)
        action = obj.get("action")
        if action == "message":
            epoch = self.epoch.encode()
            return b"".join(
                b"id: %s:%d\ndata: %s\n\n" % (epoch, m["serial"],
                                               json.dumps(m, separators=(",", ":")).encode())
                for m in obj["messages"])
        if action == "attached":
            self.epoch = obj["epoch"]
        elif action in ("detached", "error", "closed"):
            self.finished = True
        else:
            return b""  # heartbeats, presence events
        obj.pop("ref", None)
        return sse.encode(json.dumps(obj, separators=(",", ":")), event=action)

    def queue(self, data: bytes) -> None:
        if data:
            self.out.append(data)

    def flush_out(self) -> None:
        out, self.out = self.out, []
        if out and self.stream is not None:
            self.stream.write(b"".join(out))
        if self.finished:
            self.end()

    def buffered(self) -> int:
        return self.stream.buffered() if self.stream is not None else 0

    @property
    def writable(self) -> bool:
        return self.stream is not None and self.stream.writable

    def drained(self) -> None:
        if self.session is not None and self.session.streams:
            self.broker.pump(self)

    def streams_done(self) -> None:
        return

    def stream_lost(self, conn: Connection) -> None:
        if conn is self.stream:
            self.stream = None
            self.end()

    def close(self, code: int, reason: str) -> None:
        self.flush_out()
        self.end()

    def abort(self) -> None:
        self.out = []
        if self.stream is not None:
            self.stream.abort()
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.owner = None
            stream.close_transport()
        self.broker.http.events_ended(self)
        if self.session is not None:
            self.broker.session_ended(self.session)
