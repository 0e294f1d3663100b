"""The ``rtkit`` command: ``rtkit serve`` runs a standalone broker for a workshop room;
``rtkit token`` signs a token with a key (for handing out to participants)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence

from rtkit._netaddr import listening_lines
from rtkit.aio.broker import Broker
from rtkit.core.broker import BrokerConfig
from rtkit.core.tokens import ApiKey, issue_token


def _capability(text: str) -> tuple[str, list[str]]:
    pattern, sep, ops = text.partition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError("use PATTERN=op,op (e.g. 'chat:*=publish,subscribe')")
    return pattern, [op for op in ops.split(",") if op]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a broker until Ctrl-C")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--key", help="root API key '<id>:<secret>' (default: a new random key)")
    s.add_argument("--heartbeat-interval", type=float, default=15.0, metavar="SECONDS")
    s.add_argument("--connection-state-ttl", type=float, default=120.0, metavar="SECONDS")
    s.add_argument("--history-size", type=int, default=1000)
    s.add_argument("--max-message-size", type=int, default=64 * 1024, metavar="BYTES")
    s.add_argument("--publish-rate", type=float, default=1000.0, metavar="PER_SECOND")
    s.add_argument("--log-level", default="WARNING")
    t = sub.add_parser("token", help="print a token signed with a key")
    t.add_argument("--key", required=True, help="the API key '<id>:<secret>' that signs")
    t.add_argument("--client-id")
    t.add_argument("--capability", action="append", type=_capability, default=[],
                   metavar="PATTERN=OPS", help="e.g. 'chat:*=publish,subscribe' (repeatable)")
    t.add_argument("--ttl", type=float, default=3600.0, metavar="SECONDS")
    return p


async def _serve(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    config = BrokerConfig(
        heartbeat_interval=args.heartbeat_interval,
        connection_state_ttl=args.connection_state_ttl,
        history_size=args.history_size,
        max_message_size=args.max_message_size,
        publish_rate=args.publish_rate,
    )
    broker = Broker(config, ApiKey.parse(args.key) if args.key else None)
    await broker.start(args.host, args.port)
    # --host 0.0.0.0: print the addresses participants can use, not ws://0.0.0.0
    for line in listening_lines(args.host, broker.port, broker.url):
        print(line, flush=True)
    print(f"root key: {broker.root_key.value}", flush=True)
    print("press Ctrl-C to stop", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.stop()
    print("rtkit broker stopped", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            asyncio.run(_serve(args))
        except OSError as exc:
            print(f"rtkit: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"rtkit: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        key = ApiKey.parse(args.key)
        caps = dict(args.capability) or None
        print(issue_token(key, now=time.time(), client_id=args.client_id, capabilities=caps,
                          ttl=args.ttl))
    except ValueError as exc:
        print(f"rtkit: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
