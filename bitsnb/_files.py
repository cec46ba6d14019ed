"""Temporary files that cannot be turned against their owner.

A temporary file's name is in the store, which other local users may have been able to read
(older stores were 0644) or guess; a symbolic link planted under that name would make a plain
``open(name, "wb")`` write through it into another file, and ``complete()`` move the link into
place. So temporary files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600, and
reopened with ``O_NOFOLLOW`` and checked to be regular files owned by this user.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import IO

__all__ = ["create_private", "open_private", "private_size", "truncate_private"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _refuse(path: str, why: str) -> OSError:
    return PermissionError(errno.EPERM, f"refused: {why}", path)


def _checked(fd: int, path: str) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
        os.close(fd)
        raise _refuse(path, "not a regular file of this user's")
    return fd


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise _refuse(path, "it is a symbolic link") from None
        raise


def create_private(path: str) -> IO[bytes]:
    """Create *path* empty (mode 0600), or empty an existing regular file of ours."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    except FileExistsError:
        fd = _checked(_open(path, os.O_WRONLY), path)
        os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb")


def open_private(path: str) -> IO[bytes]:
    """Reopen an existing temporary file for writing at offsets (r+b)."""
    return os.fdopen(_checked(_open(path, os.O_RDWR), path), "r+b")


def private_size(path: str) -> int:
    """Bytes in *path* (0 when it does not exist); a link or a foreign file is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "it is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "not a regular file")
    return st.st_size


def truncate_private(path: str) -> None:
    """Empty *path* if it exists (a link or a foreign file is refused)."""
    try:
        fd = _checked(_open(path, os.O_WRONLY), path)
    except FileNotFoundError:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
