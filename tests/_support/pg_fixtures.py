"""The PostgreSQL tests' fixtures, in one place: ``url`` (a fresh database on the session's
server, ``postgres`` in ``tests/conftest.py``), ``opened`` (raw ``PgStore``s on it, closed
at the test's end) and ``manager_procs`` (manager processes on a store, ``pg_manager.py``,
stopped at the test's end), loaded for every test by ``tests/conftest.py``
(``pytest_plugins``); a module's own fixture of the same name takes precedence there."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from _support.postgres import Postgres

if TYPE_CHECKING:
    from bitsnb._store_pg import PgStore

__all__ = ["ManagerProcs", "manager_procs", "opened", "schema_database", "url"]

CHILD = Path(__file__).parent / "pg_manager.py"
TESTS = Path(__file__).parent.parent
READY_TIMEOUT = 60.0  # s, for a child to import bitsnb, open its manager and say so


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


def schema_database(postgres: Postgres) -> str:
    """A fresh database with bitsnb's schema made once, before several processes race for it."""
    import bitsnb

    url = postgres.new_database()
    bitsnb.Manager(store=url).close()
    return url


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The child's next line of output, waiting at most until *deadline* (monotonic)."""
    assert proc.stdout is not None
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            line = proc.stdout.readline()
            if line:
                return line.strip()
            break  # end of output: the child exited
    raise AssertionError(f"child said nothing (exit {proc.poll()})")


class ManagerProcs:
    """Manager processes (``pg_manager.py``) on a store, each with a policy."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start_many(
        self, url: str, n: int, fields: Mapping[str, object]
    ) -> list[subprocess.Popen[str]]:
        """Start *n* managers on *url* at once; return once each has said ``ready``."""
        started = []
        for _ in range(n):
            proc = subprocess.Popen(
                [sys.executable, str(CHILD), url, json.dumps(dict(fields))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(TESTS.parent)},
            )
            self.procs.append(proc)
            started.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT
        for proc in started:
            assert _read_line(proc, deadline) == "ready"
        return started

    def start(self, url: str, fields: Mapping[str, object]) -> subprocess.Popen[str]:
        """Start one manager on *url*; return once it has said ``ready``."""
        (proc,) = self.start_many(url, 1, fields)
        return proc

    @staticmethod
    def stop(procs: list[subprocess.Popen[str]]) -> None:
        """Close each child's stdin (it closes its manager and exits; a stopped one is
        continued first); kill what hangs."""
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                if p.stdin is not None:
                    p.stdin.close()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            if p.stdout is not None:
                p.stdout.close()


@pytest.fixture
def manager_procs() -> Iterator[ManagerProcs]:
    """Start manager processes on a store (``pg_manager.py``); all stopped at the test's end."""
    procs = ManagerProcs()
    try:
        yield procs
    finally:
        procs.stop(procs.procs)
