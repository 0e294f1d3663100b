"""A small synchronous helper for plain scripts and for notebook cells that cannot ``await``.

Prefer top-level ``await`` in notebooks. :func:`run` is the one place where rtkit uses
nest-asyncio, and only when it is called while an event loop is already running in this
thread (a Jupyter cell): it then patches *that* loop so it can be re-entered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")
_script_loop: asyncio.AbstractEventLoop | None = None


def run(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` to completion from synchronous code and return its result.

    In a plain script, every call runs on the same private event loop, so a client made in
    one call still works in the next (its background tasks progress only during calls).
    """
    global _script_loop
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if _script_loop is None or _script_loop.is_closed():
            _script_loop = asyncio.new_event_loop()
        return _script_loop.run_until_complete(awaitable)
    import nest_asyncio  # confined here on purpose: see the module docstring

    nest_asyncio.apply(loop)
    return loop.run_until_complete(awaitable)
