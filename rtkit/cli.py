"""The ``rtkit`` command: ``rtkit serve`` runs a standalone broker for a workshop room;
``rtkit token`` signs a token with a key (for handing out to participants).

Keys are secrets: give them in the ``RTKIT_KEY`` environment variable or in a file
(``--key-file``), never on the command line, where every user of the machine can read them
in the process list."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import sys
import time
from collections.abc import Sequence

from rtkit._netaddr import listening_lines
from rtkit.aio.broker import Broker
from rtkit.core.config import BrokerConfig
from rtkit.core.tokens import ApiKey, issue_token

KEY_ENV = "RTKIT_KEY"


def _capability(text: str) -> tuple[str, list[str]]:
    pattern, sep, ops = text.partition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError("use PATTERN=op,op (e.g. 'chat:*=publish,subscribe')")
    return pattern, [op for op in ops.split(",") if op]


def _add_key_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--key-file", metavar="PATH",
                   help=f"a file holding {what} '<id>:<secret>' (or set {KEY_ENV})")
    p.add_argument("--key", help=f"{what} on the command line: visible to every user of this "
                                 f"machine in the process list; prefer {KEY_ENV} or --key-file")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a broker until Ctrl-C")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    _add_key_options(s, "the root API key (default: a new random key)")
    s.add_argument("--certfile", metavar="PEM", help="serve TLS (wss://) with this certificate")
    s.add_argument("--keyfile", metavar="PEM", help="the certificate's private key")
    s.add_argument("--heartbeat-interval", type=float, default=15.0, metavar="SECONDS")
    s.add_argument("--connection-state-ttl", type=float, default=120.0, metavar="SECONDS")
    s.add_argument("--history-size", type=int, default=1000,
                   help="most messages one history request or rewind returns")
    s.add_argument("--max-message-size", type=int, default=64 * 1024, metavar="BYTES")
    s.add_argument("--publish-rate", type=float, default=1000.0, metavar="PER_SECOND",
                   help="operations a second per connection (publish and every other)")
    # Room defaults: stricter per address than the embedded broker's (one machine, trusted).
    s.add_argument("--max-connections", type=int, default=10_000)
    s.add_argument("--max-connections-per-address", type=int, default=32)
    s.add_argument("--connection-attempt-rate", type=float, default=5.0, metavar="PER_SECOND",
                   help="handshakes a second from one address (bursts of 4x, at least 20)")
    s.add_argument("--allowed-origin", action="append", default=None, metavar="ORIGIN",
                   help="a web origin whose pages may connect (repeatable; default: any)")
    s.add_argument("--backplane", metavar="REDIS_URL",
                   help="join a cluster: share channels with every broker started with this "
                        "Redis URL (redis://host:port/db); give all nodes the same key")
    s.add_argument("--node-timeout", type=float, default=15.0, metavar="SECONDS",
                   help="with --backplane: a node silent this long is gone (its members "
                        "leave)")
    s.add_argument("--log-level", default="WARNING")
    t = sub.add_parser("token", help="print a token signed with a key")
    _add_key_options(t, "the API key that signs")
    t.add_argument("--client-id")
    t.add_argument("--capability", action="append", type=_capability, default=[],
                   metavar="PATTERN=OPS", help="e.g. 'chat:*=publish,subscribe' (repeatable)")
    t.add_argument("--ttl", type=float, default=3600.0, metavar="SECONDS")
    return p


def _read_key(args: argparse.Namespace, required: bool) -> ApiKey | None:
    """The key from --key-file, --key (with a warning) or $RTKIT_KEY, in that order."""
    given = [name for name in ("key_file", "key") if getattr(args, name)]
    if len(given) > 1:
        raise ValueError("give the key once: --key-file or --key")
    if args.key_file:
        try:
            with open(args.key_file, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the key file: {exc}") from None
    elif args.key:
        print(f"rtkit: warning: --key shows the secret in the process list to every user of "
              f"this machine; set {KEY_ENV} or use --key-file", file=sys.stderr, flush=True)
        value = args.key
    else:
        value = os.environ.get(KEY_ENV, "").strip()
    if not value:
        if required:
            raise ValueError(f"no key: set {KEY_ENV}=<id>:<secret> or use --key-file PATH")
        return None
    return ApiKey.parse(value)


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.certfile and not args.keyfile:
        return None
    if not args.certfile:
        raise ValueError("--keyfile needs --certfile")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the certificate: {exc}") from None
    return context


async def _serve(args: argparse.Namespace, key: ApiKey | None,
                 tls: ssl.SSLContext | None) -> None:
    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    config = BrokerConfig(
        heartbeat_interval=args.heartbeat_interval,
        connection_state_ttl=args.connection_state_ttl,
        history_size=args.history_size,
        max_message_size=args.max_message_size,
        publish_rate=args.publish_rate,
        publish_burst=max(1, int(args.publish_rate * 2)),
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        connection_attempt_rate=args.connection_attempt_rate,
        connection_attempt_burst=max(20, int(args.connection_attempt_rate * 4)),
        allowed_origins=tuple(args.allowed_origin) if args.allowed_origin else None,
        node_timeout=args.node_timeout,
    )
    if args.backplane and key is None:
        print(f"rtkit: warning: this node made up its own root key; tokens signed by the "
              f"other nodes' keys will be refused here: give every node the same key "
              f"({KEY_ENV} or --key-file)", file=sys.stderr, flush=True)
    broker = Broker(config, key, args.backplane)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before saying we are up
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await broker.start(args.host, args.port, ssl=tls)
    # --host 0.0.0.0: print the addresses participants can use, not ws://0.0.0.0
    for line in listening_lines(args.host, broker.port, broker.url):
        print(line, flush=True)
    if broker.node is not None:
        print(f"node {broker.node.node_id} on backplane {args.backplane}", flush=True)
    print(f"root key: {broker.root_key.value}", flush=True)
    print("press Ctrl-C to stop", file=sys.stderr, flush=True)
    await stop.wait()
    await broker.stop()
    print("rtkit broker stopped", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            key, tls = _read_key(args, required=False), _tls(args)
            asyncio.run(_serve(args, key, tls))
        except ConnectionError as exc:  # (the backplane; before OSError, its base)
            print(f"rtkit: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"rtkit: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"rtkit: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        signing = _read_key(args, required=True)
        assert signing is not None
        caps = dict(args.capability) or None
        print(issue_token(signing, now=time.time(), client_id=args.client_id,
                          capabilities=caps, ttl=args.ttl))
    except ValueError as exc:
        print(f"rtkit: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
