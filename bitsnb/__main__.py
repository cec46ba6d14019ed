"""``python -m bitsnb`` and the ``bitsnb`` script: the command line (see ``bitsnb._cli``)."""

from __future__ import annotations

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
