"""The notebooks are the docs: each follows the house rules (nbval runs them separately)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
SOLUTIONS = ROOT / "notebooks" / "solutions"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_the_path_is_numbered_from_01_without_gaps() -> None:
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert len(numbers) >= 8 and numbers == list(range(1, len(numbers) + 1))


#: A statement at the top level of a cell that stops a broker, a proxy or a subprocess:
#: Run All would reach it and leave a dead notebook behind.
STOPPING = re.compile(r"^(await )?[\w.]*\.(stop|send_signal|terminate|kill|shutdown)\(",
                      re.MULTILINE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_rules(path: Path) -> None:
    nb = load(path)
    cells = nb["cells"]
    assert 15 <= len(cells) <= 25, f"{len(cells)} cells"
    intro = source(cells[0])
    for part in ("What you will do", "What you will learn", "What you need", "Run All",
                 "Error displaying widget"):  # and how to bring widgets back after a reopen
        assert part in intro
    text = "\n".join(source(c) for c in cells)
    assert "## Exercise" in text
    solution = re.search(r"solutions/([\w.-]+\.ipynb)", text)
    assert solution and (SOLUTIONS / solution.group(1)).exists()
    checked = [c for c in cells if "NBVAL_CHECK_OUTPUT" in source(c)]
    assert checked, "the cells that teach a fact must have their output checked"
    assert all(c["outputs"] for c in checked), "checked cells need their reference output"
    unchecked_outputs = [c for c in cells if c["cell_type"] == "code" and c not in checked
                         and c["outputs"]]
    assert not unchecked_outputs, "commit outputs only where they are checked"
    assert "widgets" not in nb["metadata"], "do not commit widget state"
    assert path.stat().st_size < 100_000
    assert "random.seed" in text or "seed=" in text or path.name.startswith(("02", "03"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_run_all_leaves_a_living_notebook(path: Path) -> None:
    """No clean-up cell that Run All reaches: things stop with the kernel, and a notebook
    says so at the end; a live plot is fed by a source that runs until stopped: a
    ``Producer`` widget, or a replay server (``rtkit.feed.replay``, which streams until the
    kernel stops)."""
    cells = load(path)["cells"]
    assert "## Clean up" not in "\n".join(source(c) for c in cells)
    for cell in cells:
        if cell["cell_type"] == "code":
            assert not STOPPING.search(source(cell)), source(cell)
    last = cells[-1]
    assert last["cell_type"] == "markdown" and "## When you are done" in source(last)
    assert "Shut Down Kernel" in source(last)
    text = "\n".join(source(c) for c in cells if c["cell_type"] == "code")
    if "LivePlot(" in text:
        assert "Producer(" in text or re.search(r"\breplay\.\w+\(", text), \
            "a live plot needs data that keeps coming"


def test_every_solution_belongs_to_a_notebook() -> None:
    names = {p.name.replace("-solution", "") for p in SOLUTIONS.glob("*.ipynb")}
    assert names == {p.name for p in NOTEBOOKS}
    for path in SOLUTIONS.glob("*.ipynb"):
        nb = load(path)
        assert "widgets" not in nb["metadata"]
        assert any("NBVAL_CHECK_OUTPUT" in source(c) for c in nb["cells"])
        for cell in nb["cells"]:  # solutions stay alive after Run All too
            assert cell["cell_type"] != "code" or not STOPPING.search(source(cell))


def test_the_failure_shown_on_purpose_is_tagged_and_announced() -> None:
    for path in NOTEBOOKS:
        cells = load(path)["cells"]
        for i, cell in enumerate(cells):
            if "raises-exception" in cell["metadata"].get("tags", []):
                assert "fails on purpose" in source(cells[i - 1]), f"{path.name} cell {i}"
    nb = load(ROOT / "notebooks" / "03-authentication.ipynb")
    tagged = [c for c in nb["cells"] if "raises-exception" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and 'channel("news").publish' in source(tagged[0])
    forged = next(c for c in nb["cells"] if "forged =" in source(c))
    assert "NBVAL_CHECK_OUTPUT" in source(forged) and "except rtkit.AuthError" in source(forged)
    assert len(forged["outputs"][0]["text"]) == 2  # one readable line, and the state


def test_readme_links_the_path_in_order() -> None:
    readme = (ROOT / "README.md").read_text()
    positions = [readme.find(f"notebooks/{p.name}") for p in NOTEBOOKS]
    assert all(pos >= 0 for pos in positions) and positions == sorted(positions)
