"""In a real browser: widgets render, the plot moves, the badge follows a drop and recovery."""

from __future__ import annotations

import time
from pathlib import Path

from tests.browser.lab import (
    OUTPUT,
    browser_page,
    jupyterlab,
    require_browser,
    run_all,
    save_notebook_copy,
)

CELLS = [
    "import asyncio, rtkit\n"
    "from rtkit.widgets import ConnectionPanel, FaultPanel, LivePlot\n"
    "server = rtkit.serve(heartbeat_interval=0.5)\n"
    "proxy = rtkit.chaos.proxy(server)\n"
    "client = rtkit.Client(proxy.url, key=server.root_key, heartbeat_grace=0.5,\n"
    "                      backoff=rtkit.Backoff(base=0.2, cap=0.5))\n"
    "await client.connect()\n"
    "ConnectionPanel(client)",
    "FaultPanel(proxy)",
    "plot = await LivePlot(client.channel('ticks'), ['v'], window=10).start()\n"
    "plot",
    "async def feed():\n"
    "    async with rtkit.Client(server.url, key=server.root_key) as pub:\n"
    "        i = 0\n"
    "        while True:\n"
    "            await pub.channel('ticks').publish('tick', {'v': (i % 20) ** 1.5})\n"
    "            i += 1\n"
    "            await asyncio.sleep(0.05)\n"
    "feeder = asyncio.create_task(feed())",
]


def test_widgets_live_in_jupyterlab(tmp_path: Path) -> None:
    require_browser()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    save_notebook_copy(tmp_path, "widgets.ipynb", CELLS)
    with jupyterlab(tmp_path) as url, browser_page() as page:
        run_all(page, url, "widgets.ipynb")
        badge = page.locator(".rtkit-connection-panel .rtkit-badge").first
        badge.wait_for(timeout=90_000)
        page.wait_for_function(
            "document.querySelector('.rtkit-connection-panel .rtkit-badge')"
            "?.textContent === 'connected'", timeout=60_000)
        line = page.locator(".rtkit-live-plot path.line").first
        line.wait_for(timeout=60_000)
        page.wait_for_function("(document.querySelector('.rtkit-live-plot path.line')"
                               "?.getAttribute('d') || '').length > 20", timeout=30_000)
        first = line.get_attribute("d")
        page.screenshot(path=str(OUTPUT / "widgets-1-streaming.png"), full_page=True)
        time.sleep(1.0)
        second = line.get_attribute("d")
        assert first != second, "the plot did not move"

        # Break the link from the FaultPanel and watch the badge go down and come back.
        page.locator(".rtkit-fault-panel button", has_text="Drop now").click()
        page.wait_for_function(
            "[...document.querySelectorAll('.rtkit-timeline .rtkit-badge')]"
            ".some(b => b.textContent === 'disconnected')", timeout=30_000)
        page.wait_for_function(
            "document.querySelector('.rtkit-connection-panel .rtkit-badge')"
            "?.textContent === 'connected'", timeout=30_000)
        page.screenshot(path=str(OUTPUT / "widgets-2-recovered.png"), full_page=True)
        timeline = page.locator(".rtkit-timeline").first.inner_text()
        assert "disconnected" in timeline and "resumed" in timeline
        third = line.get_attribute("d")
        assert third != second, "the plot stopped after the recovery"
