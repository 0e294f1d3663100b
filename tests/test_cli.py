"""``rtkit serve`` and ``rtkit token`` as a workshop host would use them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import rtkit
from tests.conftest import scaled

KEY = "room:" + "w" * 40


def test_serve_prints_url_and_key_and_stops_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtkit.cli", "serve", "--port", "0", "--key", KEY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url_line = proc.stdout.readline()  # type: ignore[union-attr]
        key_line = proc.stdout.readline()  # type: ignore[union-attr]
        assert url_line.startswith("rtkit broker listening on ws://127.0.0.1:")
        assert key_line.strip() == f"root key: {KEY}"
        url = url_line.split()[-1]

        async def use() -> list[int]:
            token = subprocess.run(
                [sys.executable, "-m", "rtkit.cli", "token", "--key", KEY, "--client-id", "ana",
                 "--capability", "room:ana:*=publish,subscribe", "--ttl", "60"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
            async with rtkit.Client(url, token=token) as ana:
                got: list[int] = []
                await ana.channel("room:ana:notes").subscribe(lambda m: got.append(m.data))
                await ana.channel("room:ana:notes").publish("note", 1)
                with_timeout = time.monotonic() + scaled(5)
                while not got and time.monotonic() < with_timeout:
                    await asyncio.sleep(0.01)
                try:
                    await ana.channel("room:bob:notes").publish("note", 2)
                except rtkit.CapabilityError:
                    got.append(-1)
                return got

        assert asyncio.run(use()) == [1, -1]
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=scaled(10))
    assert proc.returncode == 0
    assert "rtkit broker stopped" in err
    assert "Traceback" not in err


def test_serve_reports_a_busy_port() -> None:
    with rtkit.serve() as srv:
        result = subprocess.run(
            [sys.executable, "-m", "rtkit.cli", "serve", "--port", str(srv.port)],
            capture_output=True, text=True, timeout=scaled(20),
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_bad_arguments_are_reported() -> None:
    for args in (["token", "--key", "short:x"], ["token", "--key", KEY, "--capability", "x=fly"]):
        result = subprocess.run([sys.executable, "-m", "rtkit.cli", *args],
                                capture_output=True, text=True, timeout=scaled(20))
        assert result.returncode == 2, result
        assert result.stderr.startswith("rtkit: ")


def test_console_script_is_installed() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "rtkit")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=scaled(20))
    assert result.returncode == 0 and "serve" in result.stdout
