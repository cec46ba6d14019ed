"""A download's temporary file: created off the loop, sized, emptied, preallocated, written at
offsets, and read back to hash its prefix."""

from __future__ import annotations

import asyncio
import errno
import os
from typing import IO

from ._failures import local_failure
from ._files import create_private, private_size, truncate_private
from ._fsyncs import outlast
from ._integrity import Hasher
from ._records import FileRecord

__all__ = [
    "create_temp",
    "discard_file",
    "hash_prefix",
    "preallocate",
    "pwrite_all",
    "temp_size",
    "truncate_temp",
]

_PREFIX_BLOCK = 1024 * 1024  # a resumed file's prefix is re-hashed in blocks of this size


def discard_file(f: FileRecord) -> None:
    """The file back to 0 bytes, its temporary file emptied (OSError as a TransferFailure)."""
    truncate_temp(f)


def hash_prefix(fd: int, hasher: Hasher, start: int, end: int) -> int:
    """Hash bytes [start, end) of *fd* (a worker thread's job); returns the bytes read."""
    buf = memoryview(bytearray(min(_PREFIX_BLOCK, max(1, end - start))))
    pos = start
    while pos < end:  # bounded: every pass reads ≥ 1 byte or raises
        n = os.preadv(fd, [buf[: min(len(buf), end - pos)]], pos)
        if n <= 0:
            raise OSError(5, "the temporary file is shorter than recorded")
        hasher.update(buf[:n])
        pos += n
    return pos - start


async def create_temp(path: str) -> IO[bytes]:
    """Create (or empty) *path* in a thread: that costs ~0.3 ms of kernel time on some file
    systems, and other transfers go on meanwhile. A cancelled caller still waits for the
    thread and closes the file, so nothing creates it after cancel() deleted the temps."""
    fut = asyncio.get_running_loop().run_in_executor(None, create_private, path)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        try:
            await outlast(fut)
        finally:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().close()
        raise


def temp_size(f: FileRecord) -> int:
    try:
        return private_size(f.temp_name)
    except OSError as exc:
        raise local_failure(exc, f.temp_name) from exc


def truncate_temp(f: FileRecord) -> None:
    f.segments = None
    f.bytes_transferred = 0
    f.transferred = False
    f.hash = None
    f.etag = None
    f.last_modified = None
    if f.ranges is None:
        f.bytes_total = None
    try:
        truncate_private(f.temp_name)
    except OSError as exc:
        raise local_failure(exc, f.temp_name) from exc


def preallocate(fd: int, size: int) -> None:
    """Reserve *size* bytes for the file (a full disk fails here, not mid-way); where the file
    system cannot, just set the size."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)


def pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    while view:  # bounded: every pass writes ≥ 1 byte or raises
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n
