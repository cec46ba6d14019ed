"""Which store a store argument names, and opening it: a path is a SQLite file, a
``postgresql://`` URL a PostgreSQL database; any other URL-looking string is refused.

The PostgreSQL store (and psycopg) is imported only when a URL asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _codes
from ._errors import BitsError
from ._store import Store
from ._store_api import JobStore, StoreURL, url_scheme

__all__ = ["open_store", "store_location"]


def store_location(store: str | os.PathLike[str] | StoreURL) -> Path | StoreURL:
    """The SQLite file or the database a store argument names (E_INVALIDARG for a URL of a
    scheme bitsnb does not know: never taken for a folder name)."""
    if isinstance(store, StoreURL):
        return store
    text = os.fspath(store)
    if isinstance(text, str) and url_scheme(text) is not None:
        return StoreURL(text)  # raises for a scheme other than postgresql://
    return Path(text)


def open_store(where: Path | StoreURL, writer: str, busy_timeout: float) -> JobStore:
    """Open (and create or migrate) the store at *where*; blocks: call it off the loop."""
    if isinstance(where, Path):
        return Store(where, writer, busy_timeout)
    try:
        from ._store_pg import PgStore
    except ImportError as exc:
        raise BitsError(
            _codes.E_INVALIDARG,
            f"the store {where} needs psycopg: pip install 'bitsnb[postgres]' ({exc})",
        ) from exc
    return PgStore(where, writer, busy_timeout)
