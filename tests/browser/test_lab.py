"""In a real browser: widgets render, the plot moves, the badge follows a drop and recovery."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.browser.lab import (
    OUTPUT,
    browser_page,
    copy_notebook,
    jupyterlab,
    require_browser,
    run_all,
    run_last_cell,
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


NOTEBOOKS = Path(__file__).resolve().parent.parent.parent / "notebooks"


def test_tutorials_run_through_the_jupyterlab_ui(tmp_path: Path) -> None:
    """The quickstart and the reconnection notebook, run with Run All Cells in JupyterLab."""
    require_browser()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    checks = {
        "01-quickstart.ipynb": ["acked with serial 1", "50 points plotted"],
        "05-reconnection-and-continuity.ipynb": ["'lost': 0", "'duplicates_seen': 0",
                                                 "the missed messages are no longer"],
    }
    for name in checks:
        copy_notebook(NOTEBOOKS / name, tmp_path)
        # start from clean outputs, so what we find was produced in this browser run
        nb = tmp_path / name
        data = json.loads(nb.read_text())
        for cell in data["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        nb.write_text(json.dumps(data))
    with jupyterlab(tmp_path) as url, browser_page() as page:
        for name, expected in checks.items():
            run_all(page, url, name, but_last=True)
            for text in expected:  # cells scrolled out of view are not "visible": attached
                page.get_by_text(text, exact=False).first.wait_for(state="attached",
                                                                   timeout=90_000)
            if name.startswith("01"):
                page.locator(".rtkit-live-plot path.line").first.wait_for(timeout=30_000)
                page.locator(".rtkit-live-plot").first.scroll_into_view_if_needed()
                assert "connected" in page.locator(".rtkit-badge").first.inner_text()
            else:
                page.locator(".rtkit-delivery-report").first.wait_for(timeout=30_000)
                page.locator(".rtkit-delivery-report").first.scroll_into_view_if_needed()
            page.screenshot(path=str(OUTPUT / f"{name.removesuffix('.ipynb')}.png"))
            run_last_cell(page)  # the clean-up cell
            if name.startswith("01"):
                page.get_by_text("closed False").first.wait_for(state="attached",
                                                                timeout=30_000)
            page.get_by_role("menuitem", name="Kernel", exact=True).click()
            page.get_by_role("menuitem", name="Shut Down Kernel", exact=True).click()
