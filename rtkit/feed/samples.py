"""Generated sample records in the shapes of three public feeds (no network, seeded).

- :class:`Ticker`: an exchange ticker like Coinbase's WebSocket ``ticker`` channel: prices as
  strings, an ISO time, a ``sequence`` number per product;
- :class:`RecentChanges`: Wikimedia's ``recentchange`` stream (EventStreams, over SSE): edits
  to wikis with ``meta.dt``, ``meta.offset`` and a ``timestamp`` in seconds;
- :class:`Jetstream`: Bluesky's Jetstream firehose: posts, likes and follows with a
  ``time_us`` cursor (microseconds) that only increases.

Each ``next(now)`` returns the next record, stamped with ``now`` (seconds since the epoch), so
latency measured on them is real.
"""

from __future__ import annotations

import json
import math
import random
import string
import uuid
from datetime import UTC, datetime
from typing import Any

WORDS = ("river", "quantum", "garden", "lighthouse", "archive", "festival", "glacier",
         "harbour", "meadow", "orbit", "pixel", "saffron", "tundra", "violin", "whistle",
         "atlas", "bakery", "canyon", "dynamo", "ember", "fjord", "granite", "horizon")
USERS = ("Ada", "Grace", "Linus", "Margaret", "Tim", "Katherine", "Alan", "Barbara",
         "Dennis", "Frances", "Ken", "Radia", "Guido", "Hedy", "Edsger")
WIKIS = (("enwiki", "en.wikipedia.org"), ("dewiki", "de.wikipedia.org"),
         ("frwiki", "fr.wikipedia.org"), ("wikidatawiki", "www.wikidata.org"),
         ("commonswiki", "commons.wikimedia.org"), ("eswiki", "es.wikipedia.org"))


def iso(now: float) -> str:
    """``now`` as ISO 8601 in UTC with microseconds and a ``Z``, as exchanges write it."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Ticker:
    """Trades of ``products`` on a random walk; ``sequence`` counts per product from 1."""

    def __init__(self, products: tuple[str, ...] = ("BTC-USD", "ETH-USD"),
                 seed: int | None = None, volatility: float = 0.0005) -> None:
        if not products:
            raise ValueError("give at least one product")
        self.products = products
        self.rng = random.Random(seed)
        base = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0, "DOGE": 0.15}
        self.prices = {p: base.get(p.split("-")[0], 100.0) for p in products}
        self.sequences = dict.fromkeys(products, 0)
        self.volatility = volatility
        self.trade_id = 0
        self.latest: dict[str, dict[str, Any]] = {}

    def next(self, now: float, product: str | None = None) -> dict[str, Any]:
        rng = self.rng
        product = product or rng.choice(self.products)
        price = self.prices[product] * math.exp(rng.gauss(0, self.volatility))
        self.prices[product] = price
        self.sequences[product] += 1
        self.trade_id += 1
        spread = price * 0.0001
        record = {
            "type": "ticker", "sequence": self.sequences[product], "product_id": product,
            "price": f"{price:.2f}", "best_bid": f"{price - spread:.2f}",
            "best_ask": f"{price + spread:.2f}", "side": rng.choice(("buy", "sell")),
            "last_size": f"{rng.expovariate(4):.8f}", "time": iso(now),
            "trade_id": self.trade_id,
        }
        self.latest[product] = record
        return record


class RecentChanges:
    """Edits, page creations, log entries and categorisations on a few wikis; ``meta.offset``
    numbers them (one partition)."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.offset = 0
        self.rc_id = 1_000_000
        self.revision = 5_000_000

    def next(self, now: float) -> dict[str, Any]:
        rng = self.rng
        self.offset += 1
        self.rc_id += 1
        wiki, domain = rng.choice(WIKIS)
        kind = rng.choices(("edit", "new", "log", "categorize"), (70, 10, 10, 10))[0]
        title = " ".join(rng.sample(WORDS, 2)).title()
        user = rng.choice(USERS)
        bot = rng.random() < 0.2
        record: dict[str, Any] = {
            "$schema": "/mediawiki/recentchange/1.0.0",
            "meta": {"uri": f"https://{domain}/wiki/{title.replace(' ', '_')}",
                     "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                     "dt": iso(now), "domain": domain,
                     "stream": "mediawiki.recentchange",
                     "topic": "replay.mediawiki.recentchange", "partition": 0,
                     "offset": self.offset},
            "id": self.rc_id, "type": kind, "namespace": 0 if kind != "categorize" else 14,
            "title": title, "comment": rng.choice(("typo", "copyedit", "add source",
                                                   "update infobox", "revert", "")),
            "timestamp": int(now), "user": f"{user}Bot" if bot else user, "bot": bot,
            "server_name": domain, "wiki": wiki,
        }
        if kind in ("edit", "new"):
            old = 0 if kind == "new" else rng.randint(500, 60_000)
            self.revision += rng.randint(1, 50)
            record["minor"] = rng.random() < 0.3
            record["length"] = {"old": old or None, "new": max(0, old + int(rng.gauss(40, 300)))}
            record["revision"] = {"old": self.revision - 1 if old else None,
                                  "new": self.revision}
        return record

    @staticmethod
    def event_id(record: dict[str, Any]) -> str:
        """The SSE id Wikimedia would send: a JSON list of topic, partition and offset."""
        meta = record["meta"]
        return json.dumps([{"topic": meta["topic"], "partition": meta["partition"],
                            "offset": meta["offset"]}], separators=(",", ":"))


class Jetstream:
    """Commits (posts, likes, follows) and a few identity and account events by a crowd of
    accounts; ``time_us`` is strictly increasing."""

    COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow")

    def __init__(self, seed: int | None = None, accounts: int = 200) -> None:
        self.rng = random.Random(seed)
        alphabet = string.ascii_lowercase + "234567"
        self.dids = ["did:plc:" + "".join(self.rng.choices(alphabet, k=24))
                     for _ in range(accounts)]
        self.time_us = 0

    def _tid(self) -> str:
        return "3l" + "".join(self.rng.choices(string.ascii_lowercase + "234567", k=11))

    def next(self, now: float) -> dict[str, Any]:
        rng = self.rng
        self.time_us = max(self.time_us + 1, int(now * 1_000_000))
        did = rng.choice(self.dids)
        roll = rng.random()
        if roll < 0.03:
            return {"did": did, "time_us": self.time_us, "kind": "identity",
                    "identity": {"did": did, "handle": f"{rng.choice(USERS).lower()}"
                                 f"{rng.randint(1, 999)}.bsky.social", "seq": self.time_us,
                                 "time": iso(now)}}
        if roll < 0.05:
            return {"did": did, "time_us": self.time_us, "kind": "account",
                    "account": {"active": True, "did": did, "seq": self.time_us,
                                "time": iso(now)}}
        collection = rng.choices(self.COLLECTIONS, (30, 60, 10))[0]
        created = iso(now)[:-4] + "Z"  # milliseconds, as the app writes them
        if collection == "app.bsky.feed.post":
            words = rng.sample(WORDS, rng.randint(3, 8))
            record: dict[str, Any] = {"$type": collection, "createdAt": created,
                                      "langs": [rng.choice(("en", "ja", "pt", "de"))],
                                      "text": " ".join(words).capitalize() + "."}
        elif collection == "app.bsky.feed.like":
            record = {"$type": collection, "createdAt": created,
                      "subject": {"cid": "bafyrei" + self._tid(),
                                  "uri": f"at://{rng.choice(self.dids)}/app.bsky.feed.post/"
                                         f"{self._tid()}"}}
        else:
            record = {"$type": collection, "createdAt": created,
                      "subject": rng.choice(self.dids)}
        return {"did": did, "time_us": self.time_us, "kind": "commit",
                "commit": {"rev": self._tid(), "operation": "create",
                           "collection": collection, "rkey": self._tid(), "record": record,
                           "cid": "bafyrei" + self._tid()}}
