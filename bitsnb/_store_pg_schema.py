"""The PostgreSQL store's schema as a store opens: a newer one refused, an older one created
or migrated in place (one opener at a time, cluster-wide, under an advisory lock), job ids
compared byte by byte, the tables of shared jobs' file batches, and the files columns' types
that a binary COPY names.
"""

from __future__ import annotations

from typing import Any

import psycopg

from . import _codes
from ._errors import BitsError
from ._store_api import StoreURL
from ._store_pg_copy import FILE_NAMES
from ._store_pg_rows import migration_statements, pg_schema
from ._store_pg_shares import SHARES_DDL
from ._store_rows import SCHEMA_VERSION

__all__ = ["open_schema"]

_MIGRATION_LOCK = 0x6269_7473_6E62  # "bitsnb": one migration at a time, cluster-wide
# the tables of shared jobs not made yet, or the full index by local name (remade by a migration)
_SHARES_MISSING = (
    "SELECT to_regclass('bitsnb_batches') IS NULL OR to_regclass('files_local') IS NOT NULL"
    " OR to_regclass('bitsnb_moved') IS NULL"
)
_ID_COLLATION = (
    "SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation"
    " WHERE a.attrelid = 'files'::regclass AND a.attname = 'job_id'"
)
# the files columns' types, in FILE_COLUMNS order (a binary COPY names them)
_FILE_TYPES = (
    "SELECT format_type(a.atttypid, a.atttypmod) FROM unnest(%s::text[]) WITH ORDINALITY"
    " AS c(name, n) JOIN pg_attribute a ON a.attrelid = 'files'::regclass AND a.attname = c.name"
    " ORDER BY c.n"
)


def open_schema(conn: psycopg.Connection[Any], where: StoreURL, busy_timeout: float) -> list[str]:
    """Refuse a newer schema (``BitsError``, nothing written); create or migrate an older one,
    in one transaction. Returns the files columns' types in ``FILE_COLUMNS`` order."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = {int(busy_timeout * 1000)}")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        version = _schema_version(conn)
        if version > SCHEMA_VERSION:  # refuse before writing anything to it
            raise BitsError(
                _codes.E_INVALIDARG,
                f"the store {where} has schema version {version}, newer than this "
                f"bitsnb understands ({SCHEMA_VERSION}); upgrade bitsnb",
            )
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        if version < SCHEMA_VERSION or not {"jobs", "files", "hashed_files"} <= tables:
            conn.execute(pg_schema())
            for statement in migration_statements(version):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO bitsnb_meta (name, value) VALUES ('schema_version', %s)"
                " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (SCHEMA_VERSION,),
            )
        _byte_order_ids(conn)
        if conn.execute(_SHARES_MISSING).fetchone() == (True,):
            conn.execute(SHARES_DDL)
        return [str(r[0]) for r in conn.execute(_FILE_TYPES, (FILE_NAMES,))]


def _schema_version(conn: psycopg.Connection[Any]) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS bitsnb_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"
    )
    row = conn.execute("SELECT value FROM bitsnb_meta WHERE name = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _byte_order_ids(conn: psycopg.Connection[Any]) -> None:
    """Compare job ids byte by byte (``COLLATE "C"``), not by the database's locale: the files'
    key is ``(job_id, idx)``, and a locale's comparison made each index insert of a large
    ``add_file_set`` cost twice what a byte comparison does. Done once per store (a store made
    before is rewritten here, under the migration lock); ids are ASCII, so no order changes."""
    row = conn.execute(_ID_COLLATION).fetchone()
    if row is not None and row[0] != "C":
        conn.execute(
            'ALTER TABLE jobs ALTER COLUMN id TYPE TEXT COLLATE "C";'
            ' ALTER TABLE files ALTER COLUMN job_id TYPE TEXT COLLATE "C"'
        )
