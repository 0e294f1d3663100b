"""What each replay server sends, shaped like a real public feed (see :mod:`rtkit.feed.samples`).

- :class:`TickerFeed`: an exchange's WebSocket ticker (Coinbase-like). Nothing is sent until
  the client subscribes: ``{"type": "subscribe", "product_ids": [...], "channels":
  ["ticker"]}``, answered by ``{"type": "subscriptions", ...}``. Numbers run per product
  whether or not anyone listens, so a client that was away sees a gap. ``GET
  /products/<id>/ticker`` answers the latest ticker of a product (a REST snapshot).
- :class:`RecentChangesFeed`: Wikimedia's recent changes over SSE at
  ``/v2/stream/recentchange``; each event's id is ``[{"topic":..., "partition": 0,
  "offset": N}]``; ``Last-Event-ID`` resumes after that offset, and (as Wikimedia does) a
  point no longer in the history silently starts at the end. Comments keep the link alive.
- :class:`JetstreamFeed`: Bluesky's Jetstream at ``/subscribe``: ``?wantedCollections=``
  filters commits, ``?cursor=<time_us>`` replays from that time *inclusive* (at least once:
  the client drops what it already has).
- :class:`RecordsFeed`: any records you give, over either transport.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Hashable, Iterable
from typing import Any

from rtkit.core import sse
from rtkit.feed.samples import Jetstream, RecentChanges, Ticker
from rtkit.feed.services import Emulation, Peer, Service


class TickerFeed(Emulation):
    kind = "ws"
    path = "/"

    def __init__(self, products: tuple[str, ...], seed: int | None) -> None:
        self.source = Ticker(products, seed)

    def produce(self, now: float) -> Any:
        return self.source.next(now)

    def key(self, record: Any) -> Hashable:
        return str(record["product_id"])

    def interested(self, peer: Peer, record: Any) -> bool:
        return record["product_id"] in peer.wants

    def received(self, service: Service, peer: Peer, message: str | bytes) -> None:
        try:
            request = json.loads(message)
            kind = request["type"]
            products = set(request.get("product_ids", []))
            channels = request.get("channels", [])
            for channel in channels:
                if isinstance(channel, dict):
                    products |= set(channel.get("product_ids", []))
            names = {c["name"] if isinstance(c, dict) else c for c in channels}
        except (ValueError, KeyError, TypeError, AttributeError):
            peer.send(json.dumps({"type": "error", "message": "Failed to parse",
                                  "reason": "expected {\"type\": \"subscribe\", "
                                            "\"product_ids\": [...], \"channels\": [...]}"}))
            return
        service.note(request)
        unknown = products - set(self.source.products)
        if kind not in ("subscribe", "unsubscribe") or "ticker" not in names or unknown:
            reason = (f"unknown products {sorted(unknown)}" if unknown else
                      "only the ticker channel is emulated" if "ticker" not in names
                      else f"unknown type {kind!r}")
            peer.send(json.dumps({"type": "error", "message": f"Failed to {kind}",
                                  "reason": reason}))
            return
        if kind == "subscribe":
            peer.wants |= products
        else:
            peer.wants -= products
        peer.send(json.dumps({"type": "subscriptions", "channels": [
            {"name": "ticker", "product_ids": sorted(peer.wants)}]}))

    def http(self, path: str, query: dict[str, list[str]]) -> tuple[int, str] | None:
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "products" and parts[2] == "ticker":
            latest = self.source.latest.get(parts[1])
            if latest is None:
                return 404, json.dumps({"message": "NotFound"})
            return 200, json.dumps(latest)
        return None


class RecentChangesFeed(Emulation):
    kind = "sse"
    path = "/v2/stream/recentchange"

    def __init__(self, seed: int | None, retry: int | None) -> None:
        self.source = RecentChanges(seed)
        self.retry = retry

    def produce(self, now: float) -> Any:
        return self.source.next(now)

    def key(self, record: Any) -> Hashable:
        return str(record["wiki"])

    def position(self, record: Any) -> Any:
        return record["meta"]["offset"]

    def frame(self, record: Any) -> str | bytes:
        return sse.encode(json.dumps(record, separators=(",", ":")), event="message",
                          id=RecentChanges.event_id(record))

    def opened(self, service: Service, peer: Peer) -> None:
        if self.retry is not None:
            peer.send(sse.encode(retry=self.retry))
        after = _offset(peer.headers.get("last-event-id", ""))
        service.note({"last-event-id": peer.headers.get("last-event-id")})
        if after is None or not service.history or service.history[0][0] > after + 1:
            return  # nothing to resume, or the point is gone: start at the end, silently
        for offset, _, data, _ in service.history:
            if offset > after:
                peer.send(data)


def _offset(event_id: str) -> int | None:
    """The offset in a Wikimedia-style event id (a JSON list of topic positions)."""
    try:
        positions = json.loads(event_id)
        return int(positions[0]["offset"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class JetstreamFeed(Emulation):
    kind = "ws"
    path = "/subscribe"

    def __init__(self, seed: int | None) -> None:
        self.source = Jetstream(seed)

    def produce(self, now: float) -> Any:
        return self.source.next(now)

    def key(self, record: Any) -> Hashable:
        return str(record["commit"]["collection"] if record["kind"] == "commit"
                   else record["kind"])

    def position(self, record: Any) -> Any:
        return record["time_us"]

    def interested(self, peer: Peer, record: Any) -> bool:
        if not peer.wants or record["kind"] != "commit":
            return True
        collection = record["commit"]["collection"]
        return any(collection == w or (w.endswith(".*") and collection.startswith(w[:-1]))
                   for w in peer.wants)

    def opened(self, service: Service, peer: Peer) -> None:
        peer.wants = set(peer.query.get("wantedCollections", []))
        service.note({"cursor": peer.query.get("cursor", [None])[0],
                      "wantedCollections": sorted(peer.wants)})
        cursor = peer.query.get("cursor", [""])[0]
        if not cursor.isdigit():
            return
        for time_us, _, data, record in service.history:
            if time_us >= int(cursor) and self.interested(peer, record):
                peer.send(data)


class RecordsFeed(Emulation):
    """Your own records, in a loop (``loop=True``) or once, as JSON (SSE: one event each,
    with ``id`` taken from ``id_field`` when given)."""

    def __init__(self, records: Iterable[Any], kind: str, loop: bool, path: str,
                 event: str | None, id_field: str | None) -> None:
        items = list(records)
        if not items:
            raise ValueError("give at least one record")
        self.kind = kind
        self.path = path
        self._items = itertools.cycle(items) if loop else iter(items)
        self.event = event
        self.id_field = id_field

    def produce(self, now: float) -> Any:
        return next(self._items, None)  # None: nothing left to send

    def frame(self, record: Any) -> str | bytes:
        text = record if isinstance(record, str) else json.dumps(record, separators=(",", ":"))
        if self.kind == "ws":
            return text
        event_id = None
        if self.id_field is not None and isinstance(record, dict) and \
                record.get(self.id_field) is not None:
            event_id = str(record[self.id_field])
        return sse.encode(text, event=self.event, id=event_id)
