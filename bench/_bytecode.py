"""Byte-compile the bitsnb trees a run measures, as ``pip install`` does for an installed package.

Each bitsnb sample is a fresh process, so its import time is part of every figure. With
``PYTHONDONTWRITEBYTECODE=1`` (set on these machines) an editable checkout is compiled from
source on every start, a cost no installed copy pays and one that grows with the code, not
with the work: a larger tree would look slower for no reason a user meets. ``py_compile``
writes the ``.pyc`` files whatever that variable says; the samples then only read them.
"""

from __future__ import annotations

import compileall
from collections.abc import Iterable
from pathlib import Path

__all__ = ["precompile"]


def precompile(trees: Iterable[Path]) -> list[Path]:
    """Compile ``<tree>/bitsnb`` for each tree (``.pyc`` next to the sources); the packages
    compiled. Raises RuntimeError when one does not compile."""
    done: list[Path] = []
    for tree in trees:
        pkg = tree / "bitsnb"
        if not pkg.is_dir():
            continue
        if not compileall.compile_dir(pkg, quiet=1, workers=0):
            raise RuntimeError(f"byte-compiling {pkg} failed")
        done.append(pkg)
    return done
