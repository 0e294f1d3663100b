"""JupyterLab on loopback, started the way ``make lab`` starts it, driven by Debian's chromium
through playwright, plus what the browser tests look at in a notebook page."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT = Path(os.environ.get("RTKIT_TEST_OUTPUT", ROOT / "test-output")) / "browser"
FACTOR = float(os.environ.get("RTKIT_TEST_TIMEOUT_FACTOR", "1"))


def require_browser() -> None:
    """Skip with a reason when chromium or playwright is missing (fail under CI=true)."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (Debian package chromium; `make test` installs it as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: browser tests must run)")
        pytest.skip(reason)


def lab_script() -> ModuleType:
    """``scripts/lab.py``, what ``make lab`` runs: the tests start JupyterLab the same way."""
    spec = importlib.util.spec_from_file_location("rtkit_lab_script", ROOT / "scripts" / "lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notebook(cells: list[str]) -> dict[str, Any]:
    return {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": None,
                       "outputs": [], "source": src} for src in cells],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


@contextlib.contextmanager
def jupyterlab(root: Path, config: Path) -> Iterator[str]:
    """JupyterLab serving ``root`` on a free loopback port, without a token, as ``make lab``
    runs it (same command line and settings), with its own config dir ``config``."""
    script = lab_script()
    script.quiet_settings()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (OUTPUT / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        script.command(root, port, "--no-browser", "--IdentityProvider.token=",
                       "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True"),
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(config)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90 * FACTOR
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start (see {log.name})") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000 * FACTOR)
        try:
            yield page
        finally:
            browser.close()


def shutdown_kernels(url: str) -> None:
    """Shut down every kernel of the server (frees the CPU before the next notebook)."""
    with urllib.request.urlopen(f"{url}/api/kernels", timeout=10) as r:
        kernels = json.loads(r.read())
    for kernel in kernels:
        req = urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", method="DELETE")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(req, timeout=20).close()


# ------------------------------------------------------------------ a notebook in the page

IDLE = "document.querySelector('.jp-StatusBar-Widget')?.textContent.includes('| Idle')"

#: Per cell, from the DOM: code or not, the prompt ("[3]:", "[*]:", "[ ]:"), the text of
#: error and stderr outputs, and widget errors ("Error displaying widget: ...").
CELLS_JS = """() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map(c => ({
  code: c.classList.contains('jp-CodeCell'),
  prompt: (c.querySelector('.jp-InputPrompt')?.textContent || '').trim(),
  errors: [...c.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
      .map(o => o.textContent.trim().slice(-400)),
  widgetErrors: [...c.querySelectorAll('.jp-OutputArea-output')].map(o => o.textContent)
      .filter(t => /Error (displaying|rendering) widget|model not found/.test(t))
      .map(t => t.trim().slice(0, 200)),
}))"""

#: Per LivePlot and per series: how many points of its line lie inside the plot area.
PLOTS_JS = """() => [...document.querySelectorAll('.rtkit-live-plot')].map(p => {
  const area = p.querySelector('rect.plotarea_background');
  const w = +(area?.getAttribute('width') || 0), h = +(area?.getAttribute('height') || 0);
  const title = p.querySelector('.mainheading')?.textContent || '';
  const series = [...p.querySelectorAll('path.line')].map(path => {
    const nums = ((path.getAttribute('d') || '').match(/-?[0-9.]+(e-?[0-9]+)?/g) || [])
        .map(Number);
    let inside = 0;
    for (let i = 0; i + 1 < nums.length; i += 2) {
      if (nums[i] >= 0 && nums[i] <= w && nums[i + 1] >= 0 && nums[i + 1] <= h) inside++;
    }
    return inside;
  });
  return {title, width: w, height: h, series};
})"""

#: What must look alive: connection badges, producers, redraw loops, proxies, token
#: countdowns.
PANELS_JS = """() => ({
  connections: [...document.querySelectorAll('.rtkit-connection-panel')].map(
      p => p.querySelector('.rtkit-badge')?.textContent || '?'),
  producers: [...document.querySelectorAll('.rtkit-producer')].map(
      f => f.querySelector('.rtkit-producer-running') ? 'running' : f.textContent.trim()),
  stopped: [...document.querySelectorAll('.rtkit-stopped')].map(e => e.className),
  proxies: [...document.querySelectorAll('.rtkit-fault-panel')].map(
      p => p.textContent.includes('proxy stopped') ? 'stopped' : 'running'),
  countdowns: [...document.querySelectorAll('.rtkit-countdown')].map(
      c => parseFloat(c.textContent)),
})"""


#: Seconds without any visible progress after which Run All counts as stopped.
STALL = 30.0


def prompt_number(prompt: str) -> int | None:
    m = re.match(r"\[(\d+)\]", prompt)
    return int(m.group(1)) if m else None


@dataclass
class Run:
    """What one *Run All* looked like."""

    seconds: float
    cells: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)


def open_notebook(page: Any, url: str, name: str) -> None:
    """Open ``name`` fresh (``?reset``: no restored tabs) and wait for its kernel."""
    page.goto(f"{url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_function(IDLE, timeout=90_000 * FACTOR)
    # fold the file browser away: wider notebooks in the screenshots
    current = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if current.count():
        current.first.click()


def run_all(page: Any, timeout: float, intended: frozenset[int] = frozenset()) -> Run:
    """*Run → Run All Cells*, as a learner does; returns once every code cell has run (or
    Run All stopped at an error), with the cells as the DOM shows them. ``intended``: the
    indexes of the cells that fail on purpose."""
    def code_prompts() -> list[str]:
        return [c["prompt"] for c in page.evaluate(CELLS_JS) if c["code"]]

    def all_ran(prompts: list[str]) -> bool:
        """Every code cell numbered, in increasing order: one complete run."""
        numbers = [prompt_number(p) for p in prompts]
        return all(n is not None for n in numbers) and all(
            a < b for a, b in itertools.pairwise(numbers))  # type: ignore[operator]

    before = code_prompts()
    page.locator(".jp-CodeCell .jp-InputArea-editor").first.click()
    page.keyboard.press("Escape")  # command mode: the Run menu acts on the notebook
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    start = time.monotonic()
    deadline = start + timeout * FACTOR
    last, changed = before, start
    while True:
        cells = page.evaluate(CELLS_JS)
        prompts = [c["prompt"] for c in cells if c["code"]]
        if not any("*" in p for p in prompts) and prompts != before and all_ran(prompts):
            return Run(time.monotonic() - start, cells)
        now = time.monotonic()
        if prompts != last or any("*" in p for p in prompts):
            last, changed = prompts, now
        # JupyterLab may show a running cell as "[ ]" and the kernel as idle (after a cell
        # tagged raises-exception): only a long silence, or one after an error, means that
        # Run All stopped.
        errors = any(c["errors"] for i, c in enumerate(cells) if i not in intended)
        if now - changed > (5 if errors else STALL) * FACTOR:
            return Run(now - start, cells,
                       ["Run All stopped before the last cell: " + " ".join(prompts)])
        if now > deadline:
            return Run(now - start, cells,
                       [f"Run All did not finish in {timeout:.0f} s: " + " ".join(prompts)])
        time.sleep(0.25)


def cell_problems(cells: list[dict[str, Any]], intended: frozenset[int]) -> list[str]:
    """Errors in cells other than the ``intended`` ones (indexes of tagged cells)."""
    problems = []
    for i, cell in enumerate(cells):
        for text in cell["widgetErrors"]:
            problems.append(f"cell {i}: widget error: {text}")
        if i not in intended:
            for text in cell["errors"]:
                problems.append(f"cell {i}: error output: ...{text[-300:]}")
        elif not cell["errors"]:
            problems.append(f"cell {i} is marked raises-exception but showed no error")
    return problems


def plot_problems(page: Any) -> list[str]:
    """Every LivePlot must show at least two points of every series inside its axes."""
    problems = []
    for i, plot in enumerate(page.evaluate(PLOTS_JS)):
        if not plot["width"] or not plot["height"]:
            problems.append(f"LivePlot {i} ({plot['title']}) has no plot area")
        elif not plot["series"] or min(plot["series"]) < 2:
            problems.append(f"LivePlot {i} ({plot['title']}) shows too little data: points "
                            f"per series inside the axes {plot['series']}")
    return problems


def panel_problems(page: Any) -> list[str]:
    p = page.evaluate(PANELS_JS)
    problems = [f"connection panel shows {state!r}, not 'connected'"
                for state in p["connections"] if state != "connected"]
    problems += [f"producer not running: {text}" for text in p["producers"]
                 if text != "running"]
    problems += [f"a widget stopped updating: {cls}" for cls in p["stopped"]]
    problems += ["fault panel: proxy stopped" for s in p["proxies"] if s != "running"]
    problems += [f"token countdown at {left} s" for left in p["countdowns"] if not left > 0]
    return problems


def screenshot(page: Any, path: Path) -> None:
    """The whole notebook in one image: scroll to the top and make the viewport as tall as
    the notebook for a moment."""
    page.evaluate("document.querySelector('.jp-WindowedPanel-outer')?.scrollTo(0, 0)")
    height = page.evaluate(
        "Math.min(16000, (document.querySelector('.jp-WindowedPanel-outer')?.scrollHeight"
        " || 900) + 100)")
    page.set_viewport_size({"width": 1400, "height": int(height)})
    try:
        time.sleep(0.5)
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})


def tagged_cells(path: Path, tag: str = "raises-exception") -> frozenset[int]:
    nb = json.loads(path.read_text())
    return frozenset(i for i, c in enumerate(nb["cells"])
                     if tag in c.get("metadata", {}).get("tags", []))
