"""The repository's promises: layout, two commands, environment files in step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


#: PyPI name -> conda-forge name, where they differ (conda-forge's "redis" is not redis-py).
CONDA_NAMES = {"redis": "redis-py"}


def _names(requirements: list[str]) -> set[str]:
    names = {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower().replace("_", "-")
             for r in requirements}
    return {CONDA_NAMES.get(n, n) for n in names}


def test_top_level_layout() -> None:
    for name in ("notebooks", "rtkit", "tests", "docs", "benchmarks", "pyproject.toml",
                 "environment.yml", "README.md", "Makefile", ".ci/run"):
        assert (ROOT / name).exists(), name


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = _names(project["dependencies"] + extras["test"] + extras["lab"]
                    + [r for r in extras["dev"] if not r.startswith("rtkit")])
    env = (ROOT / "environment.yml").read_text().split("dependencies:", 1)[1]
    listed = {m.lower() for m in re.findall(r"^  - ([A-Za-z0-9_.-]+)", env, re.M)}
    # what conda-forge lacks comes from PyPI, in the pip: section
    listed |= {m.lower() for m in re.findall(r"^      - ([A-Za-z][A-Za-z0-9_.-]*)", env, re.M)}
    assert wanted - listed == set(), "add these to environment.yml"
    assert listed - wanted - {"python", "pip"} == set(), "add these to pyproject.toml"


def test_readme_has_exactly_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^```(?:sh|bash)\n(.*?)\n```", readme, re.M | re.S)
    assert "make lab" in commands[0] and "make test" in commands[1]
    assert "make test" in (ROOT / ".ci/run").read_text()
