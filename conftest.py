"""Collection rules shared by the tests and the notebooks (nbval collects those from
``notebooks/``): a notebook whose metadata says ``"rtkit": {"requires": ["redis-server"]}``
is skipped, with the reason, when that program is missing, except under ``CI=true`` (where
``make test`` installs it, and a missing program must fail, not skip)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


def missing_programs(notebook: Path) -> list[str]:
    """Programs a notebook needs (its ``rtkit.requires`` metadata) that are not installed."""
    try:
        meta = json.loads(notebook.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return []
    needs = meta.get("rtkit", {}).get("requires", [])
    return [p for p in needs if shutil.which(p) is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CI") == "true":
        return
    verdicts: dict[Path, list[str]] = {}
    for item in items:
        path = Path(str(item.path))
        if path.suffix != ".ipynb":
            continue
        if path not in verdicts:
            verdicts[path] = missing_programs(path)
        if verdicts[path]:
            item.add_marker(pytest.mark.skip(
                reason=f"{path.name} needs {', '.join(verdicts[path])} (not installed; "
                       "`make test` installs it when run as root)"))
