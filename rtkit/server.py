"""``rtkit.serve()``: the embedded broker in a background thread with its own event loop.

A notebook cell that blocks (``time.sleep``, a long computation) stalls every task in the
kernel's loop; the broker lives in its own thread so it keeps serving other clients.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from dataclasses import fields
from types import TracebackType
from typing import Any

from rtkit import _rerun
from rtkit._thread import LoopThread
from rtkit.aio.broker import Broker
from rtkit.core.broker import BrokerConfig
from rtkit.core.tokens import ApiKey, Capability, CapabilityMap, issue_token

_OPTION_NAMES = frozenset(f.name for f in fields(BrokerConfig))


class Server:
    """A running broker. Use :func:`serve` to make one."""

    def __init__(self, broker: Broker, runner: LoopThread) -> None:
        self._broker = broker
        self._runner = runner
        self._loop = runner.loop

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to, e.g. ``ws://127.0.0.1:54321`` (``wss://``
        when serving TLS)."""
        return self._broker.url

    @property
    def port(self) -> int:
        return self._broker.port

    @property
    def root_key(self) -> str:
        """The root API key (every capability). For trusted code only: never share it."""
        return self._broker.root_key.value

    @property
    def config(self) -> BrokerConfig:
        return self._broker.config

    @property
    def running(self) -> bool:
        return self._runner.alive

    def issue_token(
        self,
        client_id: str | None = None,
        capabilities: CapabilityMap | None = None,
        ttl: float = 3600.0,
    ) -> str:
        """A token signed with the root key: ``capabilities`` maps channel patterns to
        operations (``{"chat:*": ["publish", "subscribe"]}``); ``ttl`` is in seconds."""
        return issue_token(
            self._broker.root_key, now=time.time(), client_id=client_id,
            capabilities=capabilities, ttl=ttl,
        )

    def create_key(self, capabilities: CapabilityMap, key_id: str | None = None) -> str:
        """A new API key limited to ``capabilities`` (its tokens are limited to them too).
        In a cluster every node accepts it (it is stored in the backplane)."""
        key = ApiKey.generate(key_id, Capability.of(capabilities))
        self._runner.call(lambda: self._broker.add_key(key))
        return key.value

    def revoke_key(self, key_id: str) -> int:
        """Refuse the key and every token it signed from now on, and end the live connections
        that use them (error 40108). Returns how many connections were ended here (in a
        cluster every node does the same with its own)."""
        return self._runner.call(lambda: self._broker.revoke_key(key_id))

    def expire_tokens(self, client_id: str | None = None) -> int:
        """End, now, the authorization of the connections of ``client_id`` (all if None), as
        if their token had run out (error 40140; for teaching renewal). A token client renews
        its token and resumes; a client with an API key (also included) presents it again.
        Returns how many connections were affected."""
        return self._runner.call(lambda: self._broker.expire_tokens(client_id))

    def stats(self) -> dict[str, Any]:
        """Live counters from the broker thread, and under ``"resources"`` each bounded
        resource as ``{"used": ..., "limit": ...}``: connections (total and per address),
        channels (total and created per client), stored history bytes (broker and largest
        channel), presence memberships, resumable connections, outbound buffer bytes.

        A node of a cluster adds ``"nodes"``: every node the backplane knows, each with its
        ``node`` id, ``url``, ``connections``, ``published`` and ``received`` counters and
        ``publish_rate``/``receive_rate`` (messages a second), and ``"cluster"``: the same
        list with this node's id, the backplane's URL (no password), whether it is connected,
        ``node_timeout``, the channels it follows and its counters (gaps repaired,
        duplicates dropped, messages skipped, epochs, rebases, reconnects, errors); and
        ``"moved_here"``: connections of other nodes continued here (their publish ids kept
        their scope)."""
        return self._runner.call(self._broker.stats)

    def stop(self, timeout: float = 10.0) -> None:
        """Close every client connection and stop the broker thread. Safe to call twice."""
        self._runner.stop(timeout)

    def crash(self, timeout: float = 10.0) -> None:
        """Stop at once, as if the process had died: every connection is aborted without a
        closing handshake and, in a cluster, the backplane is not told (the other nodes
        remove this node's members after ``node_timeout``). For showing and testing what
        clients do when a node dies."""
        if self._runner.alive:
            asyncio.run_coroutine_threadsafe(self._broker.crash(), self._loop).result(timeout)
        self._runner.stop(timeout)

    @property
    def node_id(self) -> str | None:
        """This node's id in its cluster (None without a backplane)."""
        return self._broker.node.node_id if self._broker.node is not None else None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<rtkit.Server {self.url} {state}>"


async def _value(fn: Any) -> Any:
    return fn()


def serve(
    host: str = "127.0.0.1", port: int = 0, *, root_key: str | None = None,
    ssl: ssl_module.SSLContext | None = None, backplane: str | None = None, **options: Any
) -> Server:
    """Start a broker in a background thread and return once it is listening.

    Options are the fields of :class:`rtkit.BrokerConfig` (``heartbeat_interval``,
    ``connection_state_ttl``, ``max_channel_history_bytes``, ``max_message_size``,
    ``publish_rate``, ``max_connections_per_address``, ``allowed_origins``, ...).
    ``root_key`` fixes the root API key (``"<id>:<secret>"``); by default one is generated.
    ``ssl`` (an :class:`ssl.SSLContext` for a server, with its certificate loaded) serves
    TLS: the URL is then ``wss://``. Re-running the notebook cell that called ``serve()``
    stops the server it started before.

    ``backplane="redis://host:port/db"`` makes this broker a **node of a cluster**: every
    broker started with the same backplane shares its channels (one serial sequence per
    channel, assigned in Redis; history, idempotent publishes and presence shared), so a
    client may publish on one node, subscribe on another, and resume on any. Nodes must
    share their keys: start them with the same ``root_key``. A node that stops refreshing
    its record for ``node_timeout`` seconds (15) is gone and its presence members leave.
    Needs a reachable Redis (``rtkit.aio.backplane.BackplaneUnavailable`` otherwise).
    """
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown broker option(s): {', '.join(sorted(unknown))}")
    config = BrokerConfig(**options)
    key = ApiKey.parse(root_key) if root_key else None
    broker = Broker(config, key, backplane)
    runner = LoopThread(f"rtkit-broker-{port}", lambda: broker.start(host, port, ssl),
                        broker.stop)
    server = Server(broker, runner)
    _rerun.replace_previous("server", server, Server.stop)
    return server
