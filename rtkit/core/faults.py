"""The fault-injection proxy's decisions, sans I/O: what is broken now, when each chunk of
bytes may be forwarded (latency, jitter, bandwidth), given ``now`` and a random source, and
the HTTP faults of real proxies: refusing or stripping WebSocket upgrades, buffering
responses (:class:`ResponseBuffer`) and cutting idle connections."""

from __future__ import annotations

from dataclasses import dataclass

from rtkit.core.timing import RandomSource


@dataclass(slots=True)
class FaultPlan:
    """The faults in force. Times are seconds on the proxy's monotonic clock."""

    blackhole_until: float = 0.0
    refuse_until: float = 0.0
    latency: float = 0.0  # seconds added to every chunk, each way
    jitter: float = 0.0  # +/- seconds drawn uniformly per chunk (order is kept)
    bandwidth: float | None = None  # bytes per second, each way, per connection
    block_websocket: bool = False  # answer WebSocket upgrades with 403
    strip_upgrade: bool = False  # forward WebSocket upgrades without their Upgrade header
    #: Responses buffered by new connections: ("all", bytes) holds each response until
    #: that many bytes or its end, again and again (nginx's proxy buffering); ("start",
    #: bytes) holds only its first bytes. None: no buffering.
    buffering: tuple[str, int] | None = None
    #: With ("all", n): a response with ``X-Accel-Buffering: no`` is not buffered.
    buffering_honors_header: bool = True
    #: Connections with no bytes either way for this many seconds are reset (None: never).
    idle_timeout: float | None = None

    def blackholed(self, now: float) -> bool:
        return now < self.blackhole_until

    def refusing(self, now: float) -> bool:
        return now < self.refuse_until

    def blackhole(self, seconds: float, now: float) -> None:
        """Forward nothing and close nothing for ``seconds`` (a silent, half-open link)."""
        self.blackhole_until = max(self.blackhole_until, now + seconds)

    def refuse(self, seconds: float, now: float) -> None:
        """Reset new connections for ``seconds``."""
        self.refuse_until = max(self.refuse_until, now + seconds)

    def heal(self) -> None:
        """Remove every fault."""
        self.blackhole_until = self.refuse_until = 0.0
        self.latency = self.jitter = 0.0
        self.bandwidth = None
        self.block_websocket = self.strip_upgrade = False
        self.buffering = None
        self.buffering_honors_header = True
        self.idle_timeout = None

    def describe(self, now: float) -> dict[str, object]:
        return {
            "blackhole_s": round(max(0.0, self.blackhole_until - now), 3),
            "refuse_s": round(max(0.0, self.refuse_until - now), 3),
            "latency_ms": self.latency * 1000,
            "jitter_ms": self.jitter * 1000,
            "bandwidth_bps": self.bandwidth,
            "block_websocket": self.block_websocket,
            "strip_upgrade": self.strip_upgrade,
            "buffering": None if self.buffering is None else
            f"{self.buffering[0]}:{self.buffering[1]}",
            "idle_timeout_s": self.idle_timeout,
        }


@dataclass(slots=True)
class Pipe:
    """One direction of one connection: when may the next chunk go out?"""

    last_release: float = 0.0
    wire_free_at: float = 0.0

    def schedule(self, nbytes: int, now: float, plan: FaultPlan, rng: RandomSource) -> float:
        """The time at which a chunk of ``nbytes`` read at ``now`` may be written."""
        delay = plan.latency
        if plan.jitter:
            delay += (rng.random() * 2 - 1) * plan.jitter
        release = max(now + max(0.0, delay), self.last_release)  # never reorder
        if plan.bandwidth:
            start = max(release, self.wire_free_at)
            self.wire_free_at = start + nbytes / plan.bandwidth
            release = self.wire_free_at
        self.last_release = release
        return release


def is_websocket_upgrade(first_bytes: bytes) -> bool:
    """Whether the opening bytes of a connection are an HTTP WebSocket upgrade request."""
    head = first_bytes.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(b"get ") and b"upgrade: websocket" in head


def strip_upgrade(head: bytes) -> bytes:
    """The request without its ``Upgrade`` header and the ``upgrade`` token of its
    ``Connection`` header (as some proxies forward a WebSocket handshake)."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return head
    lines = head[:end].split(b"\r\n")
    out = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"upgrade":
            continue
        if key == b"connection":
            tokens = [t.strip() for t in value.split(b",") if t.strip().lower() != b"upgrade"]
            if not tokens:
                continue
            line = name + b": " + b", ".join(tokens)
        out.append(line)
    return b"\r\n".join(out) + head[end:]


class ResponseBuffer:
    """Holds back the responses of one connection, as a buffering proxy does (sans I/O:
    bytes in, bytes to forward now out).

    ``mode="all"``: each response is held until ``size`` bytes have gathered or it ends,
    then forwarded, again and again (nginx's ``proxy_buffering``); a response with
    ``X-Accel-Buffering: no`` passes at once when ``honor_header``. ``mode="start"``: only
    the first ``size`` bytes of each response are held (some proxies and antivirus filters;
    an SSE stream gets through with a padding comment). A ``101 Switching Protocols``
    (a WebSocket) passes untouched from then on. A response ends after its
    ``Content-Length``, or when the connection closes (call :meth:`end`).
    """

    def __init__(self, mode: str, size: int, honor_header: bool = True) -> None:
        if mode not in ("all", "start") or size < 1:
            raise ValueError("mode is 'all' or 'start', size >= 1")
        self.mode = mode
        self.size = size
        self.honor_header = honor_header
        self._head = b""  # an unfinished response head
        self._in_body = False
        self._remaining: int | None = None  # body bytes left (None: until the close)
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._passing = False  # this response is not (or no longer) held
        self._tunnel = False  # switched protocols: no HTTP any more

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        while data and not self._tunnel:
            if not self._in_body:
                data = self._read_head(data, out)
                continue
            take = len(data) if self._remaining is None else min(len(data), self._remaining)
            part, data = data[:take], data[take:]
            if self._remaining is not None:
                self._remaining -= take
            self._hold(part, out)
            if self._remaining == 0:
                out.append(self._release())
                self._in_body = False
        if self._tunnel and data:
            out.append(self._release())
            out.append(data)
        return b"".join(out)

    def end(self) -> bytes:
        """The connection closed: everything held goes."""
        return self._release() + self._head

    def _read_head(self, data: bytes, out: list[bytes]) -> bytes:
        buf = self._head + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._head = buf
            return b""
        head, rest = buf[: end + 4], buf[end + 4:]
        self._head = b""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if status == 101:
            self._tunnel = True
            out.append(self._release())
            out.append(head)
            return rest
        length = headers.get(b"content-length")
        self._remaining = int(length) if length is not None and length.isdigit() else None
        if status in (204, 304) or 100 <= status < 200:
            self._remaining = 0
        self._passing = (self.mode == "all" and self.honor_header
                         and headers.get(b"x-accel-buffering") == b"no")
        self._in_body = True
        self._hold(head, out)
        if self._remaining == 0:
            out.append(self._release())
            self._in_body = False
        return rest

    def _hold(self, part: bytes, out: list[bytes]) -> None:
        if self._passing:
            out.append(self._release())
            out.append(part)
            return
        self._held.append(part)
        self._held_bytes += len(part)
        if self._held_bytes >= self.size:
            out.append(self._release())
            if self.mode == "start":
                self._passing = True

    def _release(self) -> bytes:
        held, self._held, self._held_bytes = self._held, [], 0
        return b"".join(held)
