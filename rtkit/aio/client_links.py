"""The links of one :class:`rtkit.Client`: opening, receiving, losing, probing.

The core asks for a link (``OpenLink``: a URL and a transport); this opens it — a
:class:`~rtkit.aio.link.WebSocketLink` or an :class:`~rtkit.aio.sselink.SseLink` — and
tells the core how it went, hands it the frames each link reads (only the current link's:
an old link's last words are dropped) and its end. It also runs the WebSocket probes the
core asks for while connected over SSE, and counts the bytes of the links closed so far.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from typing import TYPE_CHECKING

from rtkit.aio.link import WebSocketLink
from rtkit.aio.sselink import SseLink
from rtkit.core.transports import SSE
from rtkit.errors import ConnectionFailed, RtkitError

if TYPE_CHECKING:
    from rtkit.aio.client_driver import Driver
    from rtkit.core.client import ClientCore

log = logging.getLogger("rtkit.client")
#: Frames read together are handed to the application in batches of about this many bytes:
#: batches save work per frame, and smaller ones let the messages of a batch die young (a
#: message kept alive through a long batch costs the garbage collector more than it saves).
BATCH_BYTES = 8192


class Links:
    """The current link of a client (at most one) and the tasks opening and probing links."""

    def __init__(self, core: ClientCore, driver: Driver, max_frame_size: int,
                 ssl: ssl_module.SSLContext | None, connect_timeout: float) -> None:
        self.core = core
        self.driver = driver
        self.max_frame_size = max_frame_size
        self.ssl = ssl
        self.connect_timeout = connect_timeout
        self.link: WebSocketLink | SseLink | None = None
        self.link_id = 0
        #: Bytes received and sent by the links closed so far.
        self.bytes_done = [0, 0]
        self.opener: asyncio.Task[None] | None = None
        self.probe: asyncio.Task[None] | None = None

    def open(self, url: str, transport: str) -> None:
        """Open the link the core asked for (its id is the core's ``link_id``)."""
        self.forget()
        self.link_id = link_id = self.core.link_id
        kind = SseLink if transport == SSE else WebSocketLink
        link = kind(url, lambda frames: self.on_frames(link_id, frames),
                    lambda err: self.on_lost(link_id, err), self.max_frame_size, self.ssl)
        self.link = link
        self.opener = asyncio.get_running_loop().create_task(self._connect(link, link_id))

    def forget(self) -> None:
        """Let go of the current link, keeping the count of its bytes."""
        link, self.link = self.link, None
        if link is not None:
            self.bytes_done[0] += link.bytes_in
            self.bytes_done[1] += link.bytes_out

    def abort(self, error: RtkitError) -> None:
        """Stop opening the link, or cut it (its end is still reported to the core)."""
        if self.opener is not None:
            self.opener.cancel()
            self.opener = None
        if self.link is not None:
            self.link.abort(error)

    async def _connect(self, link: WebSocketLink | SseLink, link_id: int) -> None:
        driver = self.driver
        try:
            await link.connect()
        except Exception as exc:  # any failure to connect is retried
            if not isinstance(exc, RtkitError):
                url = self.core.config.url
                log.warning("unexpected error while connecting to %s", url, exc_info=exc)
                exc = ConnectionFailed(f"cannot connect to {url}: {exc!r}")
            if self.link is link:
                self.forget()
            link.abort(exc)
            self.core.link_failed(link_id, exc, driver.now())
        else:
            self.core.link_opened(link_id, driver.now())
        finally:
            if self.opener is asyncio.current_task():
                self.opener = None
        driver.pump()

    def on_frames(self, link_id: int, frames: list[str | bytes]) -> None:
        """The frames of one read: the core takes them, and its outputs are performed every
        :data:`BATCH_BYTES` (deliveries of consecutive frames in one batch), then the timer
        is updated once."""
        if link_id != self.link_id:
            return
        driver = self.driver
        receive, now, perform = self.core.receive, driver.now(), driver.perform
        size = 0
        for text in frames:
            receive(text, now)
            size += len(text)
            if size >= BATCH_BYTES:
                perform()
                size = 0
        driver.pump()

    def on_lost(self, link_id: int, err: RtkitError) -> None:
        if link_id == self.link_id:
            self.forget()
            self.core.link_lost(link_id, err, self.driver.now())
            self.driver.pump()

    def start_probe(self, url: str) -> None:
        """Check whether a WebSocket gets through now: a handshake, closed at once."""
        if self.probe is not None and not self.probe.done():
            return

        async def probe() -> None:
            link = WebSocketLink(url, lambda text: None, lambda err: None, 1024, self.ssl)
            ok = False
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await link.connect()
                ok = True
            except (RtkitError, TimeoutError) as exc:
                log.debug("WebSocket probe failed: %s", exc)
            finally:
                if ok:
                    link.close(1000, "probe")
                else:
                    link.abort(ConnectionFailed("probe failed"))
            self.core.probe_done(ok, self.driver.now())
            self.driver.pump()

        self.probe = asyncio.get_running_loop().create_task(probe())
