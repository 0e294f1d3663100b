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


def test_the_path_has_eight_numbered_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_rules(path: Path) -> None:
    nb = load(path)
    cells = nb["cells"]
    assert 15 <= len(cells) <= 25, f"{len(cells)} cells"
    intro = source(cells[0])
    for part in ("What you will do", "What you will learn", "What you need"):
        assert part in intro
    text = "\n".join(source(c) for c in cells)
    assert "## Exercise" in text
    solution = re.search(r"solutions/([\w.-]+\.ipynb)", text)
    assert solution and (SOLUTIONS / solution.group(1)).exists()
    last = source(cells[-1])
    assert "## Clean up" in text and (".stop()" in last or ".close()" in last)
    checked = [c for c in cells if "NBVAL_CHECK_OUTPUT" in source(c)]
    assert checked, "the cells that teach a fact must have their output checked"
    assert all(c["outputs"] for c in checked), "checked cells need their reference output"
    unchecked_outputs = [c for c in cells if c["cell_type"] == "code" and c not in checked
                         and c["outputs"]]
    assert not unchecked_outputs, "commit outputs only where they are checked"
    assert "widgets" not in nb["metadata"], "do not commit widget state"
    assert path.stat().st_size < 100_000
    assert "random.seed" in text or "seed=" in text or path.name.startswith(("02", "03"))


def test_every_solution_belongs_to_a_notebook() -> None:
    names = {p.name.replace("-solution", "") for p in SOLUTIONS.glob("*.ipynb")}
    assert names == {p.name for p in NOTEBOOKS}
    for path in SOLUTIONS.glob("*.ipynb"):
        nb = load(path)
        assert "widgets" not in nb["metadata"]
        assert any("NBVAL_CHECK_OUTPUT" in source(c) for c in nb["cells"])


def test_the_failure_shown_on_purpose_is_tagged() -> None:
    nb = load(ROOT / "notebooks" / "03-authentication.ipynb")
    tagged = [c for c in nb["cells"] if "raises-exception" in c["metadata"].get("tags", [])]
    assert len(tagged) == 2
    assert any('channel("news").publish' in source(c) for c in tagged)


def test_readme_links_the_path_in_order() -> None:
    readme = (ROOT / "README.md").read_text()
    positions = [readme.find(f"notebooks/{p.name}") for p in NOTEBOOKS]
    assert all(pos >= 0 for pos in positions) and positions == sorted(positions)
