"""A notify interface written for the blocking ``Job``, adapted to the async core: each
callback runs in a worker thread and receives the blocking ``Job``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ._job import AsyncJob

__all__ = ["SyncNotify"]


class SyncNotify:
    """Adapts a notify interface written for ``Job`` (blocking) to the async core."""

    def __init__(self, wrap: Callable[[AsyncJob], object], target: Any) -> None:
        self._wrap = wrap  # the blocking Job of an AsyncJob
        self._target = target

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._target, name, None)
        if fn is None or name not in {
            "job_transferred",
            "job_error",
            "job_modification",
            "file_transferred",
        }:
            raise AttributeError(name)

        async def call(ajob: AsyncJob, *args: Any) -> None:
            job = self._wrap(ajob)
            result = await asyncio.to_thread(fn, job, *args)  # may call back into Job
            if asyncio.iscoroutine(result):
                await result

        return call
