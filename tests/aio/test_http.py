"""The small HTTP/1.1 client (h11 on asyncio streams) against canned loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import rtkit
from rtkit.aio import http


@pytest.fixture
async def canned() -> AsyncIterator[tuple[dict[str, bytes], list[bytes], str]]:
    """A server answering by path from a dict; requests are recorded."""
    routes: dict[str, bytes] = {}
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        path = head.split(b" ")[1].decode()
        if path == "/silent":
            await asyncio.sleep(0.5)
        else:
            writer.write(routes.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield routes, seen, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_get_json_follows_redirects_and_sends_sane_headers(
        canned: tuple[dict[str, bytes], list[bytes], str]) -> None:
    routes, seen, base = canned
    routes["/old"] = b"HTTP/1.1 301 Moved\r\nLocation: /new?x=1\r\nContent-Length: 0\r\n\r\n"
    routes["/new?x=1"] = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
    assert await http.get_json(base + "/old", headers={"X-Test": "yes"}) == {"a": 1}
    assert seen[1].startswith(b"GET /new?x=1 HTTP/1.1\r\n")
    assert b"user-agent: rtkit/" in seen[1].lower() and b"x-test: yes" in seen[1].lower()


async def test_errors_are_typed(canned: tuple[dict[str, bytes], list[bytes], str]) -> None:
    routes, _, base = canned
    routes["/text"] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    routes["/cut"] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"
    routes["/loop"] = b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n"
    routes["/bad"] = b"NOT HTTP AT ALL\r\n\r\n"
    with pytest.raises(rtkit.ProtocolError, match="did not answer JSON"):
        await http.get_json(base + "/text")
    with pytest.raises(rtkit.ConnectionFailed, match="HTTP 404"):
        await http.get_json(base + "/missing")
    response = await http.request("GET", base + "/cut")
    with pytest.raises(rtkit.Disconnected, match="cut short"):
        await response.read()
    with pytest.raises(rtkit.ConnectionFailed, match="redirects"):
        await http.request("GET", base + "/loop", max_redirects=2)
    with pytest.raises(rtkit.ConnectionFailed, match="bad response"):
        await http.request("GET", base + "/bad")
    with pytest.raises(rtkit.ConnectionFailed, match=r"within 0\.2 s"):
        await http.request("GET", base + "/silent", timeout=0.2)
    with pytest.raises(rtkit.ConnectionFailed, match="cannot connect"):
        await http.request("GET", "http://127.0.0.1:9/")
    with pytest.raises(rtkit.ConnectionFailed, match="http:// or https://"):
        await http.request("GET", "ftp://127.0.0.1/")


async def test_post_sends_a_body_and_303_turns_into_get(
        canned: tuple[dict[str, bytes], list[bytes], str]) -> None:
    routes, seen, base = canned
    routes["/submit"] = b"HTTP/1.1 303 See Other\r\nLocation: /done\r\nContent-Length: 0\r\n\r\n"
    routes["/done"] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    response = await http.request("POST", base + "/submit", body=b"hello")
    assert response.status == 200 and await response.read() == b"ok"
    assert seen[0].startswith(b"POST /submit") and b"content-length: 5" in seen[0].lower()
    assert seen[1].startswith(b"GET /done")
