"""In a real IPython kernel: top-level await, and re-running a cell without leaking."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import scaled

jupyter_client = pytest.importorskip("jupyter_client")


@pytest.fixture(scope="module")
def kernel() -> Iterator[Any]:
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run_cell(kc: Any, code: str) -> str:
    """Execute ``code`` as one cell; return its stdout, raising on an error."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            errors.append("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, timeout=scaled(60), output_hook=hook)
    assert reply["content"]["status"] == "ok", "\n".join(errors)
    return "".join(out)


def test_top_level_await_and_rerun_closes_the_previous_client(kernel: Any) -> None:
    run_cell(kernel, "import rtkit\nserver = rtkit.serve()")
    cell = ("client = rtkit.Client(server.url, key=server.root_key)\n"
            "await client.connect()\n"
            "clients = globals().setdefault('clients', [])\n"
            "clients.append(client)\n")
    run_cell(kernel, cell)
    run_cell(kernel, cell)  # the same cell, run again
    out = run_cell(kernel, "import asyncio\nawait asyncio.sleep(0.2)\n"
                           "print([c.state.value for c in clients], server.stats()['connections'])")
    assert out.strip() == "['closed', 'connected'] 1"


def test_rerunning_serve_stops_the_previous_broker(kernel: Any) -> None:
    cell = "s = rtkit.serve()\nservers = globals().setdefault('servers', [])\nservers.append(s)\n"
    run_cell(kernel, cell)
    run_cell(kernel, cell)
    out = run_cell(kernel, "print([x.running for x in servers])")
    assert out.strip() == "[False, True]"


def test_a_blocking_cell_does_not_stall_the_broker(kernel: Any) -> None:
    out = run_cell(kernel, """
import threading, time, asyncio
got = []
def other():
    async def main():
        async with rtkit.Client(server.url, key=server.root_key) as a:
            await a.channel("x").subscribe(lambda m: got.append(m.data))
            async with rtkit.Client(server.url, key=server.root_key) as b:
                await b.channel("x").publish("n", 1)
                for _ in range(100):
                    if got:
                        break
                    await asyncio.sleep(0.01)
    asyncio.run(main())
t = threading.Thread(target=other); t.start()
time.sleep(1.0)   # this cell blocks the kernel's loop
t.join(10)
print(got)
""")
    assert out.strip() == "[1]"


def test_rerunning_a_feed_cell_closes_the_previous_feed_and_replay_server(kernel: Any) -> None:
    cell = ("from rtkit.feed import replay\n"
            "wiki = replay.recent_changes(rate=50)\n"
            "feed = rtkit.Feed(wiki.url)\n"
            "await feed.connect()\n"
            "made = globals().setdefault('made', [])\n"
            "made.append((wiki, feed))\n")
    run_cell(kernel, cell)
    run_cell(kernel, cell)
    out = run_cell(kernel, "import asyncio\nawait asyncio.sleep(0.3)\n"
                           "print([(w.running, f.state.value) for w, f in made])")
    assert out.strip() == "[(False, 'closed'), (True, 'connected')]"
    run_cell(kernel, "await made[-1][1].close()\nmade[-1][0].stop()")
