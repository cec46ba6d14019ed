"""The files a ``FileServer`` serves: safe names, seeded content, swaps and validators.

Content is written to a temporary file and swapped in atomically with a fresh generation and
mtime, so ETag and Last-Modified change with every change; a file is opened with its stat and
generation read together.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import os
import random
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = ["ServedFiles", "if_range_matches", "normalize_name", "validators"]

_BLOCK = 1 << 20  # random content is generated and written in 1 MiB blocks


def normalize_name(name: str) -> str:
    """Return the canonical relative POSIX key for ``name``; refuse absolute or escaping names."""
    if not name or "\x00" in name or "\\" in name:
        raise ValueError(f"invalid file name {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"file name must be relative and stay under root: {name!r}")
    key = pure.as_posix()
    if key in ("", "."):
        raise ValueError(f"invalid file name {name!r}")
    return key


def _write_random(fh: IO[bytes], size: int, seed: int | str) -> None:
    """Write ``size`` deterministic pseudo-random bytes in 1 MiB blocks (flat memory, fast).

    The first block comes straight from ``random.Random(seed)``; each later block is that block
    rotated by a seeded offset, with its index in the first 8 bytes, so all blocks differ.
    """
    rng = random.Random(seed)
    base = rng.randbytes(min(size, _BLOCK))
    fh.write(base)
    remaining = size - len(base)
    if remaining <= 0:
        return
    src = memoryview(base)
    view = memoryview(bytearray(_BLOCK))  # reused: fresh 1 MiB buffers cost page faults
    index = 1
    while remaining > 0:
        k = rng.randrange(_BLOCK)
        view[: _BLOCK - k] = src[k:]
        view[_BLOCK - k :] = src[:k]
        view[:8] = index.to_bytes(8, "little")
        n = min(_BLOCK, remaining)
        fh.write(view[:n])
        remaining -= n
        index += 1


def _bytes_writer(data: bytes) -> Callable[[IO[bytes]], None]:
    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    return write


def validators(st: os.stat_result, generation: int) -> tuple[str, str]:
    """The strong ETag and the Last-Modified date of a served file."""
    etag = f'"{st.st_size}-{generation}-{st.st_mtime_ns:x}"'
    return etag, email.utils.formatdate(st.st_mtime, usegmt=True)


def if_range_matches(value: str | None, etag: str, last_modified: str, mtime: int) -> bool:
    """Whether a request's ``If-Range`` lets its Range apply (absent: yes; strong match only)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False  # If-Range requires strong comparison
    if value == last_modified:
        return True
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp()) == mtime


class ServedFiles:
    """The files under *root*, with their generations, mtimes and seeds (under *lock*)."""

    def __init__(self, root: Path, lock: threading.Lock) -> None:
        self._root = root
        self._root_resolved = root.resolve()
        self._lock = lock
        self._gens: dict[str, int] = {}
        self._mtimes: dict[str, int] = {}
        self._seeds: dict[str, int] = {}

    def path(self, name: str) -> Path:
        """On-disk path of ``name`` under root (traversal refused with ValueError)."""
        return self._root / normalize_name(name)

    def _next_mtime_locked(self, key: str, target: Path) -> int:
        prev: int | None = self._mtimes.get(key)
        if prev is None:
            with contextlib.suppress(OSError):
                prev = math.floor(target.stat().st_mtime)
        now = math.floor(time.time())
        return now if prev is None or now > prev else prev + 1

    def _replace(self, key: str, writer: Callable[[IO[bytes]], None]) -> None:
        """Write new content to a temp file, then atomically swap it in with fresh validators."""
        target = self._root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".bitsnb-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
            os.chmod(tmp_name, 0o644)
            with self._lock:
                existed = target.exists()
                mtime = self._next_mtime_locked(key, target)
                os.utime(tmp_name, (mtime, mtime))
                os.replace(tmp_name, target)
                known = key in self._gens
                self._gens[key] = self._gens.get(key, 0) + 1 if (known or existed) else 0
                self._mtimes[key] = mtime
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise

    def add(self, name: str, data: bytes) -> str:
        """Write ``root/name`` (creating folders) with ``data``; returns its key."""
        key = normalize_name(name)
        self._replace(key, _bytes_writer(data))
        return key

    def add_random(self, name: str, size: int, seed: int) -> str:
        """Write ``size`` deterministic pseudo-random bytes; returns its key."""
        if size < 0:
            raise ValueError("size must be >= 0")
        key = normalize_name(name)
        self._replace(key, lambda fh: _write_random(fh, size, seed))
        with self._lock:
            self._seeds[key] = seed
        return key

    def change(self, name: str, data: bytes | None = None) -> None:
        """Replace the content (``None``: new random bytes, same size); ETag and mtime change."""
        key = normalize_name(name)
        target = self._root / key
        if not target.is_file():
            raise FileNotFoundError(f"no such served file: {name!r}")
        if data is not None:
            self._replace(key, _bytes_writer(data))
            return
        size = target.stat().st_size
        with self._lock:
            seed = f"{self._seeds.get(key, 0)}:{key}:{self._gens.get(key, 0) + 1}"
        self._replace(key, lambda fh: _write_random(fh, size, seed))

    def open(self, name: str) -> tuple[IO[bytes], os.stat_result, int] | None:
        """Open a served file with its stat and generation, consistently; None if not servable."""
        try:
            key = normalize_name(name)
        except ValueError:
            return None
        with self._lock:
            try:
                resolved = (self._root / key).resolve(strict=True)
            except (OSError, RuntimeError):
                return None
            if not resolved.is_relative_to(self._root_resolved) or not resolved.is_file():
                return None
            try:
                fh = open(resolved, "rb")  # closed by the caller
            except OSError:
                return None
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                fh.close()
                return None
            return fh, st, self._gens.get(key, 0)
