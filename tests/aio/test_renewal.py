"""Token renewal: in-band before expiry, across reconnects, and after failures."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import rtkit
from rtkit import ConnectionState as S
from tests.aio.test_reconnect import FAST
from tests.conftest import eventually, scaled, within


def token_maker(srv: rtkit.Server, client_id: str, ttl: float, calls: list[float],
                fail_first: int = 0, delay: float = 0.0) -> Any:
    async def auth_callback() -> str:
        calls.append(time.time())
        if delay:
            await asyncio.sleep(delay)
        if len(calls) <= fail_first:
            raise RuntimeError("token service unavailable")
        return srv.issue_token(client_id=client_id, capabilities={"*": ["*"]}, ttl=ttl)
    return auth_callback


async def test_two_second_tokens_renew_in_band_for_ten_seconds() -> None:
    with rtkit.serve(heartbeat_interval=0.5) as srv:
        pub_calls: list[float] = []
        sub_calls: list[float] = []
        pub = rtkit.Client(srv.url, auth_callback=token_maker(srv, "pub", 2.0, pub_calls), **FAST)
        sub = rtkit.Client(srv.url, auth_callback=token_maker(srv, "sub", 2.0, sub_calls), **FAST)
        await within(pub.connect())
        await within(sub.connect())
        got: list[int] = []
        await sub.channel("s").subscribe(lambda m: got.append(m.data))
        duration, rate = 10.0, 50
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:
            await pub.channel("s").publish("n", n)
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await eventually(lambda: len(got) == n)
        assert got == list(range(n))
        for client, calls in ((pub, pub_calls), (sub, sub_calls)):
            states = [c.current for c in client.state_history]
            assert states == [S.CONNECTING, S.CONNECTED], states  # never dropped
            assert len(calls) >= 6  # 10 s of 2 s tokens renewed about every 1.3 s
            assert client.token_expires is not None and client.token_expires > time.time()
        await pub.close()
        await sub.close()


async def test_renewal_racing_reconnects() -> None:
    with rtkit.serve(heartbeat_interval=0.3) as srv, rtkit.chaos.proxy(srv) as px:
        calls: list[float] = []
        errors: list[rtkit.RtkitError] = []
        # A slow token service, so renewals are often in flight when the link drops.
        client = rtkit.Client(px.url, auth_callback=token_maker(srv, "racer", 1.5, calls,
                                                                delay=0.15), **FAST)
        client.on_error(errors.append)
        await within(client.connect())
        async with rtkit.Client(srv.url, key=srv.root_key) as pub:
            got: list[int] = []
            await client.channel("r").subscribe(lambda m: got.append(m.data))
            rng = random.Random(5)
            for i in range(60):
                await pub.channel("r").publish("n", i)
                if i % 10 == 5:
                    px.drop_all() if rng.random() < 0.5 else await client.reconnect()
                await asyncio.sleep(0.1)
            await eventually(lambda: len(got) == 60, timeout=10)
            assert got == list(range(60))
        assert not [e for e in errors if isinstance(e, rtkit.TokenExpired)]
        assert len(calls) >= 4
        await client.close()


async def test_failing_renewals_back_off_then_expiry_recovers() -> None:
    with rtkit.serve(heartbeat_interval=0.3) as srv:
        calls: list[float] = []
        errors: list[rtkit.RtkitError] = []
        # First token works; the next three renewals fail; then the service recovers.
        auth = token_maker(srv, "flaky", 1.5, calls)
        failures = {"left": 3}

        async def flaky() -> str:
            if calls and failures["left"] > 0:
                failures["left"] -= 1
                calls.append(time.time())
                raise RuntimeError("token service down")
            return str(await auth())

        # Equal jitter: the first retry waits between 0.1 and 0.2 s, so backing off shows.
        client = rtkit.Client(srv.url, auth_callback=flaky, heartbeat_grace=0.3,
                              backoff=rtkit.Backoff(base=0.2, cap=0.4, jitter="equal"))
        client.on_error(errors.append)
        await within(client.connect())
        sub_got: list[int] = []
        await client.channel("f").subscribe(lambda m: sub_got.append(m.data))
        async with rtkit.Client(srv.url, key=srv.root_key) as pub:
            for i in range(30):
                await pub.channel("f").publish("n", i)
                await asyncio.sleep(0.1)
            await eventually(lambda: len(sub_got) == 30, timeout=10)
        assert sub_got == list(range(30))
        renew_errors = [e for e in errors if e.code == 40170]
        assert len(renew_errors) == 3 and isinstance(renew_errors[0], rtkit.AuthError)
        assert calls[2] - calls[1] >= 0.1  # the second failing renewal waited its backoff
        assert client.state is S.CONNECTED
        await client.close()


async def test_a_known_expired_token_is_never_presented() -> None:
    with rtkit.serve(heartbeat_interval=0.3) as srv, rtkit.chaos.proxy(srv) as px:
        calls: list[float] = []
        # Lifetimes scaled with the timeout factor: on a loaded machine a token presented with
        # EXPIRY_MARGIN left can expire in transit, which is not what this test is about.
        client = rtkit.Client(px.url, auth_callback=token_maker(srv, "sleepy", scaled(1.0), calls),
                              **FAST)
        await within(client.connect())
        # No renewal: the token will expire while we are away.
        client._core.renewal.due = lambda now: None  # type: ignore[method-assign]
        px.refuse(scaled(1.5))
        px.drop_all()
        await within(client.wait_for_state(S.DISCONNECTED))
        await within(client.wait_for_state(S.CONNECTED, timeout=scaled(5)))
        refused = [c for c in client.state_history if c.error is not None and
                   isinstance(c.error, rtkit.TokenExpired)]
        assert refused == []  # the broker never had to refuse an expired token
        assert len(calls) >= 2 and client.token_expires is not None
        assert client.token_expires > time.time()
        await client.close()


async def test_fixed_expired_token_cannot_reconnect() -> None:
    with rtkit.serve(heartbeat_interval=0.3) as srv, rtkit.chaos.proxy(srv) as px:
        client = rtkit.Client(px.url, token=srv.issue_token(ttl=1.0), **FAST)
        await within(client.connect())
        px.refuse(1.5)
        px.drop_all()
        await within(client.wait_for_state(S.FAILED, timeout=scaled(5)))
        assert isinstance(client.state_history[-1].error, rtkit.TokenExpired)
        await client.close()
