"""Group fsync: the files that finish together made durable by one executor job.

A small file's final ``fsync`` is one thread hop (a future, a wake-up of the loop) per file;
with several files in flight they end close together. ``GroupSync.fsync`` queues a descriptor;
while one batch is being synced on the worker thread the next ones wait and go together in the
next batch, so a burst of N files costs one hop, not N. Each caller is answered only once its own
descriptor's ``fsync`` returned (its error, such as a full disk, is its own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

__all__ = ["GroupSync"]


def _sync_all(fds: list[int]) -> list[OSError | None]:
    """``fsync`` each descriptor, in order; each one's error, or None."""
    out: list[OSError | None] = []
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            out.append(exc)
        else:
            out.append(None)
    return out


class GroupSync:
    """Batches of ``fsync`` calls on one worker thread, one batch at a time."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.batches = 0  # executor jobs run (for tests and the bench: hops saved)
        self.synced = 0  # descriptors synced

    async def fsync(self, fd: int) -> None:
        """Return once ``fsync(fd)`` did (raise its ``OSError``); *fd* must stay open until then."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((fd, fut))
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._drain())
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():  # the descriptor must stay open while the thread syncs it
                await asyncio.wait([fut])
            if not fut.cancelled():
                fut.exception()  # retrieved, so asyncio does not warn about it
            raise

    async def _drain(self) -> None:
        """Sync what is waiting, batch after batch, until nothing is."""
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bitsnb-fsync")
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                errors = await loop.run_in_executor(self._pool, _sync_all, [fd for fd, _ in batch])
            except BaseException as exc:  # cancelled (the loop closing): every waiter is told
                for _, fut in batch + self._waiting:
                    if not fut.done():
                        fut.set_exception(exc)
                self._waiting = []
                raise
            self.batches += 1
            self.synced += len(batch)
            for (_, fut), err in zip(batch, errors, strict=True):
                if fut.done():
                    continue
                if err is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(err)

    def close(self) -> None:
        """Stop the worker thread (batches under way finish)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
