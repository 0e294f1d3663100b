"""``rtkit`` reads keys from the environment or a file, never needing them on the command
line (where every user of the machine sees them in the process list)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import rtkit
from tests.conftest import scaled

KEY = "room:" + "s" * 40


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "RTKIT_KEY"}
    return subprocess.run([sys.executable, "-m", "rtkit.cli", *args], capture_output=True,
                          text=True, timeout=scaled(20), env={**environ, **(env or {})})


def test_item13_token_reads_the_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    by_env = run("token", "--client-id", "ana", env={"RTKIT_KEY": KEY})
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    by_file = run("token", "--client-id", "ana", "--key-file", str(keyfile))
    for result in (by_env, by_file):
        assert result.returncode == 0 and result.stderr == ""
        claims = rtkit.inspect_token(result.stdout.strip())
        assert claims.key_id == "room" and claims.client_id == "ana"
    on_argv = run("token", "--key", KEY)
    assert on_argv.returncode == 0 and "process list" in on_argv.stderr
    missing = run("token")
    assert missing.returncode == 2 and "RTKIT_KEY" in missing.stderr
    assert run("token", "--key-file", str(tmp_path / "nope")).returncode == 2


def test_serve_takes_its_root_key_from_the_environment() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "rtkit.cli", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RTKIT_KEY": KEY})
    try:
        proc.stdout.readline()  # type: ignore[union-attr]
        assert proc.stdout.readline().strip() == f"root key: {KEY}"  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=scaled(10))
    assert proc.returncode == 0
