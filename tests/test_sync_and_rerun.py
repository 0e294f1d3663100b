"""The sync helper, and re-running a notebook cell without leaking connections."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator

import pytest

import rtkit
from rtkit import _rerun
from tests.conftest import eventually, scaled


def test_run_in_a_plain_script_keeps_one_loop() -> None:
    script = textwrap.dedent("""
        import rtkit
        server = rtkit.serve()
        client = rtkit.Client(server.url, key=server.root_key)
        rtkit.run(client.connect())
        got = []
        rtkit.run(client.channel("c").subscribe(got.append))
        rtkit.run(client.channel("c").publish("n", 1))
        import asyncio
        rtkit.run(asyncio.sleep(0.2))
        print(client.state.value, [m.data for m in got])
        rtkit.run(client.close())
        server.stop()
        import nest_asyncio, asyncio as aio
        print("patched" if hasattr(aio, "_nest_patched") else "not patched")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=scaled(30))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["connected [1]", "not patched"]


def test_run_inside_a_running_loop_uses_nest_asyncio_on_that_loop_only() -> None:
    script = textwrap.dedent("""
        import asyncio, rtkit
        async def cell():
            # a notebook cell calling the sync helper while the kernel's loop runs
            return rtkit.run(asyncio.sleep(0, result=42))
        print(asyncio.run(cell()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=scaled(30))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


def test_importing_rtkit_does_not_patch_asyncio() -> None:
    script = "import rtkit, asyncio; print(hasattr(asyncio, '_nest_patched'))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=scaled(30))
    assert result.stdout.strip() == "False"


class FakeShell:
    execution_count = 1


@pytest.fixture
def fake_ipython(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeShell]:
    shell = FakeShell()
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", module)
    _rerun._registry.clear()
    yield shell
    _rerun._registry.clear()


def cell(url: str, key: str, count: int = 1) -> list[rtkit.Client]:
    """Stands for a notebook cell: the same code location each time it runs."""
    return [rtkit.Client(url, key=key) for _ in range(count)]


async def test_rerunning_a_cell_closes_the_clients_it_made(
    fake_ipython: FakeShell, server: rtkit.Server
) -> None:
    first = cell(server.url, server.root_key, count=2)  # a loop in one run: both kept
    for c in first:
        await c.connect()
    assert all(c.state is rtkit.ConnectionState.CONNECTED for c in first)
    fake_ipython.execution_count = 2
    second = cell(server.url, server.root_key)
    await second[0].connect()
    await eventually(lambda: all(c.state is rtkit.ConnectionState.CLOSED for c in first))
    assert second[0].state is rtkit.ConnectionState.CONNECTED
    await eventually(lambda: server.stats()["connections"] == 1)
    await second[0].close()


def serve_cell() -> rtkit.Server:
    return rtkit.serve()


async def test_rerunning_a_cell_stops_the_server_it_started(fake_ipython: FakeShell) -> None:
    old = serve_cell()
    fake_ipython.execution_count = 5
    new = await asyncio.get_running_loop().run_in_executor(None, serve_cell)
    assert not old.running and new.running
    new.stop()


def test_outside_ipython_nothing_is_tracked() -> None:
    _rerun._registry.clear()
    with rtkit.serve():
        pass
    assert _rerun._registry == {}
