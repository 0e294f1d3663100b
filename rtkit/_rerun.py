"""Re-running a notebook cell must not leak the connections and servers it made last time.

Objects are keyed by the code location that created them (IPython names a cell's code after
its content, so the same cell run again has the same location) and by the execution count.
When a location creates an object under a *newer* execution count, the objects it created
before are closed. Several objects created by one run (a loop in a cell) are all kept.
Outside IPython this does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rtkit")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_registry: dict[tuple[str, str, int], tuple[int, list[tuple[Any, Callable[[Any], Any]]]]]
_registry = {}


def _execution_count() -> int | None:
    ipython_mod = sys.modules.get("IPython")
    if ipython_mod is None:
        return None
    try:
        shell = ipython_mod.get_ipython()
    except Exception:  # pragma: no cover - defensive
        return None
    if shell is None:
        return None
    return int(getattr(shell, "execution_count", 0))


def _caller() -> tuple[str, int] | None:
    frame = sys._getframe(2)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIR):
            return filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None  # pragma: no cover


def replace_previous(kind: str, obj: Any, close: Callable[[Any], Any]) -> None:
    """Register ``obj``; ``close(old)`` what the same cell made in an earlier run.

    The registry keeps the objects of the latest run of each cell: a server or client whose
    variable was overwritten by the re-run is still running, so it must still be reachable.
    """
    count = _execution_count()
    where = _caller() if count is not None else None
    if count is None or where is None:
        return
    key = (kind, *where)
    previous = _registry.get(key)
    if previous is not None and previous[0] != count:
        for old, closer in previous[1]:
            log.info("closing the %s made by an earlier run of this cell", kind)
            try:
                closer(old)
            except Exception:
                log.exception("could not close the previous %s", kind)
        previous = None
    entries = previous[1] if previous is not None else []
    entries.append((obj, close))
    _registry[key] = (count, entries)
