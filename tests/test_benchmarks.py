"""The benchmarks must keep running (their numbers are printed, never asserted here)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import rtkit
from tests.conftest import eventually, scaled, within

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_fanout_smoke_run_prints_ratios() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "fanout.py"), "--subscribers", "1,10", "--messages", "300",
         "--transport", "ws", "--transport", "sse"],
        capture_output=True, text=True, timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ratios = [line for line in lines if line.startswith("ratios: N=1: ") and "N=10: " in line]
    assert len(ratios) == 2 and "rtkit-sse / raw" in ratios[1]
    assert "INCOMPLETE" not in result.stdout
    wanted = (["1", "rtkit"], ["10", "raw"], ["10", "rtkit-sse"])
    rows = [line.split() for line in lines if line.split()[:2] in wanted]
    assert len(rows) == 3 and all(float(r[2].replace(",", "")) > 0 for r in rows)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_fanout_other_cases_run_in_steady_windows_and_report_targets() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "fanout.py"), "--case", "latency", "--case", "intake",
         "--case", "channels", "--channels", "10", "--seconds", "0.2", "--warmup", "0.1",
         "--repeats", "1"],
        capture_output=True, text=True, timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr
    assert "INCOMPLETE" not in result.stdout
    sections = {part.split(":")[0]: [line.split() for line in part.splitlines()[2:]]
                for part in result.stdout.split("\n\n")}
    latency = {row[0]: row for row in sections["latency"]}
    for kind in ("raw", "rtkit"):  # p50, p99, spread, samples
        p50, p99, samples = _number(latency[kind][1]), _number(latency[kind][2]), latency[kind][4]
        assert 0 < p50 <= p99 and int(samples) > 0
    assert latency["ratio"][3:] == ["rtkit", "/", "raw"]
    intake = {(row[0], row[1]): row for row in sections["publish intake"]}
    for n in ("1", "10"):
        for kind in ("raw", "rtkit"):  # published/s, then delivered/s (window edges aside)
            published, delivered = _number(intake[(n, kind)][2]), _number(intake[(n, kind)][3])
            assert published > 0 and delivered >= int(n) * published / 2
        assert intake[(n, "ratio")][2].endswith("x")
    channels = {row[1]: row for row in sections["many channels"]}
    assert set(channels) == {"raw", "rtkit", "ratio"}
    assert all(_number(channels[kind][2]) > 0 for kind in ("raw", "rtkit"))
    targets = [line.split("  target")[0].split()[:3] for line in result.stdout.splitlines()
               if "  target " in line]
    assert [t[0] for t in targets] == ["intake,", "intake,", "many", "latency"]


def test_reconnect_smoke_run_prints_both_measures() -> None:
    result = subprocess.run([sys.executable, str(BENCH / "reconnect.py"), "--quick"],
                            capture_output=True, text=True, timeout=scaled(120))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("0", "50")]
    assert len(rows) == 2
    assert float(rows[0][1]) > 0 and rows[1][-1].replace(",", "").isdigit()
    assert "target: resume p99 < 50 ms" in result.stdout


def test_widgets_smoke_run_bounds_redraws() -> None:
    result = subprocess.run([sys.executable, str(BENCH / "widgets.py"), "--quick"],
                            capture_output=True, text=True, timeout=scaled(120))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("100", "1000")]
    assert len(rows) == 2
    for row in rows:
        assert float(row[3]) <= 25 and float(row[4]) <= 25  # bounded by the 20/s rate
        assert row[-1] == "yes"


def test_feed_smoke_run_prints_ratios_against_websockets() -> None:
    result = subprocess.run([sys.executable, str(BENCH / "feed.py"), "--quick"],
                            capture_output=True, text=True, timeout=scaled(120))
    assert result.returncode == 0, result.stderr
    rows = {line[:26].strip(): line[26:].split() for line in result.stdout.splitlines()
            if line.startswith(("websockets", "Feed"))}
    assert set(rows) == {"websockets, count only", "websockets + json", "Feed (ws)",
                         "Feed (ws) + sequences", "Feed (sse)"}
    assert all(float(r[0].replace(",", "")) > 0 for r in rows.values())
    assert rows["websockets + json"][-1] == "1.00x"
    assert result.stdout.splitlines()[-1].startswith("ratios: Feed (ws)=")


def test_connections_smoke_run_prints_memory_per_connection() -> None:
    result = subprocess.run([sys.executable, str(BENCH / "connections.py"), "--quick"],
                            capture_output=True, text=True, timeout=scaled(120))
    assert result.returncode == 0, result.stderr
    [row] = [line.split() for line in result.stdout.splitlines()
             if line.split() and line.split()[0] == "1000"]
    assert row[-1] == "KB" and float(row[-2]) > 0
    assert "connected: 1000 of 1000" in result.stdout and "ratio to target" in result.stdout


def test_hostile_smoke_run_prints_quiet_and_attacked_latency() -> None:
    result = subprocess.run([sys.executable, str(BENCH / "hostile.py"), "--quick"],
                            capture_output=True, text=True, timeout=scaled(180))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("quiet", "surrogates", "rewind", "presence")}
    assert set(rows) == {"quiet", "surrogates", "rewind", "presence"}
    assert all(float(row[2]) > 0 and int(row[3]) > 0 for row in rows.values())
    assert "worst attacked p99" in result.stdout


def test_cluster_smoke_run_compares_nodes_with_the_in_memory_broker(
        redis_server: object) -> None:
    # (the fixture only checks that redis-server exists: the benchmark starts its own)
    result = subprocess.run(
        [sys.executable, str(BENCH / "cluster.py"), "--subscribers", "10", "--nodes", "0,2",
         "--messages", "300"],
        capture_output=True, text=True, timeout=scaled(180),
    )
    assert result.returncode == 0, result.stderr
    assert "INCOMPLETE" not in result.stdout
    rows = [line.split() for line in result.stdout.splitlines()
            if line.split()[:1] == ["10"]]
    assert [r[1:3] for r in rows] == [["in", "memory"], ["2", "redis"]]
    assert all(float(r[4].replace(",", "")) > 0 for r in rows)
    assert "us per script" in result.stdout and "Bound:" in result.stdout


def test_client_smoke_run_prints_ratios_against_websockets() -> None:
    result = subprocess.run([sys.executable, str(BENCH / "client.py"), "--quick"],
                            capture_output=True, text=True, timeout=scaled(120))
    assert result.returncode == 0, result.stderr
    rows = {(line[:9].strip(), line[11:29].strip()): line[29:].split()
            for line in result.stdout.splitlines() if line[:9].strip() in ("1", "10", "100")}
    clients = ("plain, read only", "plain + json", "rtkit callback", "rtkit iterator")
    assert set(rows) == {(n, c) for n in ("1", "10", "100") for c in clients}
    assert all(float(r[0].replace(",", "")) > 0 for r in rows.values())
    assert all(rows[(n, "plain + json")][3] == "1.00x" for n in ("1", "10", "100"))
    lines = result.stdout.splitlines()
    assert lines[-2].startswith("ratios to plain + json: 1/frame: callback=")
    assert "100/frame: callback=" in lines[-2] and "iterator/callback=" in lines[-2]


async def test_light_sse_subscriber_counts_a_channels_messages() -> None:
    """benchmarks/lightsse.py, the SSE subscriber a fan-out run can open by the hundred: what
    the load generator asks of a subscriber, counted as it counts rtkit frames."""
    sys.path.insert(0, str(BENCH))
    try:
        from fanout_load import RtkitDialect, count_serials
        from lightsse import open_light_sse
    finally:
        sys.path.remove(str(BENCH))
    progress: list[int] = []
    with rtkit.serve() as srv:
        sub = await open_light_sse(srv.url, sample=False, count_marker=None,
                                   counter=count_serials, error_marker=RtkitDialect.error,
                                   on_progress=lambda s, before: progress.append(s.count))
        assert await sub.send_frames({"action": "connect", "ref": 0, "key": srv.root_key},
                                     {"action": "attach", "ref": 1, "channel": "bench"}) == 204
        await eventually(lambda: sub.frames >= 2)  # connected, attached
        sub.count = 0
        async with rtkit.Client(srv.url, key=srv.root_key) as pub:
            await asyncio.gather(*(pub.channel("bench").publish("t", i) for i in range(50)))
            await eventually(lambda: sub.count == 50)
            assert sub.errors == 0 and progress[-1] == 50
            assert await sub.send_frames({"action": "attach", "ref": 2, "channel": "no good"}) \
                == 204
            await eventually(lambda: sub.errors == 1)
            assert b"40007" in sub.first_error
        sub.close()
        assert await within(sub.closed) is None
