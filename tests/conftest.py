"""Shared fixtures. Every timeout in the tests is multiplied by RTKIT_TEST_TIMEOUT_FACTOR
(default 1) so that a slow machine needs one setting, not edits to each test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import rtkit

FACTOR = float(os.environ.get("RTKIT_TEST_TIMEOUT_FACTOR", "1"))


def scaled(seconds: float) -> float:
    """A timeout scaled by the suite's single timing factor."""
    return seconds * FACTOR


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Wait (polling) until ``predicate()`` is true, failing after a scaled timeout."""
    deadline = asyncio.get_running_loop().time() + scaled(timeout)
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def within(aw: Awaitable[Any], timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(aw, scaled(timeout))


@pytest.fixture
def server() -> Iterator[rtkit.Server]:
    """A broker in its own thread with short timers."""
    with rtkit.serve(heartbeat_interval=0.5, connection_state_ttl=2.0) as srv:
        yield srv


@pytest.fixture
async def connect(server: rtkit.Server) -> AsyncIterator[Callable[..., Awaitable[rtkit.Client]]]:
    """Factory for connected clients (root key unless told otherwise), closed afterwards."""
    clients: list[rtkit.Client] = []

    async def make(**kwargs: Any) -> rtkit.Client:
        if not {"key", "token", "auth_callback"} & kwargs.keys():
            kwargs["key"] = server.root_key
        client = rtkit.Client(kwargs.pop("url", server.url), **kwargs)
        clients.append(client)
        await within(client.connect())
        return client

    yield make
    for client in clients:
        await client.close()


# ---------------------------------------------------------------- Redis, for the backplane


@pytest.fixture(scope="session")
def redis_server() -> Iterator[rtkit.cluster.RedisServer]:
    """A private redis-server on a free loopback port for the whole run (started by the
    tests, stopped at the end). Without the program the tests that need it are skipped,
    except under CI=true, where they fail: CI must run them (``make test`` installs it)."""
    if not rtkit.cluster.redis_available():
        message = ("redis-server is not installed: `make test` installs Debian's package "
                   "when run as root (scripts/ensure-redis.sh)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with rtkit.cluster.RedisServer() as srv:
        yield srv


@pytest.fixture
def redis_url(redis_server: rtkit.cluster.RedisServer) -> str:
    """The shared Redis, started if it was stopped, and emptied for this test."""
    import redis

    redis_server.start()
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url
