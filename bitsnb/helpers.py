"""One-line helpers for notebooks and scripts: ``download``, ``download_many``, ``paths``,
``cleanup``, ``explain``, ``run``.

The helpers put files where a data scientist expects them: ``download`` completes the job once it
is TRANSFERRED (``complete=False`` keeps BITS's two steps), ``wait=True`` returns when the files
are in place and raises ``BitsError`` when the job ends in ERROR (as pooch raises), and
``cleanup()`` removes the hidden temporary files that abandoned jobs leave behind. The BITS API
itself (``Manager``, ``Job``) stays as BITS has it.

``bitsnb/__init__.py`` imports this module eagerly, so it must stay light: pandas, IPython and
ipywidgets are imported only inside the functions that need them, and nothing here patches an
event loop at import time.

This module holds ``run`` and the helpers' public names; ``download``/``download_many`` are in
``_helpers_download``, ``paths``/``cleanup`` in ``_helpers_files``, ``explain`` and the frames in
``_helpers_explain``, ``default_manager`` in ``_helpers_manager``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from ._helpers_download import download, download_many
from ._helpers_explain import Explanation, errors_frame, explain, jobs_frame
from ._helpers_files import CleanupReport, cleanup, paths
from ._helpers_manager import default_manager

__all__ = [
    "CleanupReport",
    "Explanation",
    "cleanup",
    "default_manager",
    "download",
    "download_many",
    "errors_frame",
    "explain",
    "jobs_frame",
    "paths",
    "run",
]

T = TypeVar("T")


# -- run --------------------------------------------------------------------------------------


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def run(coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous code and return its result.

    - No running loop in this thread (a script, a worker thread): ``asyncio.run(coro)`` — a
      fresh loop, closed afterwards.
    - A loop is already running in this thread (a Jupyter cell runs inside the kernel's loop):
      ``asyncio.run`` would fail, so ``nest_asyncio2`` is applied to *that* loop, now (never
      at import), and ``loop.run_until_complete(coro)`` runs it re-entrantly. Tasks already on
      the loop — e.g. an ``AsyncManager`` started on the kernel's loop — keep running meanwhile.

    The blocking ``Manager`` never needs this: it runs its own loop on its own thread. ``run``
    is for driving an ``AsyncManager`` that lives on the kernel's loop from plain cells
    (``bitsnb.run(amgr.start())``); in a cell, a bare ``await`` works too.
    Note that ``nest_asyncio2`` patches asyncio process-wide once applied.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        main: Coroutine[Any, Any, T] = coro if isinstance(coro, Coroutine) else _await(coro)
        return asyncio.run(main)
    if threading.current_thread().name.startswith("bitsnb-loop"):
        if asyncio.iscoroutine(coro):
            coro.close()
        raise RuntimeError(
            "bitsnb.run() was called on a Manager's own loop thread (from a listener or "
            "callback); schedule the coroutine there instead of blocking the transfers"
        )
    import nest_asyncio2  # type: ignore[import-untyped]

    nest_asyncio2.apply(loop)
    result: T = loop.run_until_complete(coro)
    return result
