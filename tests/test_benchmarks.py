"""The benchmarks must keep running (their numbers are printed, never asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import scaled

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_fanout_smoke_run_prints_ratios() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "fanout.py"), "--subscribers", "1,10", "--messages", "300"],
        capture_output=True, text=True, timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ratios: N=1: ") and "N=10: " in line for line in lines)
    assert "INCOMPLETE" not in result.stdout
    rows = [line.split() for line in lines if line.split()[:2] in (["1", "rtkit"], ["10", "raw"])]
    assert len(rows) == 2 and all(float(r[3].replace(",", "")) > 0 for r in rows)
