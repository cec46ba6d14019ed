"""The PostgreSQL store's schema and statements, made from the SQLite ones (``_store_rows``).

One schema for both stores: the tables, columns and migrations are SQLite's, with PostgreSQL's
types (``INTEGER`` → ``BIGINT``, ``REAL`` → ``DOUBLE PRECISION``), so a column added there
reaches PostgreSQL too. PostgreSQL adds what sharing across machines needs: ``seq`` (creation
order, SQLite's rowid), ``lease_token`` (the fencing token, from a sequence), the database's
clock for leases and change marks, and a trigger that NOTIFYs every new row version. No IO.
"""

from __future__ import annotations

import re

from ._enums import JobState
from ._store_rows import FILE_COLUMNS, FINAL, JOB_COLUMNS, MIGRATIONS, PLACED_FILE, SCHEMA, SET_JOB

__all__ = [
    "CHANNEL",
    "CLAIM",
    "CLAIM_BATCH",
    "CLAIM_DEAD",
    "DB_NOW",
    "FILE_COLUMNS",
    "FINAL",
    "INSERT_JOB",
    "PG_EXTRAS",
    "PG_JOB_COLUMNS",
    "PG_PLACED_FILE",
    "RENEW",
    "START_JOB",
    "UPDATE_JOB",
    "UPDATE_JOB_FENCED",
    "UPSERT_FILES",
    "migration_statements",
    "pg_schema",
]

CHANNEL = "bitsnb_jobs"
# the database's clock, one for every manager (machines' clocks differ)
DB_NOW = "extract(epoch from clock_timestamp())::double precision"
_NOW_NS = "(extract(epoch from clock_timestamp()) * 1000000000)::bigint"


def _pg(sql: str) -> str:
    """SQLite's DDL or statement in PostgreSQL's words (types and placeholders)."""
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    return sql.replace("WITHOUT ROWID", "").replace("?", "%s")


def pg_schema() -> str:
    """The tables and indexes (``CREATE … IF NOT EXISTS``), PostgreSQL's additions after."""
    return _pg(SCHEMA) + PG_EXTRAS


def migration_statements(version: int) -> list[str]:
    """``ALTER TABLE … ADD COLUMN IF NOT EXISTS`` for each version after *version*."""
    return [
        _pg(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declaration}")
        for step in sorted(v for v in MIGRATIONS if v > version)
        for table, column, declaration in MIGRATIONS[step]
    ]


_STARTABLE = (int(JobState.QUEUED), int(JobState.CONNECTING), int(JobState.TRANSFERRING))

PG_EXTRAS = f"""
CREATE SEQUENCE IF NOT EXISTS bitsnb_lease_token;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS seq BIGINT GENERATED ALWAYS AS IDENTITY;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS lease_token BIGINT;
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs(lease_owner);
CREATE OR REPLACE FUNCTION bitsnb_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.id || ' ' || NEW.writer);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bitsnb_jobs_changed ON jobs;
CREATE TRIGGER bitsnb_jobs_changed AFTER INSERT OR UPDATE OF version ON jobs
    FOR EACH ROW EXECUTE FUNCTION bitsnb_notify();
"""

PG_PLACED_FILE = _pg(PLACED_FILE)
PG_JOB_COLUMNS = re.sub(r"\browid\b", "seq", JOB_COLUMNS)

INSERT_JOB = (
    "INSERT INTO jobs (id, display_name, type, owner, priority, state, created,"
    " modified, transfer_completed, error_code, error_context, error_file,"
    " error_protocol, error_message, error_count, settings, first_failure_at,"
    " retry_at, active_seconds, resumed_once, version, writer, written_ns)"
    f" VALUES ({','.join(['%s'] * 20)},1,%s,{_NOW_NS}) RETURNING seq"
)
# the row's fields, a new version, our writer name; then the lease columns (below): given up
# when it is ours to release, or whoever holds it when the save makes the job final (a final
# job is nobody's to run; a dead holder's lease left on it named it that manager's for ever)
_SET = _pg(SET_JOB.replace("written_ns=?", f"written_ns={_NOW_NS}"))
_RELEASE = (
    " lease_expires=CASE WHEN lease_owner=%s OR %s::boolean THEN NULL ELSE lease_expires END,"
    " lease_owner=CASE WHEN lease_owner=%s OR %s::boolean THEN NULL ELSE lease_owner END"
)
# a save by a manager that holds no lease of the job (an application's call): its version only
UPDATE_JOB = _SET + _RELEASE + " WHERE id=%s AND version=%s"
# a save by the lease holder: also its fencing token, so a holder whose lease was taken over
# (paused past it, cut off) commits nothing late
UPDATE_JOB_FENCED = UPDATE_JOB + " AND lease_owner=%s AND lease_token=%s"
_FREE = f"(lease_owner IS NULL OR lease_owner=%s OR lease_expires < {DB_NOW})"
_TAKE = f" lease_owner=%s, lease_expires={DB_NOW} + %s, lease_token=nextval('bitsnb_lease_token')"
# the save and the lease in one statement; a row another transaction has locked is skipped
# (never waited for: the caller runs on the event loop)
START_JOB = (
    _SET + _TAKE + f" WHERE id=(SELECT id FROM jobs WHERE id=%s AND version=%s AND {_FREE}"
    " FOR UPDATE SKIP LOCKED) RETURNING lease_token"
)
CLAIM = (
    f"UPDATE jobs SET {_TAKE} WHERE id=(SELECT id FROM jobs WHERE id=%s AND {_FREE}"
    " FOR UPDATE SKIP LOCKED) RETURNING version, lease_token"
)
# a dead process's lease (same host), taken over at once
CLAIM_DEAD = (
    f"UPDATE jobs SET {_TAKE} WHERE id=%s AND lease_owner=%s RETURNING version, lease_token"
)
# up to N startable jobs nobody holds, best priority and oldest first; rows other managers are
# claiming at this moment are skipped, so N managers claiming together never wait on each other
CLAIM_BATCH = (
    f"UPDATE jobs SET {_TAKE} WHERE id IN (SELECT id FROM jobs WHERE state IN {_STARTABLE}"
    f" AND (lease_owner IS NULL OR lease_expires < {DB_NOW}) ORDER BY priority, seq LIMIT %s"
    " FOR UPDATE SKIP LOCKED) RETURNING id, version, lease_token"
)
# the heartbeat: every lease of ours, longer; answers which we still hold
RENEW = f"UPDATE jobs SET lease_expires={DB_NOW} + %s WHERE lease_owner=%s RETURNING id"

_FILE_NAMES = [c.strip() for c in FILE_COLUMNS.split(",")]
_ARRAY_TYPES = {"TEXT": "text[]", "INTEGER": "bigint[]", "REAL": "double precision[]"}


def _column_types(table: str) -> dict[str, str]:
    """Each column of SQLite's *table* (its DDL and later migrations) as a PostgreSQL array
    type: the files upsert sends one array per column."""
    body = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\)", SCHEMA, re.S)
    declared = re.findall(r"^\s*(\w+)\s+(TEXT|INTEGER|REAL)\b", body.group(1) if body else "", re.M)
    for step in MIGRATIONS.values():
        declared += [(c, d.split()[0]) for t, c, d in step if t == table]
    return {name: _ARRAY_TYPES[kind] for name, kind in declared}


_FILE_TYPES = _column_types("files")
# every file of a save in one statement: a column of values per array (no round trip per row)
UPSERT_FILES = (
    f"INSERT INTO files ({FILE_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"%s::{_FILE_TYPES[c]}" for c in _FILE_NAMES)
    + ") ON CONFLICT (job_id, idx) DO UPDATE SET "
    + ", ".join(f"{c}=EXCLUDED.{c}" for c in _FILE_NAMES[2:])
)
