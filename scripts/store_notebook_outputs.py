"""Run notebooks and keep reference outputs only where nbval checks them.

    .venv/bin/python scripts/store_notebook_outputs.py notebooks/*.ipynb notebooks/solutions/*.ipynb

Cells marked ``# NBVAL_CHECK_OUTPUT`` keep their stdout and plain-text results (the facts
``make test`` compares); every other output and all widget state is dropped, so the
committed notebooks stay small and free of random ids, ports and timestamps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def store(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if "NBVAL_CHECK_OUTPUT" in cell.source:
            kept = []
            for out in cell.outputs:
                if out.output_type == "stream" and out.name == "stdout":
                    kept.append(out)
                elif out.output_type == "execute_result":
                    out.data = {k: v for k, v in out.data.items() if k == "text/plain"}
                    out.metadata = {}
                    kept.append(out)
            cell.outputs = kept
        else:
            cell.outputs = []
        if not cell.outputs:
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return time.monotonic() - start


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {store(Path(name)):.1f} s", flush=True)
