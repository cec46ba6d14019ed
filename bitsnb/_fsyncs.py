"""Group fsync: the files that finish together made durable by one executor job.

A small file's final ``fsync`` is one thread hop (a future, a wake-up of the loop) per file;
with several files in flight they end close together. ``GroupSync`` queues such jobs (an
``fsync`` of an open descriptor, or a whole small file created, written, fsynced and closed);
while one batch runs on the worker thread the next ones wait and go together in the next
batch, so a burst of N files costs one hop, not N. Each caller is answered only once its own
job returned (its error, such as a full disk, is its own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from collections.abc import Callable
from typing import Any

from ._files import create_private

__all__ = ["GroupSync", "outlast", "write_whole"]


def write_whole(path: str, data: bytes) -> None:
    """Create *path* (mode 0600, or empty our own file there), write *data*, fsync, close."""
    fh = create_private(path)
    try:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    finally:
        fh.close()


_MAX_CANCELS = 64  # cancels a wait in ``outlast`` sits through before it gives up


async def outlast(fut: asyncio.Future[Any]) -> None:
    """Wait until *fut* is done, through any cancel of the caller meanwhile, then raise the
    cancel if one came: what its thread touches (the descriptor it syncs) must stay valid
    until then. A job cancelled while its task already unwound from a first cancel left
    this wait early, and the file was closed under a queued fsync (EBADF, found by CI)."""
    cancelled = False
    for _ in range(_MAX_CANCELS):  # bounded: each turn ends with fut done or a cancel
        if fut.done():
            break
        try:
            await asyncio.wait([fut])
        except asyncio.CancelledError:
            cancelled = True
    if fut.done() and not fut.cancelled():
        fut.exception()  # retrieved, so asyncio does not warn about it
    if cancelled:
        raise asyncio.CancelledError


def _run_all(jobs: list[Callable[[], None]]) -> list[OSError | None]:
    """Run each job, in order; each one's error, or None."""
    out: list[OSError | None] = []
    for job in jobs:
        try:
            job()
        except OSError as exc:
            out.append(exc)
        else:
            out.append(None)
    return out


class GroupSync:
    """Batches of file-durability jobs on one worker thread, one batch at a time."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], None], asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.batches = 0  # executor jobs run (for tests and the bench: hops saved)
        self.synced = 0  # jobs run

    async def fsync(self, fd: int) -> None:
        """Return once ``fsync(fd)`` did (raise its ``OSError``); *fd* stays open until then."""
        await self.run(functools.partial(os.fsync, fd))

    async def write_whole(self, path: str, data: bytes) -> None:
        """Return once *path* holds *data*, durably (``write_whole`` in the batch thread)."""
        await self.run(functools.partial(write_whole, path, data))

    async def run(self, job: Callable[[], None]) -> None:
        """Run *job* in the next batch; return (or raise its ``OSError``) once it ran. A
        cancelled caller still waits for it: what it touches must stay valid until then."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, fut))
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._drain())
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            await outlast(fut)  # e.g. the descriptor must stay open while the thread syncs it
            raise

    async def _drain(self) -> None:
        """Run what is waiting, batch after batch, until nothing is."""
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bitsnb-fsync")
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                errors = await loop.run_in_executor(self._pool, _run_all, [j for j, _ in batch])
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
