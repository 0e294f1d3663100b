"""Start JupyterLab for learners on a working copy of the tutorials (what ``make lab`` runs).

    .venv/bin/python scripts/lab.py [--dir my-notebooks] [--port 8888]

The notebooks in ``notebooks/`` are tracked by git; JupyterLab autosaves outputs into
whatever it opens, so learners work in ``my-notebooks/`` instead (git-ignored). Each
original is copied there only when the copy is missing: your edits and outputs are kept,
notebooks added by a ``git pull`` appear, and deleting a copy gives you a fresh one the next
time. When an original is newer than your copy, this script says so (and keeps your copy).

It also turns off JupyterLab's news and update pop-ups (a setting override in this
environment: ``--LabApp.news_url=None`` alone does not stop the "fetch news?" question).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORIGINALS = ROOT / "notebooks"
OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                     "checkForUpdates": False},
}


def working_copy(originals: Path, copy: Path) -> list[str]:
    """Copy every file of ``originals`` that ``copy`` lacks; returns what to tell the user."""
    notes = []
    for src in sorted(originals.rglob("*")):
        rel = src.relative_to(originals)
        if src.is_dir() or any(part.startswith(".") for part in rel.parts):
            continue  # .ipynb_checkpoints and the like
        dst = copy / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)  # a new mtime: "newer than your copy" stays meaningful
            notes.append(f"created {dst.relative_to(copy.parent)}")
        elif src.stat().st_mtime > dst.stat().st_mtime:
            notes.append(f"note: {src.relative_to(originals.parent)} changed after your copy "
                         f"was made; delete {dst.relative_to(copy.parent)} to get the new one")
    return notes


def quiet_settings(prefix: Path | None = None) -> Path:
    """Merge :data:`OVERRIDES` into this environment's JupyterLab ``overrides.json``."""
    path = Path(prefix or sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    for plugin, values in OVERRIDES.items():
        settings.setdefault(plugin, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def command(root: Path, port: int, *extra: str) -> list[str]:
    """The JupyterLab command line: loopback only, and a busy port fails instead of moving."""
    return [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", "--LabApp.news_url=None",
            # containers and workshop machines often run as root; JupyterLab refuses without
            "--allow-root", *extra]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="my-notebooks", help="the working copy (git-ignored)")
    parser.add_argument("--port", type=int, default=8888)
    args = parser.parse_args(argv)
    copy = (ROOT / args.dir).resolve()
    for note in working_copy(ORIGINALS, copy):
        print(note)
    quiet_settings()
    print(f"JupyterLab on {copy} (your copies: edit freely, git ignores them)", flush=True)
    cmd = command(copy, args.port)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
