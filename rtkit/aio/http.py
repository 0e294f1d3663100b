"""A small HTTP/1.1 client on asyncio streams, with h11 doing the protocol (sans I/O).

:func:`request` makes one request per connection, no pool: enough for a long-lived event
stream (read the body chunk by chunk as it arrives) and for the occasional POST.
:class:`KeepAlive` sends a series of requests, one at a time, on one kept-alive connection
(the SSE transport's POSTs), opening a new one whenever the last one was closed.

:func:`request` follows redirects (GET after a 303); TLS uses the default verifying context
unless ``ssl=`` gives one. Any failure to get a response raises
:class:`~rtkit.ConnectionFailed`; a body cut short raises :class:`~rtkit.Disconnected`.
Proxies from the environment are not used.

    response = await http.request("GET", url, headers={"Accept": "text/event-stream"})
    async for chunk in response.chunks():
        ...
    await response.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl as ssl_module
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import h11

from rtkit.errors import ConnectionFailed, Disconnected, ProtocolError

USER_AGENT = "rtkit/0.1 (+https://pypi.org/project/rtkit/)"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
READ_SIZE = 64 * 1024


class Response:
    """A response whose head has arrived; the body is read with :meth:`chunks` or
    :meth:`read`. ``headers`` has lowercase names (repeated headers joined by ", ")."""

    def __init__(self, url: str, status: int, reason: str, headers: dict[str, str],
                 conn: h11.Connection, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self._conn = conn
        self._reader = reader
        self._writer = writer
        self._done = False

    async def chunks(self, read_size: int = READ_SIZE) -> AsyncIterator[bytes]:
        """The body, as it arrives. Raises :class:`~rtkit.Disconnected` if the connection
        ends before the body does."""
        conn, reader = self._conn, self._reader
        while not self._done:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._done = True
                raise Disconnected(f"the response was cut short: {exc}") from None
            if event is h11.NEED_DATA:
                try:
                    data = await reader.read(read_size)
                except OSError as exc:
                    self._done = True
                    raise Disconnected(f"connection lost: {exc}") from None
                conn.receive_data(data)
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._done = True

    async def read(self, limit: int = 1024 * 1024) -> bytes:
        """The whole body (at most ``limit`` bytes are kept)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            if size < limit:
                parts.append(chunk[: limit - size])
            size += len(chunk)
        return b"".join(parts)

    def abort(self) -> None:
        """Drop the connection now (a reader waiting in :meth:`chunks` then stops)."""
        self._done = True
        self._writer.transport.abort()

    async def close(self) -> None:
        self._done = True
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} {self.url}>"


async def request(method: str, url: str, *, headers: Mapping[str, str] | None = None,
                  body: bytes | None = None, ssl: ssl_module.SSLContext | None = None,
                  timeout: float = 10.0, max_redirects: int = 5) -> Response:
    """Send one request and return once the response head has arrived (within
    ``timeout`` seconds, redirects included)."""
    try:
        async with asyncio.timeout(timeout):
            for _ in range(max_redirects + 1):
                response = await _exchange(method, url, headers or {}, body, ssl)
                location = response.headers.get("location")
                if response.status not in REDIRECTS or location is None:
                    return response
                await response.close()
                url = urljoin(url, location)
                if response.status == 303 or (response.status in (301, 302)
                                              and method == "POST"):
                    method, body = "GET", None
    except TimeoutError:
        raise ConnectionFailed(f"no response from {url} within {timeout:g} s") from None
    raise ConnectionFailed(f"more than {max_redirects} redirects from {url}")


async def _exchange(method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                    ssl: ssl_module.SSLContext | None) -> Response:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectionFailed(f"cannot request {url!r}: give an http:// or https:// URL")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname
    context = (ssl or ssl_module.create_default_context()) if secure else None
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host if secure else None,
            limit=READ_SIZE * 2)
    except OSError as exc:  # refused, unreachable, TLS failures (ssl.SSLError is an OSError)
        raise ConnectionFailed(f"cannot connect to {url}: {exc}") from None
    default_port = port == (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    names = {k.lower() for k in headers}
    sent: list[tuple[str, str]] = [("Host", host if default_port else f"{host}:{port}")]
    if "user-agent" not in names:
        sent.append(("User-Agent", USER_AGENT))
    if "accept-encoding" not in names:
        sent.append(("Accept-Encoding", "identity"))  # no decompression here
    sent.extend(headers.items())
    if body is not None:
        sent.append(("Content-Length", str(len(body))))
    conn = h11.Connection(h11.CLIENT)
    try:
        out = conn.send(h11.Request(method=method, target=target, headers=sent))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await writer.drain()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
                continue
            if isinstance(event, h11.Response):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionFailed(f"{url} closed the connection without a response")
            # h11.InformationalResponse (1xx): keep reading
    except (h11.ProtocolError, OSError) as exc:
        writer.transport.abort()
        raise ConnectionFailed(f"bad response from {url}: {exc}") from None
    except BaseException:
        writer.transport.abort()
        raise
    found: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text
    return Response(url, event.status_code, event.reason.decode("latin-1"), found, conn,
                    reader, writer)


async def get_json(url: str, *, headers: Mapping[str, str] | None = None,
                   ssl: ssl_module.SSLContext | None = None, timeout: float = 10.0,
                   limit: int = 16 * 1024 * 1024) -> Any:
    """GET ``url`` and decode its JSON body (e.g. a REST snapshot to resync a feed after a
    gap). Raises :class:`~rtkit.ConnectionFailed` unless the status is 200 and
    :class:`~rtkit.ProtocolError` (40001) if the body is not JSON."""
    response = await request("GET", url, headers={"Accept": "application/json",
                                                  **(headers or {})}, ssl=ssl, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            body = await response.read(limit)
    except TimeoutError:
        raise ConnectionFailed(f"the body of {url} took more than {timeout:g} s") from None
    finally:
        await response.close()
    if response.status != 200:
        raise ConnectionFailed(f"{url} answered HTTP {response.status} {response.reason}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"{url} did not answer JSON: {exc}", code=40001) from None


class KeepAlive:
    """Requests to one origin, one at a time, on one HTTP/1.1 connection kept open between
    them (a new one is opened when the server or a proxy closed it). No retries: a request
    that fails raises :class:`~rtkit.ConnectionFailed` (and the connection is dropped)."""

    def __init__(self, url: str, ssl: ssl_module.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectionFailed(f"cannot request {url!r}: give an http:// or https:// URL")
        self.url = url
        self.secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.secure else 80)
        default = self.port == (443 if self.secure else 80)
        self.authority = self.host if default else f"{self.host}:{self.port}"
        self._ssl = ssl
        self._conn: h11.Connection | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connections = 0  # opened so far
        self.bytes_out = 0
        self.bytes_in = 0

    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes = b"", limit: int = 1024 * 1024
                      ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; returns (status, headers with lowercase names, body)."""
        if self._writer is None or self._writer.transport.is_closing():
            await self._open()
        conn, reader, writer = self._conn, self._reader, self._writer
        assert conn is not None and reader is not None and writer is not None
        sent = [("Host", self.authority), ("User-Agent", USER_AGENT),
                ("Content-Length", str(len(body))), *headers.items()]
        try:
            out = conn.send(h11.Request(method=method, target=target, headers=sent))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            writer.write(out)
            self.bytes_out += len(out)
            status, found, parts, size = 0, {}, [], 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(READ_SIZE)
                    self.bytes_in += len(data)
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        key = name.decode("latin-1").lower()
                        found[key] = value.decode("latin-1")
                elif isinstance(event, h11.Data):
                    if size < limit:
                        parts.append(bytes(event.data)[: limit - size])
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionFailed(f"{self.url} closed the connection")
        except (h11.ProtocolError, OSError) as exc:
            self.abort()
            raise ConnectionFailed(f"request to {self.url} failed: {exc}") from None
        except BaseException:
            self.abort()
            raise
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self.abort()
        return status, found, b"".join(parts)

    async def _open(self) -> None:
        context = (self._ssl or ssl_module.create_default_context()) if self.secure else None
        try:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=context,
                server_hostname=self.host if self.secure else None, limit=READ_SIZE * 2)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {exc}") from None
        self._conn = h11.Connection(h11.CLIENT)
        self.connections += 1

    def abort(self) -> None:
        """Drop the connection now (the next request opens another)."""
        writer, self._writer = self._writer, None
        self._reader = self._conn = None
        if writer is not None:
            writer.transport.abort()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        self._reader = self._conn = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
