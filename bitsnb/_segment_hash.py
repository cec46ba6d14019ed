"""The whole file's hash of a segmented download, kept in file order.

The connection writing at the hashed end feeds its bytes to the hasher as they arrive; what the
other connections wrote further on is read back (from the page cache, on the engine's hash
pool) once the contiguous prefix reaches it. Every byte is hashed once, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._filecheck import Check, Partial
from ._integrity import new_hasher
from ._segment_parts import SegmentHost
from ._tempfile import hash_prefix

__all__ = ["PrefixHash"]

_PASSES = 3  # bounded: a second read-back pass reaches the end once every byte is written


class PrefixHash:
    """The read-back half of a segmented file's hash (the inline half is the writer's)."""

    __slots__ = ("check", "host", "task")

    def __init__(self, host: SegmentHost, check: Check) -> None:
        self.host, self.check = host, check
        self.task: asyncio.Task[None] | None = None  # a read-back running now

    def inline_at(self, pos: int) -> bool:
        """Whether bytes written at *pos* go to the hasher as they are (the hashed end)."""
        whole = self.check.whole
        return whole is not None and pos == whole.hashed and self.task is None

    def ready(self, prefix_end: int) -> None:
        """A resumed table: the whole file's hasher, from the prefix this process hashed
        (a new one when that prefix is longer than what the table says is on disk)."""
        check = self.check
        check.content = check.content_hasher = None
        if check.expected is None:
            check.whole = None
            return
        alg = check.expected.algorithm
        whole = check.whole
        if whole is None or whole.algorithm != alg or whole.hashed > prefix_end:
            check.whole = Partial(alg, new_hasher(alg), 0)

    def more(self, fd: int, prefix_end: int) -> None:
        """Read back and hash what other connections wrote, once the prefix reaches it."""
        whole = self.check.whole
        if whole is None or self.task is not None:
            return
        if prefix_end > whole.hashed:
            self.check.sound = False
            self.task = asyncio.create_task(self._read_back(fd, whole, prefix_end))

    async def _read_back(self, fd: int, whole: Partial, target: int) -> None:
        try:
            read = await asyncio.get_running_loop().run_in_executor(
                self.host.hash_pool(), hash_prefix, fd, whole.hasher, whole.hashed, target
            )
        finally:
            self.task = None
        whole.hashed = target
        self.host.bytes_rehashed += read
        self.check.sound = True

    async def finish(self, fd: int, total: int) -> None:
        """Every byte is written: hash to the end (OSError when the file cannot be read)."""
        whole = self.check.whole
        for _ in range(_PASSES):
            if self.task is not None:
                await self.task
            if whole is None or whole.hashed >= total:
                return
            self.more(fd, total)
        raise OSError(5, "could not read back the temporary file to hash it")

    def pending(self) -> list[asyncio.Future[Any]]:
        """The read-back still running, to wait for before the descriptor closes."""
        return [self.task] if self.task is not None else []
