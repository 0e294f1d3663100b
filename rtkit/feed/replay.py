"""Local replay servers that emulate public feeds, for learning and testing offline.

Each runs in its own thread (a blocking notebook cell does not stall it), on a free port of
127.0.0.1, sending generated records at ``rate`` per second (seeded with ``seed``):

    ticker = rtkit.feed.replay.ticker()               # an exchange ticker over WebSocket
    wiki = rtkit.feed.replay.recent_changes()         # Wikimedia recent changes over SSE
    sky = rtkit.feed.replay.jetstream()               # Bluesky's Jetstream over WebSocket
    mine = rtkit.feed.replay.websocket(records)       # your own records (or .sse(records))

    feed = rtkit.Feed(ticker.url, subscribe={"type": "subscribe", "channels": ["ticker"],
                                             "product_ids": ["BTC-USD"]})

Break them on purpose: ``pause()``/``resume()`` (data stops, the link stays up: pongs and
SSE comments still flow), ``skip(n, key)`` (the next ``n`` records, of one product if given,
are lost: a gap), ``repeat(key)`` (the last record again: a duplicate), ``garbage(text)`` (a
frame that is not JSON), ``drop_all()`` (cut every connection). Put
``rtkit.chaos.proxy((server.host, server.port))`` in front for drops, blackholes and refusals
(:meth:`ReplayServer.url_via` gives the feed URL through the proxy).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from rtkit import _rerun
from rtkit._thread import LoopThread
from rtkit.feed.emulations import JetstreamFeed, RecentChangesFeed, RecordsFeed, TickerFeed
from rtkit.feed.services import Emulation, Service

T = TypeVar("T")

__all__ = ["ReplayServer", "jetstream", "recent_changes", "sse", "ticker", "websocket"]


class ReplayServer:
    """A running replay server. Point a :class:`rtkit.Feed` at :attr:`url`."""

    def __init__(self, service: Service, runner: LoopThread) -> None:
        self._service = service
        self._runner = runner

    @property
    def kind(self) -> str:
        """``"ws"`` (WebSocket) or ``"sse"`` (Server-Sent Events)."""
        return self._service.kind

    @property
    def host(self) -> str:
        return str(self._service.host)

    @property
    def port(self) -> int:
        return int(self._service.port)

    @property
    def url(self) -> str:
        """The stream's URL (``ws://...`` or ``http://...``)."""
        scheme = "ws" if self.kind == "ws" else "http"
        return f"{scheme}://{self.host}:{self.port}{self._service.path}"

    @property
    def http_url(self) -> str:
        """The server's base HTTP URL (for REST snapshots such as the ticker's)."""
        return f"http://{self.host}:{self.port}"

    def url_via(self, proxy: Any) -> str:
        """:attr:`url` with the host and port of ``proxy`` (anything with ``host``/``port``
        or a ``url``, e.g. a :func:`rtkit.chaos.proxy`)."""
        parts = urlsplit(self.url)
        port = proxy.port
        host = getattr(proxy, "host", None) or urlsplit(proxy.url).hostname
        return urlunsplit(parts._replace(netloc=f"{host}:{port}"))

    def _call(self, fn: Any) -> Any:
        return self._runner.call(fn)

    # ---------------------------------------------------------------- faults

    def pause(self) -> None:
        """Stop sending records (the link stays up and alive). Numbers do not advance."""
        self._call(lambda: setattr(self._service, "paused", True))

    def resume(self) -> None:
        self._call(lambda: setattr(self._service, "paused", False))

    def set_rate(self, rate: float) -> None:
        """Records per second from now on."""
        if rate <= 0:
            raise ValueError("rate must be > 0 records per second")
        self._call(lambda: setattr(self._service, "rate", rate))

    def skip(self, n: int = 1, key: Hashable = None) -> None:
        """Lose the next ``n`` records (of stream ``key`` if given: a product, a wiki, a
        collection): they are numbered but never sent, so clients see a gap."""
        if n < 1:
            raise ValueError("skip at least one record")
        self._call(lambda: self._service.skip(n, key))

    def repeat(self, key: Hashable = None) -> bool:
        """Send the last record (of stream ``key`` if given) again; False if none yet."""
        return bool(self._call(lambda: self._service.repeat(key)))

    def garbage(self, text: str = '{"type": "ticker", "price": 6') -> None:
        """Send every client a frame that is not valid JSON."""
        self._call(lambda: self._service.garbage(text))

    def drop_all(self) -> int:
        """Cut every client connection now (no close handshake); returns how many."""
        return int(self._call(self._service.drop_all))

    # ---------------------------------------------------------------- observing

    def stats(self) -> dict[str, Any]:
        """Totals: connections, open, produced, skipped, repeated, garbage, dropped,
        messages (received from clients)."""
        return dict(self._call(self._service.stats))

    @property
    def messages(self) -> list[Any]:
        """What clients sent (subscriptions, resume points), the latest 1,000."""
        return list(self._call(lambda: list(self._service.messages)))

    # ---------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._runner.alive

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and stop the server. Safe to call twice."""
        self._runner.stop(timeout)

    def __enter__(self) -> ReplayServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<rtkit.feed.ReplayServer {self.url} {state}>"


def _start(emulation: Emulation, rate: float, host: str, port: int, history: int = 1000,
           keepalive: float | None = None) -> ReplayServer:
    service = Service(emulation, rate, history, keepalive)
    runner = LoopThread(f"rtkit-replay-{type(emulation).__name__}",
                        lambda: service.start(host, port), service.stop)
    server = ReplayServer(service, runner)
    _rerun.replace_previous("replay", server, ReplayServer.stop)
    return server


def ticker(products: Iterable[str] = ("BTC-USD", "ETH-USD"), *, rate: float = 20.0,
           seed: int | None = None, host: str = "127.0.0.1", port: int = 0) -> ReplayServer:
    """An exchange ticker over WebSocket, shaped like Coinbase's ``ticker`` channel.

    Send ``{"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["ticker"]}``; then
    records like ``{"type": "ticker", "sequence": 42, "product_id": "BTC-USD", "price":
    "60012.55", "time": "2025-...Z", ...}`` arrive (prices are strings, as on the real
    feed). ``sequence`` counts per product. ``GET {http_url}/products/BTC-USD/ticker``
    returns the latest one (a REST snapshot)."""
    return _start(TickerFeed(tuple(products), seed), rate, host, port)


def recent_changes(*, rate: float = 20.0, seed: int | None = None, retry: int | None = None,
                   keepalive: float | None = 5.0, history: int = 1000,
                   host: str = "127.0.0.1", port: int = 0) -> ReplayServer:
    """Wikimedia's recent changes over Server-Sent Events (``/v2/stream/recentchange``).

    Each event: ``event: message``, ``id: [{"topic": ..., "partition": 0, "offset": N}]``,
    and JSON data with ``meta.dt``, ``meta.offset``, ``type``, ``title``, ``wiki``,
    ``user``, ``bot``, ``length``... ``Last-Event-ID`` resumes from the latest ``history``
    events (an older point starts at the end, silently, as Wikimedia does). ``retry`` (ms)
    is sent first when given; a comment every ``keepalive`` seconds."""
    return _start(RecentChangesFeed(seed, retry), rate, host, port, history, keepalive)


def jetstream(*, rate: float = 20.0, seed: int | None = None, history: int = 1000,
              host: str = "127.0.0.1", port: int = 0) -> ReplayServer:
    """Bluesky's Jetstream over WebSocket (``/subscribe``): ``{"did", "time_us", "kind":
    "commit", "commit": {"collection", "operation", "record", ...}}`` and a few identity
    and account events. ``?wantedCollections=app.bsky.feed.post`` filters (repeat it for
    several; ``app.bsky.feed.*`` works); ``?cursor=<time_us>`` replays the latest
    ``history`` events from that time, inclusive."""
    return _start(JetstreamFeed(seed), rate, host, port, history)


def _load(records: Iterable[Any] | str | Path) -> list[Any]:
    if isinstance(records, str | Path):
        lines = Path(records).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    return list(records)


def websocket(records: Iterable[Any] | str | Path, *, rate: float = 20.0, loop: bool = True,
              path: str = "/", history: int = 1000, host: str = "127.0.0.1",
              port: int = 0) -> ReplayServer:
    """Your records (a list, or a JSON-lines file), one WebSocket message each, as JSON
    (strings as they are), ``rate`` per second, in a loop unless ``loop=False``."""
    return _start(RecordsFeed(_load(records), "ws", loop, path, None, None), rate, host, port,
                  history)


def sse(records: Iterable[Any] | str | Path, *, rate: float = 20.0, loop: bool = True,
        path: str = "/events", event: str | None = None, id_field: str | None = None,
        keepalive: float | None = 5.0, history: int = 1000, host: str = "127.0.0.1",
        port: int = 0) -> ReplayServer:
    """Your records as Server-Sent Events (type ``event``, id from the record's
    ``id_field``), ``rate`` per second, with a comment every ``keepalive`` seconds."""
    return _start(RecordsFeed(_load(records), "sse", loop, path, event, id_field), rate,
                  host, port, history, keepalive)
