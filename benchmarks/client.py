"""Client decode benchmark: messages per second one ``rtkit.Client`` decodes and delivers,
against a plain ``websockets`` client reading the same stream, measured in one run.

A fake broker in a separate process (pinned to CPU 1 when the machine has two or more; this
process, the client, to CPU 0) speaks just enough of the protocol: it answers ``connect``
with a valid ``connected`` frame and ``attach`` with ``attached`` (serial 0), then replays
``message`` frames of that channel, encoded before the run, with consecutive serials from 1
and 1, 10 or 100 messages per frame, as fast as the socket takes them. Each message is about
110 bytes (an id, a name, ``{"price": ..., "size": ..., "side": ...}``, serial, timestamp,
client id), as the broker writes them.

Clients, each on a fresh connection, in turn:

  plain, read only        ``async for frame in ws`` with ``websockets``' asyncio client,
                          counting the messages each frame holds without decoding them: the
                          transport's ceiling, for reference only
  plain + json            the baseline: the same client ``json.loads`` each frame (stdlib)
                          and hands each message (a dict) to a sync callback; the least any
                          consumer of the stream must do
  rtkit callback          ``await channel.subscribe(callback)`` with a sync callback: the
                          full client (strict decoding, continuity checks, delivery counters)
  rtkit iterator          ``async for msg in await channel.subscribe()``

The callbacks only count. A run measures the steady state: from ``--warmup`` seconds after
the attach, the message count is sampled every 50 ms for ``--seconds`` seconds; the rate is
messages per second of wall-clock time, and (last columns) per second of this process's CPU
time, a figure that other load on a shared machine disturbs less. rtkit's
client checks serials, so it gets the stream (``--messages`` long) once, and a client that
reaches its end has a shorter window (shown); the plain clients check nothing, so the fake
broker replays the same frames to them in a loop. Each case is run ``--repeats`` times,
interleaved, and the median is reported, with the ratios to ``plain + json``.

    python benchmarks/client.py                # 1, 10 and 100 messages per frame
    python benchmarks/client.py --quick        # a fast smoke run
    python benchmarks/client.py --per-frame 1 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = "bench:" + "b" * 40
CHUNK = 256 * 1024  # bytes of whole frames written at a time


# ------------------------------------------------------------------ fake broker (child)


def _ws_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 65536:
        head = b"\x81\x7e" + size.to_bytes(2, "big")
    else:
        head = b"\x81\x7f" + size.to_bytes(8, "big")
    return head + payload


MESSAGE = (b'{"id":"pub-7:%d","name":"tick","data":{"price":%d.%d,"size":%d,"side":"%s"},'
           b'"serial":%d,"timestamp":%d,"client_id":"publisher-7"}')


def _stream(channel: str, per_frame: int, total: int) -> list[memoryview]:
    """``total`` messages as ``message`` frames, cut into chunks of whole frames."""
    head = b'{"action":"message","channel":"' + channel.encode() + b'","messages":['
    base = 1_764_160_000_000
    frames, chunks, size = [], [], 0
    for first in range(1, total + 1, per_frame):
        body = b",".join(
            MESSAGE % (s, 27_000 + s % 997, s % 10, 1 + s % 5, b"buy" if s & 1 else b"sell",
                       s, base + s // 50)
            for s in range(first, min(first + per_frame, total + 1)))
        frame = _ws_frame(head + body + b"]}")
        frames.append(frame)
        size += len(frame)
        if size >= CHUNK:
            chunks.append(b"".join(frames))
            frames, size = [], 0
    if frames:
        chunks.append(b"".join(frames))
    return [memoryview(c) for c in chunks]


class FakeBroker(asyncio.Protocol):
    """One connection: websockets' sans-I/O server for the handshake and the client's
    frames; the stream is written as pre-encoded chunks, as fast as the socket drains."""

    def __init__(self, streams: dict[str, list[memoryview]]) -> None:
        from websockets.server import ServerProtocol

        self.streams = streams
        self.ws = ServerProtocol(max_size=1 << 20)
        self.transport: asyncio.Transport | None = None
        self.chunks: list[memoryview] = []
        self.pos = 0
        self.loop = False  # start the stream again at its end (serials repeat)
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=4 * CHUNK)

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Request

        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self.ws.send_response(self.ws.accept(event))
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self._frame(json.loads(event.data))
            elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self.chunks = []  # the client is leaving: stop the stream
        self._flush()

    def _frame(self, frame: dict[str, Any]) -> None:
        action, ref = frame.get("action"), frame.get("ref")
        if action == "connect":
            self._send({"action": "connected", "ref": ref, "connection_id": "bench-1",
                        "connection_key": "bench-1!k", "client_id": None,
                        "heartbeat_interval": 15_000, "connection_state_ttl": 120_000,
                        "server_time": int(time.time() * 1000),
                        "limits": {"max_message_size": 65536, "max_frame_size": 262144,
                                   "max_depth": 64, "publish_rate": 5000,
                                   "publish_burst": 10000, "history_size": 1000}})
        elif action == "attach":
            channel = frame["channel"]
            self._send({"action": "attached", "ref": ref, "channel": channel, "serial": 0,
                        "epoch": "bench"})
            self.chunks, self.pos = self.streams[channel], 0
            self.loop = bool(frame.get("bench_loop"))
        elif action == "detach":
            self.chunks = []
            self._send({"action": "detached", "ref": ref, "channel": frame["channel"]})
        elif action == "heartbeat" and ref is not None:
            self._send({"action": "heartbeat", "ref": ref})
        elif action == "close":
            self.chunks = []
            self._send({"action": "closed", "ref": ref})

    def _send(self, obj: dict[str, Any]) -> None:
        self.ws.send_text(json.dumps(obj, separators=(",", ":")).encode())

    def _flush(self) -> None:
        """The protocol's own output (handshake, replies, close) between whole chunks,
        then more of the stream."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()
                return
        self._pump()

    def _pump(self) -> None:
        transport, chunks = self.transport, self.chunks
        while not self.paused and self.pos < len(chunks) and transport is not None:
            transport.write(chunks[self.pos])
            self.pos += 1
            if self.loop and self.pos == len(chunks):
                self.pos = 0

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


#: Stream lengths by messages per frame: enough for a fast client's warm-up and window.
LENGTHS = {1: 1_200_000, 10: 2_000_000}
LONGEST = 3_000_000


def _length(per_frame: int, messages: int) -> int:
    return messages or LENGTHS.get(per_frame, LONGEST)


async def _serve(per_frames: list[int], messages: int) -> None:
    streams = {f"bench:{n}": _stream(f"bench:{n}", n, _length(n, messages))
               for n in per_frames}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeBroker(streams), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until told


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


# ------------------------------------------------------------------ measuring


@dataclass
class Run:
    rate: float  # messages per second in the window
    window: float  # seconds measured
    cpu_rate: float  # messages per second of this process's CPU time in the window


class Meter:
    """Samples ``count()`` every 50 ms from the attach; done after warm-up + window, or
    when the stream has run out (only samples taken while messages remained count)."""

    def __init__(self, count: Callable[[], int], total: int, warmup: float,
                 seconds: float) -> None:
        self.count, self.total = count, total  # (total: 0 for an endless stream)
        self.warmup, self.seconds = warmup, seconds
        self.samples: list[tuple[float, float, int]] = []
        self.done: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self.start = 0.0

    def begin(self) -> None:
        self.start = time.perf_counter()
        self.samples.append((self.start, time.process_time(), self.count()))
        asyncio.get_running_loop().call_later(0.05, self._tick)

    def _tick(self) -> None:
        now, cpu, count = time.perf_counter(), time.process_time(), self.count()
        ended = 0 < self.total <= count
        if not ended:  # (a sample taken after the end would count idle time)
            self.samples.append((now, cpu, count))
        if now - self.start >= self.warmup + self.seconds or ended:
            self._finish()
        else:
            asyncio.get_running_loop().call_later(0.05, self._tick)

    def _finish(self) -> None:
        steady = [s for s in self.samples if s[0] - self.start >= self.warmup]
        if len(steady) < 2:  # the stream ran out during the warm-up: count from the attach
            steady = self.samples
        if len(steady) < 2:
            self.done.set_exception(RuntimeError(
                f"the stream ({self.total:,} messages) ran out within 50 ms: raise --messages"))
            return
        (t0, cpu0, c0), (t1, cpu1, c1) = steady[0], steady[-1]
        self.done.set_result(Run((c1 - c0) / (t1 - t0), t1 - t0,
                                 (c1 - c0) / max(cpu1 - cpu0, 1e-9)))


async def _plain(url: str, channel: str, per_frame: int, meter: Callable[[Any], Meter],
                 decode: bool) -> Run:
    from websockets.asyncio.client import connect

    count = 0

    def callback(msg: Any) -> None:
        nonlocal count
        count += 1

    m = meter(lambda: count, 0)  # the stream loops: no end
    loads = json.loads
    # (the reader stops mid-stream: a short close timeout, as the stream fills its queue)
    async with connect(url, compression=None, ping_interval=None, close_timeout=0.2) as ws:
        await ws.send(json.dumps({"action": "connect", "ref": 1, "key": KEY}))
        assert loads(await ws.recv())["action"] == "connected"
        await ws.send(json.dumps({"action": "attach", "ref": 2, "channel": channel,
                                  "bench_loop": True}))
        assert loads(await ws.recv())["action"] == "attached"
        m.begin()

        async def read() -> None:
            nonlocal count
            if decode:
                async for frame in ws:
                    for msg in loads(frame)["messages"]:
                        callback(msg)
            else:
                async for _ in ws:
                    count += per_frame

        reader = asyncio.get_running_loop().create_task(read())
        try:
            return await m.done
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _plain_read_only(url: str, channel: str, per_frame: int,
                           meter: Callable[[Any], Meter]) -> Run:
    return await _plain(url, channel, per_frame, meter, decode=False)


async def _plain_json(url: str, channel: str, per_frame: int,
                      meter: Callable[[Any], Meter]) -> Run:
    return await _plain(url, channel, per_frame, meter, decode=True)


async def _rtkit(url: str, channel: str, per_frame: int, meter: Callable[[Any], Meter],
                 iterate: bool) -> Run:
    import rtkit

    count = 0

    def callback(msg: Any) -> None:
        nonlocal count
        count += 1

    m = meter(lambda: count)
    client = rtkit.Client(url, key=KEY)
    await client.connect()
    ch = client.channel(channel)
    try:
        if not iterate:
            m.begin()
            await ch.subscribe(callback)
            run = await m.done
        else:
            m.begin()
            sub = await ch.subscribe()

            async def read() -> None:
                async for msg in sub:
                    callback(msg)

            reader = asyncio.get_running_loop().create_task(read())
            try:
                run = await m.done
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            if sub.dropped:
                raise RuntimeError(f"the iterator dropped {sub.dropped} messages")
        if ch.continuity_losses or ch.duplicates_dropped:
            raise RuntimeError("the stream was not delivered whole")
    finally:
        await client.close()
    return run


async def _rtkit_callback(url: str, channel: str, per_frame: int,
                          meter: Callable[[Any], Meter]) -> Run:
    return await _rtkit(url, channel, per_frame, meter, iterate=False)


async def _rtkit_iterator(url: str, channel: str, per_frame: int,
                          meter: Callable[[Any], Meter]) -> Run:
    return await _rtkit(url, channel, per_frame, meter, iterate=True)


CLIENTS: dict[str, Callable[..., Awaitable[Run]]] = {
    "plain, read only": _plain_read_only,
    "plain + json": _plain_json,
    "rtkit callback": _rtkit_callback,
    "rtkit iterator": _rtkit_iterator,
}
BASELINE = "plain + json"


def _measure(client: Callable[..., Awaitable[Run]], url: str, per_frame: int, total: int,
             warmup: float, seconds: float) -> Run:
    async def go() -> Run:
        def meter(count: Callable[[], int], length: int = total) -> Meter:
            return Meter(count, length, warmup, seconds)
        return await asyncio.wait_for(
            client(url, f"bench:{per_frame}", per_frame, meter), 60 + warmup + seconds)
    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-frame", default="1,10,100",
                        help="messages per frame, comma-separated (default 1,10,100)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="steady-state window")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--messages", type=int, default=0,
                        help="length of each stream (default: 1.2, 2 and 3 million messages "
                             "at 1, 10 and 100 per frame)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    per_frames = [int(n) for n in args.per_frame.split(",")]
    if args.quick:
        args.repeats, args.seconds, args.warmup, args.messages = 1, 0.3, 0.1, 150_000
    if args.serve:
        _pin(1)
        asyncio.run(_serve(per_frames, args.messages))
        return
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "1", "--per-frame", args.per_frame,
         "--messages", str(args.messages)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    runs: dict[tuple[int, str], list[Run]] = {}
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        _pin(0)
        url = f"ws://127.0.0.1:{port}/"
        for _ in range(args.repeats):
            for per_frame in per_frames:
                for name, client in CLIENTS.items():
                    run = _measure(client, url, per_frame,
                                   _length(per_frame, args.messages), args.warmup,
                                   args.seconds)
                    runs.setdefault((per_frame, name), []).append(run)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)
    cpus = "client and fake broker pinned to separate CPUs" \
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1 else "unpinned"
    print(f"median of {args.repeats} run(s) of {args.seconds:g} s steady state after "
          f"{args.warmup:g} s; {cpus}")
    print(f"{'per frame':>9}  {'client':<18}{'msg/s':>11}{'µs/msg':>9}{'window s':>10}"
          f"{'vs plain+json':>15}{'msg/CPU-s':>12}{'vs':>7}")
    summary, cpu_summary = [], []
    for per_frame in per_frames:
        case = {name: runs[(per_frame, name)] for name in CLIENTS}
        rate = {name: statistics.median(r.rate for r in rs) for name, rs in case.items()}
        cpu = {name: statistics.median(r.cpu_rate for r in rs) for name, rs in case.items()}
        for name in CLIENTS:
            window = min(r.window for r in case[name])
            print(f"{per_frame:>9}  {name:<18}{rate[name]:>11,.0f}{1e6 / rate[name]:>9.2f}"
                  f"{window:>10.2f}{rate[name] / rate[BASELINE]:>14.2f}x"
                  f"{cpu[name]:>12,.0f}{cpu[name] / cpu[BASELINE]:>6.2f}x")
        for figures, out in ((rate, summary), (cpu, cpu_summary)):
            out.append(f"{per_frame}/frame: callback="
                       f"{figures['rtkit callback'] / figures[BASELINE]:.2f} iterator="
                       f"{figures['rtkit iterator'] / figures[BASELINE]:.2f} "
                       f"iterator/callback="
                       f"{figures['rtkit iterator'] / figures['rtkit callback']:.2f}")
    print("ratios to plain + json: " + "; ".join(summary))
    print("per CPU-second (less sensitive to other load on the machine): "
          + "; ".join(cpu_summary))

if __name__ == "__main__":
    main()
