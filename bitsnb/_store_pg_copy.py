"""A save's file rows into PostgreSQL: one statement for a few, binary ``COPY`` for many.

A save of ``COPY_FROM`` files or more (an ``add_file_set``) goes by ``COPY … FROM STDIN`` in the
binary format: straight into ``files`` when every row is new (only the columns a new file sets,
the table's defaults for the rest, when every file is untouched), else through a staging table
merged by one upsert. Runs inside the caller's transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ._store_pg_rows import FILE_COLUMNS, UPSERT_FILES

__all__ = ["COPY_FROM", "FILE_NAMES", "write_files"]

# a save of this many files or more goes by COPY (fewer: one upsert statement)
COPY_FROM = 256
FILE_NAMES = [c.strip() for c in FILE_COLUMNS.split(",")]
# the columns a new, untouched file sets (the ids, names and known hash); the others' defaults
# (no size, nothing transferred, valid, no validators) are what it has
_NEW_AT = (0, 1, 2, 3, 4, 12)
_NEW_COLUMNS = ", ".join(FILE_NAMES[i] for i in _NEW_AT)
# a file row's values from bytes_total on as the table's defaults have them (known_hash aside)
_UNTOUCHED = (None, 0, 0, 0, None, None, None)
# the staging table of a COPY that updates rows too: one per connection, emptied at commit
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS bitsnb_files_in (LIKE files INCLUDING DEFAULTS)"
    " ON COMMIT DELETE ROWS"
)
_MERGE_STAGED = (
    f"INSERT INTO files ({FILE_COLUMNS}) SELECT {FILE_COLUMNS} FROM bitsnb_files_in"
    " ON CONFLICT (job_id, idx) DO UPDATE SET "
    + ", ".join(f"{c}=EXCLUDED.{c}" for c in FILE_NAMES[2:])
)


def write_files(
    conn: psycopg.Connection[Any],
    job_id: str,
    rows: list[tuple[object, ...]],
    types: list[str],
) -> None:
    """Insert or update a save's file rows, inside its transaction. A few rows: one statement
    (``unnest`` of a column per array). Many (an ``add_file_set``): ``COPY`` — straight into
    ``files`` when every row is new (all after the job's last file), else into a staging table
    merged by one upsert."""
    if len(rows) < COPY_FROM:
        conn.execute(UPSERT_FILES, [list(column) for column in zip(*rows, strict=True)])
        return
    last = conn.execute("SELECT max(idx) FROM files WHERE job_id=%s", (job_id,)).fetchone()
    if last is None or last[0] is None or min(int(str(r[1])) for r in rows) > int(last[0]):
        if all(r[5:12] == _UNTOUCHED and r[13:] == (None, 1, None, None) for r in rows):
            new = [tuple(r[i] for i in _NEW_AT) for r in rows]
            _copy(conn, "files", new, [types[i] for i in _NEW_AT], _NEW_COLUMNS)
            return
        _copy(conn, "files", rows, types)
        return
    conn.execute(_STAGING)
    _copy(conn, "bitsnb_files_in", rows, types)
    conn.execute(_MERGE_STAGED)


def _copy(
    conn: psycopg.Connection[Any],
    table: str,
    rows: list[tuple[object, ...]],
    types: list[str],
    columns: str = FILE_COLUMNS,
) -> None:
    """``COPY … FROM STDIN`` in the binary format (*types*: each column's, from the catalog)."""
    sql = f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
