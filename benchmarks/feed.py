"""Feed benchmark: records per second one ``rtkit.Feed`` parses and delivers to a callback,
against a plain ``websockets`` client reading the same frames, measured in one run.

A server process sends N ticker records (about 250 bytes of JSON each, the shape of an
exchange's ticker) as fast as the socket takes them, as WebSocket frames or as Server-Sent
Events. This process is the client, on one core (pinned to CPU 0 when the OS allows; the
server is pinned to CPU 1): it connects, and the clock runs from the end of the handshake to
the N-th record handed to a callback. Each client runs ``--rounds`` times, interleaved; the
best round counts (the least disturbed by other work on the machine).

Clients:
  websockets, count only      ``async for frame in ws: n += 1`` (the transport's ceiling)
  websockets + json           the same, ``json.loads`` each frame and call the callback
  Feed (ws)                   ``rtkit.Feed(url)`` with ``feed.subscribe(callback)``
  Feed (ws) + sequences       ... with ``sequence="sequence", sequence_key="product_id",
                              timestamp="time"`` (gap/duplicate checks, latency stamps)
  Feed (sse)                  the same records as Server-Sent Events, parsed by
                              ``rtkit.core.sse`` over the h11 client

    python benchmarks/feed.py                 # 200,000 records, 3 rounds
    python benchmarks/feed.py --quick         # a fast smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ------------------------------------------------------------------ server (child process)


def _records(n: int) -> list[bytes]:
    from rtkit.feed.samples import Ticker

    ticker = Ticker(("BTC-USD", "ETH-USD", "SOL-USD"), seed=1)
    start = time.time()
    return [json.dumps(ticker.next(start + i / 1000), separators=(",", ":")).encode()
            for i in range(n)]


def _ws_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        head = bytes([0x81, size])
    elif size < 65536:
        head = bytes([0x81, 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x81, 127]) + size.to_bytes(8, "big")
    return head + payload


async def _serve(n: int) -> None:
    records = _records(n)
    ws_blob = b"".join(_ws_frame(r) for r in records)
    sse_blob = b"".join(b"data: " + r + b"\n\n" for r in records)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"upgrade: websocket" in head.lower():
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            blob = ws_blob
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
            blob = sse_blob
        for i in range(0, len(blob), 1 << 20):
            writer.write(blob[i:i + (1 << 20)])
            await writer.drain()
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):  # until the client hangs up...
                if blob is ws_blob and data[0] & 0x0F == 8:  # ...or sends a close frame
                    writer.write(b"\x88\x00")  # (answered, so its close is quick)
                    await writer.drain()
                    break
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until told


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


# ------------------------------------------------------------------ clients (this process)


async def _raw_count(url: str, n: int) -> float:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, ping_interval=None, max_queue=64) as ws:
        start, count = time.perf_counter(), 0
        async for _ in ws:
            count += 1
            if count == n:
                return time.perf_counter() - start
    raise RuntimeError("the stream ended early")


async def _raw_json(url: str, n: int) -> float:
    from websockets.asyncio.client import connect

    got: list[object] = []
    callback, loads = got.append, json.loads
    async with connect(url, compression=None, ping_interval=None, max_queue=64) as ws:
        start = time.perf_counter()
        async for frame in ws:
            callback(loads(frame))
            if len(got) == n:
                return time.perf_counter() - start
    raise RuntimeError("the stream ended early")


def _feed_client(**options: object) -> Callable[[str, int], Awaitable[float]]:
    async def run(url: str, n: int) -> float:
        import rtkit

        done = asyncio.Event()
        count = 0

        def callback(record: object) -> None:
            nonlocal count
            count += 1
            if count == n:
                done.set()

        feed = rtkit.Feed(url, heartbeat=None, **options)  # type: ignore[arg-type]
        feed.subscribe(callback)
        await feed.connect()
        start = time.perf_counter()
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - start
        assert feed.bad_frame_count == 0 and not feed.gaps and feed.duplicates == 0
        await feed.close()
        return elapsed
    return run


SEQUENCES = {"sequence": "sequence", "sequence_key": "product_id", "timestamp": "time"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5,000 records, 1 round")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _pin(1)
        asyncio.run(_serve(args.serve))
        return
    n, rounds = (5_000, 1) if args.quick else (args.records, args.rounds)
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        _pin(0)
        ws_url, sse_url = f"ws://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/events"
        clients: list[tuple[str, str, Callable[[str, int], Awaitable[float]]]] = [
            ("websockets, count only", ws_url, _raw_count),
            ("websockets + json", ws_url, _raw_json),
            ("Feed (ws)", ws_url, _feed_client()),
            ("Feed (ws) + sequences", ws_url, _feed_client(**SEQUENCES)),
            ("Feed (sse)", sse_url, _feed_client()),
        ]
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, url, client in clients:
                elapsed = asyncio.run(client(url, n))
                best[name] = min(best.get(name, float("inf")), elapsed)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)
    rates = {name: n / seconds for name, seconds in best.items()}
    baseline = rates["websockets + json"]
    print(f"{n:,} ticker records, best of {rounds} round(s), client on one core")
    print(f"{'client':<26}{'records/s':>12}{'µs/record':>11}{'vs websockets+json':>20}")
    for name, rate in rates.items():
        print(f"{name:<26}{rate:>12,.0f}{1e6 / rate:>11.2f}{rate / baseline:>19.2f}x")
    print("ratios: " + ", ".join(f"{name}={rate / baseline:.2f}" for name, rate in rates.items()
                                 if name.startswith("Feed")))


if __name__ == "__main__":
    main()
