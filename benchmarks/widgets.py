"""Widget benchmark: a live stream into a LivePlot and a MessageLog, headless.

The broker (``rtkit serve``) and a publisher at a fixed rate run in child processes; this
process plays the notebook kernel: its loop receives the stream and runs the widgets. For each rate
we print the kernel thread's CPU use (of one core), redraws per second of each widget, and
the event-loop lag (how late a 10 ms timer fires: the delay another cell would see).

    python benchmarks/widgets.py              # 100, 1,000 and 5,000 msg/s, 4 s each
    python benchmarks/widgets.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rtkit
from rtkit.widgets import LivePlot, MessageLog

KEY = "bench:" + "w" * 40


def source_process(url: str, rate: int, seconds: float) -> None:
    """Child process: a publisher at ``rate`` msg/s once told "go"."""
    async def main() -> None:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        async with rtkit.Client(url, key=KEY, client_id="ticker",
                                max_queued_publishes=100_000) as pub:
            ch = pub.channel("ticks")
            t0 = time.monotonic()
            sent, pending = 0, []
            while time.monotonic() - t0 < seconds:
                due = int((time.monotonic() - t0) * rate)
                while sent < due:
                    pending.append(asyncio.ensure_future(ch.publish(
                        "tick", {"price": 100 + (sent % 50) * 0.1, "volume": sent % 7})))
                    sent += 1
                pending = [t for t in pending if not t.done()]
                await asyncio.sleep(0.002)
            await asyncio.gather(*pending)
        print("done", sent, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    asyncio.run(main())


async def measure(rate: int, seconds: float) -> dict[str, float]:
    broker = subprocess.Popen(
        [sys.executable, "-m", "rtkit.cli", "serve", "--port", "0", "--key", KEY,
         "--publish-rate", "50000", "--history-size", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert broker.stdout is not None
    url = broker.stdout.readline().split()[-1]
    child = subprocess.Popen([sys.executable, __file__, "--source", url, str(rate),
                              str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdout.readline()  # ready
        async with rtkit.Client(url, key=KEY, max_frame_size=64 << 20) as client:
            ch = client.channel("ticks")
            plot = await LivePlot(ch, ["price", "volume"], window=10.0, rate=20).start()
            log = await MessageLog(ch, rows=20, rate=20).start()
            lags: list[float] = []
            stop = asyncio.Event()

            async def probe() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    await asyncio.sleep(0.01)
                    lags.append(time.perf_counter() - t - 0.01)

            prober = asyncio.create_task(probe())
            child.stdin.write("go\n")
            child.stdin.flush()
            await asyncio.sleep(0.3)  # let the stream settle
            redraws0 = (plot.gate.redraws, log.gate.redraws)
            received0 = log.recorder.count
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            await asyncio.sleep(seconds - 0.6)
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            received = log.recorder.count - received0
            plot_redraws = plot.gate.redraws - redraws0[0]
            log_redraws = log.gate.redraws - redraws0[1]
            stop.set()
            await prober
            done = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
            sent = int(done.split()[1])
            for _ in range(200):  # the plot is current: it ends with the last message sent
                if log.recorder.count >= sent:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            newest = plot.series["price"][-1][0] if plot.series["price"] else 0.0
            last = log.recorder.rows[-1][0].timestamp / 1000 if log.recorder.rows else -1.0
            complete = log.recorder.count == sent and abs(newest - last) < 1e-9
            plot.close()
            log.close()
    finally:
        child.stdin.write("bye\n")
        child.stdin.close()
        child.wait(30)
        broker.terminate()
        broker.wait(10)
    lags.sort()
    return {
        "received_per_s": received / wall,
        "kernel_cpu": cpu / wall,
        "plot_redraws_per_s": plot_redraws / wall,
        "log_redraws_per_s": log_redraws / wall,
        "lag_p50_ms": statistics.median(lags) * 1000,
        "lag_p99_ms": lags[int(len(lags) * 0.99) - 1] * 1000,
        "plot_current": float(complete),
    }


async def main_async(rates: list[int], seconds: float) -> None:
    print(f"{'msg/s':>6} {'received/s':>11} {'kernel cpu':>10} {'plot redraws/s':>15} "
          f"{'log redraws/s':>14} {'loop lag p50':>13} {'p99':>8} {'complete':>9}")
    for rate in rates:
        r = await measure(rate, seconds)
        print(f"{rate:>6} {r['received_per_s']:>11,.0f} {r['kernel_cpu']:>10.0%} "
              f"{r['plot_redraws_per_s']:>15.1f} {r['log_redraws_per_s']:>14.1f} "
              f"{r['lag_p50_ms']:>10.1f} ms {r['lag_p99_ms']:>5.1f} ms "
              f"{'yes' if r['plot_current'] else 'NO':>9}", flush=True)
    print("redraws are bounded by the widgets' rate (20/s) whatever the message rate; loop lag "
          "is how late a 10 ms timer fired in the kernel's loop; complete: every message sent "
          "was received and the plot ends with the last one.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="100,1000,5000")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--quick", action="store_true", help="100 and 1,000 msg/s for 1.5 s")
    p.add_argument("--source", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.source:
        source_process(args.source[0], int(args.source[1]), float(args.source[2]))
        return 0
    rates = [int(x) for x in args.rates.split(",")]
    if args.quick:
        rates, args.seconds = [100, 1000], 1.5
    asyncio.run(main_async(rates, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
