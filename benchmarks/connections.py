"""Idle connection memory: the broker's resident memory per open, authenticated connection.

The broker runs in its own process; this one opens N light WebSocket connections (see
``lightws.py``), each sends ``connect`` with the root key and waits for ``connected``, then the
connections stay idle. The figure is the growth of the broker's resident set size (RSS, from
/proc) divided by N, measured after a warm-up of 200 connections (imports, first-use caches)
that are part of the baseline.

    python benchmarks/connections.py                 # 10,000 connections
    python benchmarks/connections.py --quick         # 1,000: a smoke run

Target: under 16 KB per idle connection at 10,000 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightws import LightWS, open_light

KEY = "bench:" + "b" * 40
TARGET_KB = 16.0


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(n: int) -> None:
    from rtkit.aio.broker import Broker
    from rtkit.core.broker import BrokerConfig
    from rtkit.core.tokens import ApiKey

    wanted = {"max_connections": n + 1000, "max_connections_per_address": n + 1000,
              "connection_attempt_rate": 1e6, "connection_attempt_burst": n + 1000,
              "heartbeat_interval": 30.0}
    names = {f.name for f in fields(BrokerConfig)}
    config = BrokerConfig(**{k: v for k, v in wanted.items() if k in names})
    broker = Broker(config, ApiKey.parse(KEY))
    await broker.start("127.0.0.1", 0)
    print(broker.port, flush=True)
    loop = asyncio.get_running_loop()
    # One line on stdin asks for an RSS reading; EOF ends the process.
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            os._exit(0)
        print(json.dumps({"rss": _rss(os.getpid()), "stats": broker.stats()}, default=str),
              flush=True)


def _rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _open(url: str, count: int) -> list[LightWS]:
    out: list[LightWS] = []
    for start in range(0, count, 100):
        batch = await asyncio.gather(*(
            open_light(url, sample=False, count_marker=None)
            for _ in range(start, min(count, start + 100))
        ))
        for ws in batch:
            ws.send_json({"action": "connect", "ref": 0, "key": KEY})
        while any(ws.frames < 1 for ws in batch):
            await asyncio.sleep(0.005)
        out.extend(batch)
    return out


async def main_async(n: int) -> int:
    _raise_fd_limit()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None

    def reading() -> dict:
        proc.stdin.write("rss\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(proc.stdout.readline())  # type: ignore[union-attr]

    try:
        url = f"ws://127.0.0.1:{int(proc.stdout.readline())}"
        warm = await _open(url, 200)
        await asyncio.sleep(0.5)
        before = reading()
        conns = await _open(url, n)
        await asyncio.sleep(1.0)  # let the broker settle (first heartbeats, buffers)
        after = reading()
        connected = after["stats"]["connections"] - before["stats"]["connections"]
        per = (after["rss"] - before["rss"]) / n
        print(f"{'connections':>11} {'broker RSS before':>18} {'after':>10} {'per connection':>15}")
        print(f"{n:>11} {before['rss'] / 2**20:>15.1f} MiB {after['rss'] / 2**20:>6.1f} MiB "
              f"{per / 1000:>12.1f} KB")
        print(f"connected: {connected} of {n}")
        print(f"target: < {TARGET_KB:.0f} KB per idle connection; ratio to target: "
              f"{per / 1000 / TARGET_KB:.2f}")
        for ws in [*warm, *conns]:
            if ws.transport is not None:
                ws.transport.close()
        return 0 if connected == n else 1
    finally:
        proc.stdin.close()
        proc.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="1,000 connections: a smoke run")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        _raise_fd_limit()
        asyncio.run(_serve(args.serve))
        return 0
    return asyncio.run(main_async(1000 if args.quick else args.connections))


if __name__ == "__main__":
    sys.exit(main())
