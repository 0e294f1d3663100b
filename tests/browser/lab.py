"""Start JupyterLab on loopback and drive it with Debian's chromium through playwright."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT = Path(os.environ.get("RTKIT_TEST_OUTPUT", "test-output")) / "browser"


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
def jupyterlab(root: Path) -> Iterator[str]:
    """JupyterLab serving ``root`` on a free loopback port, without a token."""
    port = free_port()
    settings = root / ".jupyter-config/lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    log = (OUTPUT / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
         "--ServerApp.password=", "--LabApp.news_url=None", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={root}"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config")})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
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
        try:
            yield page
        finally:
            browser.close()


def run_all(page: Any, url: str, name: str, but_last: bool = False) -> None:
    """Open a notebook fresh and run its cells through the Run menu: all of them, or all but
    the last (a clean-up cell that would close the widgets we want to look at)."""
    page.goto(f"{url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # the kernel must be up before we run anything ("Python 3 (ipykernel) | Idle")
    page.wait_for_function("document.querySelector('.jp-StatusBar-Widget')?.innerText"
                           ".includes('| Idle')", timeout=90_000)
    cells = page.locator(".jp-CodeCell .jp-InputArea-editor")
    (cells.last if but_last else cells.first).click()
    page.keyboard.press("Escape")  # command mode: the Run menu acts on the selected cell
    page.get_by_role("menuitem", name="Run", exact=True).click()
    label = "Run All Above Selected Cell" if but_last else "Run All Cells"
    page.get_by_role("menuitem", name=label, exact=True).click()


def run_last_cell(page: Any) -> None:
    """Run the notebook's last code cell (click into it, Shift+Enter)."""
    page.locator(".jp-CodeCell .jp-InputArea-editor").last.click()
    page.keyboard.press("Shift+Enter")


def save_notebook_copy(root: Path, name: str, cells: list[str]) -> None:
    (root / name).write_text(json.dumps(notebook(cells)))


def copy_notebook(src: Path, root: Path) -> None:
    shutil.copy(src, root / src.name)
