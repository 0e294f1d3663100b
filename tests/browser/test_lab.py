"""In a real browser, the way learners use the notebooks: open, *Run All*, read, run again.

Every tutorial notebook (``notebooks/NN-*.ipynb``, found by name: a new one is covered
without editing this file) is opened fresh in JupyterLab and run with *Run → Run All Cells*.
When it is done, no cell may show an error (except cells tagged ``raises-exception``) and
10 s later every LivePlot must still show data inside its axes, every connection panel must
say "connected" and every producer must be running. Then *Run All* again, in the same kernel,
with the same checks. Screenshots go to ``test-output/browser/``.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import missing_programs
from tests.browser.lab import (
    CELLS_JS,
    OUTPUT,
    ROOT,
    browser_page,
    cell_problems,
    jupyterlab,
    lab_script,
    notebook,
    open_notebook,
    panel_problems,
    plot_problems,
    require_browser,
    run_all,
    screenshot,
    shutdown_kernels,
    tagged_cells,
)

ORIGINALS = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in ORIGINALS.glob("[0-9][0-9]-*.ipynb"))
#: Seconds a Run All may take; a notebook that needs more gets one line here.
RUN_ALL_TIMEOUT: dict[str, float] = {}
DEFAULT_TIMEOUT = 120.0
#: How long after Run All the live plots must still show data.
LOOK_AFTER = 10.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Path]]:
    """One JupyterLab (on a working copy made as ``make lab`` makes it) and one page."""
    require_browser()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    base = tmp_path_factory.mktemp("lab")
    root = base / "my-notebooks"
    lab_script().working_copy(ORIGINALS, root)
    with jupyterlab(root, base / "jupyter-config") as url, browser_page() as page:
        yield url, page, root


def test_the_browser_test_covers_every_tutorial() -> None:
    listed = re.findall(r"\(notebooks/(\d\d-[\w-]+\.ipynb)\)", (ROOT / "README.md").read_text())
    assert len(NOTEBOOKS) >= 8 and sorted(set(listed)) == NOTEBOOKS  # the README's tutorials


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_run_all_twice_leaves_a_living_notebook(lab: tuple[str, Any, Path], name: str) -> None:
    missing = missing_programs(ORIGINALS / name)
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"{name} needs {', '.join(missing)} (not installed)")
    url, page, root = lab
    intended = tagged_cells(root / name)
    stem = name.removesuffix(".ipynb")
    report = []
    try:
        open_notebook(page, url, name)
        for attempt in (1, 2):
            run = run_all(page, RUN_ALL_TIMEOUT.get(name, DEFAULT_TIMEOUT), intended)
            finished = time.monotonic()
            report.append(f"run {attempt}: {run.seconds:.1f} s")
            if not run.problems:  # read for a while, as a learner does, then look again
                time.sleep(max(0.0, finished + LOOK_AFTER - time.monotonic()))
            problems = run.problems + cell_problems(page.evaluate(CELLS_JS), intended)
            problems += plot_problems(page) + panel_problems(page)
            screenshot(page, OUTPUT / f"{stem}-run{attempt}.png")
            assert not problems, f"{name}, Run All #{attempt}:\n" + "\n".join(problems)
    finally:
        print(f"{name}: " + ", ".join(report))
        shutdown_kernels(url)


FAULTS = [
    "import asyncio, rtkit\n"
    "from rtkit.widgets import ConnectionPanel, FaultPanel, LivePlot, Producer\n"
    "server = rtkit.serve(heartbeat_interval=0.5)\n"
    "proxy = rtkit.chaos.proxy(server)\n"
    "client = rtkit.Client(proxy.url, key=server.root_key, heartbeat_grace=0.5,\n"
    "                      backoff=rtkit.Backoff(base=0.2, cap=0.5))\n"
    "await client.connect()\n"
    "ConnectionPanel(client)",
    "FaultPanel(proxy)",
    "plot = await LivePlot(client.channel('ticks'), ['v'], window=10).start()\n"
    "plot",
    "feeder = rtkit.Client(server.url, key=server.root_key)\n"
    "await feeder.connect()\n"
    "async def feed():\n"
    "    i = 0\n"
    "    while True:\n"
    "        await feeder.channel('ticks').publish('tick', {'v': (i % 20) ** 1.5})\n"
    "        i += 1\n"
    "        await asyncio.sleep(0.05)\n"
    "Producer(feed)",
]


def test_fault_panel_drop_shows_in_the_badge_and_the_plot_goes_on(
        lab: tuple[str, Any, Path]) -> None:
    url, page, root = lab
    (root / "faults.ipynb").write_text(json.dumps(notebook(FAULTS)))
    try:
        open_notebook(page, url, "faults.ipynb")
        run = run_all(page, DEFAULT_TIMEOUT)
        assert not run.problems and not cell_problems(run.cells, frozenset())
        line = page.locator(".rtkit-live-plot path.line").first
        page.wait_for_function("(document.querySelector('.rtkit-live-plot path.line')"
                               "?.getAttribute('d') || '').length > 20", timeout=30_000)
        first = line.get_attribute("d")
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
        screenshot(page, OUTPUT / "faults-recovered.png")
        timeline = page.locator(".rtkit-timeline").first.text_content() or ""
        assert "disconnected" in timeline and "resumed" in timeline
        time.sleep(1.0)
        assert line.get_attribute("d") != second, "the plot stopped after the recovery"
        assert not panel_problems(page) and not plot_problems(page)
        # no "Would you like to receive official Jupyter news?" (make lab's settings)
        toasts = page.locator(".Toastify__toast").all_text_contents()
        assert not any("news" in t.lower() for t in toasts), toasts
        setting = f"{url}/lab/api/settings/@jupyterlab/apputils-extension:notification"
        with urllib.request.urlopen(setting, timeout=10) as r:
            schema = json.loads(r.read())["schema"]  # overrides become the defaults
        assert schema["properties"]["fetchNews"]["default"] == "false"
    finally:
        shutdown_kernels(url)
