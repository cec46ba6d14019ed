"""The soak's read-only look at its store, SQLite file or PostgreSQL URL: every job's state, and
whether the store is sound at the end (``ok``, else what is wrong).

SQLite is read with ``sqlite3`` (``PRAGMA integrity_check``); PostgreSQL with psycopg in a
read-only transaction: every file row belongs to a job, no job or claimed batch holds a lease
(every manager has closed), no final job is still leased, and no fencing token is beyond the
sequence that hands them out (so none was made up or reused by hand).
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

from bitsnb import JobState

__all__ = ["Store", "is_postgres", "store_soundness", "store_states"]

Store = Path | str  # a SQLite file, or a ``postgresql://`` URL


def is_postgres(store: Store) -> bool:
    """True when *store* is a PostgreSQL URL."""
    return isinstance(store, str) and store.startswith(("postgresql://", "postgres://"))


def store_states(store: Store) -> dict[uuid.UUID, JobState]:
    """Every job's state as the store holds it (read-only, while workers write)."""
    if is_postgres(store):
        rows = _pg_rows(str(store), "SELECT id, state FROM jobs")
        return {uuid.UUID(r[0]): JobState(r[1]) for r in rows}
    path = Path(store)
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {uuid.UUID(r[0]): JobState(r[1]) for r in db.execute("SELECT id, state FROM jobs")}
    finally:
        db.close()


def store_soundness(store: Store) -> str:
    """``ok`` when the store is sound at the end of a round, else what is wrong (``; ``-joined)."""
    if is_postgres(store):
        return _pg_soundness(str(store))
    db = sqlite3.connect(store, timeout=10)
    try:
        return "; ".join(str(r[0]) for r in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def _pg_rows(url: str, *queries: str) -> list[Any]:
    """Run *queries* in one read-only transaction; the first one's rows, or each one's list."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        conn.read_only = True
        with conn.transaction():
            results = [conn.execute(q).fetchall() for q in queries]
    return results[0] if len(queries) == 1 else results


_FINAL = ", ".join(str(int(s)) for s in JobState if s.is_final)
_PG_CHECKS = {
    "file rows without a job": (
        "SELECT f.job_id, count(*) FROM files f LEFT JOIN jobs j ON j.id = f.job_id"
        " WHERE j.id IS NULL GROUP BY f.job_id"
    ),
    "jobs still leased after every manager closed": (
        "SELECT id, lease_owner, lease_expires < extract(epoch from clock_timestamp())"
        " FROM jobs WHERE lease_owner IS NOT NULL"
        f" AND (state IN ({_FINAL}) OR lease_expires < extract(epoch from clock_timestamp())"
        " OR lease_owner <> 'bitsnb:shared')"
    ),
    "claimed batches left": (
        "SELECT b.job_id, b.owner, j.id IS NULL FROM bitsnb_batches b"
        " LEFT JOIN jobs j ON j.id = b.job_id"
    ),
    "fencing tokens beyond the sequence": (
        "SELECT id, lease_token FROM jobs WHERE lease_token >"
        " (SELECT last_value FROM bitsnb_lease_token)"
    ),
    "versions below 1 or no writer": (
        "SELECT id, version, writer FROM jobs WHERE version < 1 OR writer = ''"
    ),
    "acknowledged jobs with unfinished files": (
        "SELECT f.job_id, f.idx, f.transferred, f.bytes_transferred, f.bytes_total"
        " FROM files f JOIN jobs j ON j.id = f.job_id"
        f" WHERE j.state = {int(JobState.ACKNOWLEDGED)} AND (f.transferred = 0"
        " OR f.bytes_transferred <> f.bytes_total)"
    ),
}


def _pg_soundness(url: str) -> str:
    """The PostgreSQL checks (``_PG_CHECKS``) in one read-only transaction."""
    results = _pg_rows(url, *_PG_CHECKS.values())
    found = [
        f"{title}: {len(rows)} ({rows[:3]})"
        for title, rows in zip(_PG_CHECKS, results, strict=True)
        if rows
    ]
    return "; ".join(found) or "ok"
