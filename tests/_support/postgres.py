"""A real PostgreSQL for the tests, from Debian's packages: a cluster in a temporary folder,
on a unix socket in that folder (no TCP), ``fsync=off``, stopped at the end.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user
(``runuser``); as anybody else it runs as that user. Each test gets a database of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

__all__ = ["PG_BIN", "Postgres", "find_pg_bin", "running_postgres"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def find_pg_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl`` (Debian's, else any version's, else PATH), or None."""
    candidates = [PG_BIN, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """A running cluster: ``url(db)`` names a database on its socket; ``new_database()``."""

    def __init__(self, bin_dir: Path, root: Path, as_postgres: bool) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.socket_dir = root
        self.data = root / "data"
        self._as_postgres = as_postgres

    def _run(self, *argv: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run(
            [*prefix, *argv], check=True, timeout=timeout, capture_output=True, text=True
        )

    def url(self, database: str = "postgres") -> str:
        """The ``postgresql://`` URL of *database* on this cluster's socket."""
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir), safe='/')}"

    def new_database(self) -> str:
        """Create an empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        """``initdb`` then ``pg_ctl start`` (waits until it accepts connections)."""
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._pg_ctl("-o", options, "-l", str(self.root / "server.log"), "start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the data stays."""
        self._pg_ctl("-m", "fast", "-l", str(self.root / "server.log"), "restart")

    def stop(self) -> None:
        """``pg_ctl stop -m immediate`` (the data is thrown away anyway)."""
        self._pg_ctl("-m", "immediate", "stop")

    def _pg_ctl(self, *argv: str) -> None:
        """``pg_ctl -D <data> -w -s …`` (waits for the server; quiet)."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-s", *argv)


@contextmanager
def running_postgres(bin_dir: Path) -> Iterator[Postgres]:
    """A cluster in a fresh temporary folder, stopped and removed on exit."""
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="bitsnb-pg-"))
    if as_postgres:
        shutil.chown(root, user="postgres")
    pg = Postgres(bin_dir, root, as_postgres)
    try:
        pg.start()
        try:
            yield pg
        finally:
            pg.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
