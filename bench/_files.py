"""The files nginx serves: random (incompressible) content, generated once per run."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FileSet", "make_file", "sha256_of"]

_BLOCK = 4 << 20


def make_file(path: Path, size: int) -> None:
    """Write *size* random bytes to *path* (os.urandom, in 4 MiB blocks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(_BLOCK, left)
            fh.write(os.urandom(n))
            left -= n


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileSet:
    """A group of served files: their paths relative to the web root and their size each."""

    name: str
    rel_paths: tuple[str, ...]
    size_each: int

    @property
    def count(self) -> int:
        """How many files."""
        return len(self.rel_paths)

    @property
    def total(self) -> int:
        """Bytes in all of them."""
        return self.count * self.size_each

    @classmethod
    def create(cls, root: Path, name: str, count: int, size_each: int) -> FileSet:
        """Generate *count* files of *size_each* random bytes under ``root/name/``."""
        rels: tuple[str, ...]
        if count == 1:
            rels = (f"{name}.bin",)
        else:
            width = len(str(count - 1))
            rels = tuple(f"{name}/f{i:0{width}d}.bin" for i in range(count))
        for rel in rels:
            make_file(root / rel, size_each)
        return cls(name, rels, size_each)
