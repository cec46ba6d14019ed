"""The PostgreSQL tests' fixtures, in one place: ``url`` (a fresh database on the session's
server, ``postgres`` in ``tests/conftest.py``) and ``opened`` (raw ``PgStore``s on it, closed
at the test's end), loaded for every test by ``tests/conftest.py`` (``pytest_plugins``); a
module's own fixture of the same name takes precedence there."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from _support.postgres import Postgres

if TYPE_CHECKING:
    from bitsnb._store_pg import PgStore

__all__ = ["opened", "url"]


@pytest.fixture
def url(postgres: Postgres) -> str:
    """A fresh database."""
    return postgres.new_database()


@pytest.fixture
def opened(url: str) -> Iterator[Callable[[str], PgStore]]:
    """Open PgStores on the database under a writer name each (closed at the end)."""
    from bitsnb._store_api import StoreURL
    from bitsnb._store_pg import PgStore

    stores: list[PgStore] = []

    def open_one(writer: str) -> PgStore:
        store = PgStore(StoreURL(url), writer, 5.0)
        stores.append(store)
        return store

    yield open_one
    for s in stores:
        s.close()
