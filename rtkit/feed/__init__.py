"""Any live feed in a notebook: :class:`Feed` over WebSockets or Server-Sent Events, and
local replay servers that emulate public feeds (:mod:`rtkit.feed.replay`).

    feed = rtkit.Feed("wss://example.com/ws", subscribe={"type": "subscribe", ...},
                      sequence="sequence", sequence_key="product_id")
    await feed.connect()
    feed.subscribe(lambda record: print(record["price"]))
"""

from rtkit.core.feed import BadFrame, FeedRecord
from rtkit.core.sequence import Duplicate, Gap
from rtkit.feed import replay
from rtkit.feed.feed import Feed
from rtkit.feed.subscription import FeedSubscription

__all__ = ["BadFrame", "Duplicate", "Feed", "FeedRecord", "FeedSubscription", "Gap", "replay"]
