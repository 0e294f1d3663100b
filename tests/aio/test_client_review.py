"""Review of issue 8: failing tests for the asyncio driver (real loopback broker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import rtkit
from rtkit import ConnectionState as S
from tests.conftest import eventually, scaled, within

FAST = {"backoff": rtkit.Backoff(base=0.05, cap=0.4), "connect_timeout": 1.0,
        "heartbeat_grace": 0.3}


@pytest.fixture
def env() -> Iterator[tuple[rtkit.Server, rtkit.chaos.FaultProxy]]:
    # A long heartbeat interval: the client core's poll timer then fires once a second.
    with rtkit.serve(heartbeat_interval=30.0) as srv, rtkit.chaos.proxy(srv, seed=2) as px:
        yield srv, px


@pytest.fixture
async def clients() -> AsyncIterator[list[rtkit.Client]]:
    made: list[rtkit.Client] = []
    yield made
    for c in made:
        await c.close()


def _client(url: str, srv: rtkit.Server, made: list[rtkit.Client], **kw: Any) -> rtkit.Client:
    c = rtkit.Client(url, key=srv.root_key, **{**FAST, **kw})
    made.append(c)
    return c


async def test_subscribe_on_an_attached_channel_completes_without_a_timer(
        env: Any, clients: list[rtkit.Client]) -> None:
    """``Channel.subscribe`` calls ``core.subscribe`` directly and then ``_wait_op``, which
    never pumps: the core's OpDone (channel already attached) -- or, for a first subscribe,
    its 'attach' frame -- waits in ``core.out`` until something else pumps, in practice the
    poll timer (up to 1 s). Measured: 1.0 s per subscribe on an attached channel. Every
    widget, DeliveryAudit.watch or second subscriber pays it."""
    srv, _ = env
    c = _client(srv.url, srv, clients)
    await within(c.connect())
    ch = c.channel("x")
    await within(ch.subscribe(lambda m: None))
    assert ch.attached
    fired: list[float] = []
    original = c._driver.on_timer

    def counting() -> None:
        fired.append(asyncio.get_running_loop().time())
        original()

    c._driver.on_timer = counting  # type: ignore[method-assign]
    c._driver.arm_timer()
    task = asyncio.create_task(ch.subscribe(lambda m: None))
    for _ in range(5):  # no I/O is needed: a few loop turns must do
        await asyncio.sleep(0)
    done = task.done()
    await within(task)
    assert done, f"subscribe on an attached channel waited for a timer ({len(fired)} fired)"


async def test_connect_right_after_close_is_not_undone_by_close(
        env: Any, clients: list[rtkit.Client]) -> None:
    """``Client.close()`` awaits CLOSED and then runs ``_shutdown()`` unconditionally: if
    the application connected again in between (here from a state listener, as an
    auto-reconnect helper would), ``_shutdown`` cancels the new attempt's opener task and
    the core's timer. The core stays CONNECTING with no link and no timer: stuck."""
    srv, _ = env
    c = _client(srv.url, srv, clients)
    await within(c.connect())
    again: list[asyncio.Task[None]] = []

    def reopen(change: Any) -> None:
        if change.current is S.CLOSED and not again:
            again.append(asyncio.get_running_loop().create_task(c.connect()))

    c.on_state_change(reopen)
    await within(c.close())
    assert again
    await within(again[0], timeout=3)  # the new connect() is not undone by close()
    await asyncio.sleep(scaled(0.5))
    assert c.state is S.CONNECTED, f"stuck in {c.state.value}"


async def test_a_refused_subscribe_does_not_leak_its_callback_task(
        env: Any, clients: list[rtkit.Client]) -> None:
    """``Channel.subscribe`` builds the Subscription (which starts a worker task for an
    async callback) before ``core.subscribe`` may raise (closed, suspended, failed): the
    worker is never cancelled and waits forever ("Task was destroyed but it is pending")."""
    srv, _ = env
    c = _client(srv.url, srv, clients)
    await within(c.connect())
    await within(c.close())

    async def on_message(msg: Any) -> None:
        pass

    before = {t for t in asyncio.all_tasks() if "_run_async_callback" in repr(t)}
    with pytest.raises(rtkit.ConnectionClosed):
        await c.channel("x").subscribe(on_message)
    await asyncio.sleep(0)
    leaked = {t for t in asyncio.all_tasks() if "_run_async_callback" in repr(t)} - before
    assert not leaked, leaked


async def test_a_cancelled_publish_that_was_never_sent_is_not_published(
        env: Any, clients: list[rtkit.Client]) -> None:
    """A publish queued while disconnected and then cancelled (``asyncio.wait_for`` timing
    out, a cancelled cell) stays in the outbox and is published after the reconnect: the
    application was told it did not complete, retries with a new id, and the message
    enters the channel twice. Nothing withdraws an unsent outbox entry on cancellation."""
    srv, px = env
    watcher = _client(srv.url, srv, clients)
    await within(watcher.connect())
    seen: list[Any] = []
    await within(watcher.channel("c").subscribe(lambda m: seen.append(m.data)))
    pub = _client(px.url, srv, clients)
    await within(pub.connect())
    px.refuse(1.0)
    px.drop_all()
    await within(pub.wait_for_state(S.DISCONNECTED, S.CONNECTING))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pub.channel("c").publish("n", "cancelled"), 0.1)
    await within(pub.wait_for_state(S.CONNECTED, timeout=scaled(5)))
    await within(pub.channel("c").publish("n", "after"))
    await eventually(lambda: "after" in seen)
    assert seen == ["after"], seen


async def test_unsubscribe_then_close_is_a_clean_goodbye(
        env: Any, clients: list[rtkit.Client]) -> None:
    """The driver side of test_core_review's unsubscribe-then-close crash: the core raises
    InvalidTransition out of ``data_received``, asyncio reports "Fatal error:
    protocol.data_received() call failed" and aborts the transport mid-handshake."""
    srv, _ = env
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(str(ctx.get("message"))))
    try:
        c = _client(srv.url, srv, clients)
        await within(c.connect())
        ch = c.channel("bye")
        await within(ch.subscribe(lambda m: None))
        await ch.unsubscribe()
        await within(c.close())
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(previous)
    assert errors == []


async def test_a_cancelled_close_still_ends_the_subscriptions(
        env: Any, clients: list[rtkit.Client]) -> None:
    """``close()`` ends subscriptions (and their async-callback tasks) in ``_shutdown``,
    after awaiting CLOSED: if the caller is cancelled meanwhile (a cell interrupted, a
    ``wait_for`` around close), the core still reaches CLOSED but ``async for msg in sub``
    never ends and callback workers stay pending. Ending them belongs to the CLOSED
    transition, not to the coroutine that asked for it."""
    srv, _ = env
    c = _client(srv.url, srv, clients)
    await within(c.connect())
    sub = await within(c.channel("z").subscribe())
    closing = asyncio.create_task(c.close())
    await asyncio.sleep(0)  # 'close' is sent; the broker's 'closed' is on its way
    closing.cancel()
    await within(c.wait_for_state(S.CLOSED, timeout=scaled(3)))
    await asyncio.sleep(0.05)
    assert not sub.active, "the client is closed but its subscription still waits"
