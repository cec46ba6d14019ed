"""Hashing a file on disk: what ``download()``'s cache and ``bitsnb verify`` read.

A transfer never needs this (its bytes are hashed as they stream in); it is for a file bitsnb
did not write, or one checked again on request. Reads go in 1 MiB blocks into one buffer.
"""

from __future__ import annotations

import os

from ._integrity import new_hasher

__all__ = ["hash_file"]

_BLOCK = 1024 * 1024


def hash_file(path: str | os.PathLike[str], algorithm: str) -> str:
    """``alg:hex`` of the file at *path* (OSError when it cannot be read)."""
    hasher = new_hasher(algorithm)
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            hasher.update(view[:n])
    return f"{algorithm}:{hasher.digest().hex()}"
