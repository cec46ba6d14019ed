"""The persistent queue in PostgreSQL (psycopg 3): one queue shared by managers on many machines.

Same behaviour as the SQLite ``Store``, same calls. The core calls its store with short blocking
calls, from the manager's loop thread and (a new job's insert) from the blocking API's thread,
under ``lock``; so this store uses psycopg's blocking API and a small blocking connection pool
(``psycopg_pool.ConnectionPool``: a broken connection is replaced, the socket round trip of one
statement costs what a SQLite commit does). No statement waits on another manager's row lock:
claims skip locked rows (``FOR UPDATE SKIP LOCKED``) and any other wait past ``lock_timeout``
is ``StoreBusyError``, retried by the caller as for a locked SQLite file.

Leases use the database's clock; each claim draws a fencing token from a sequence and every
write of the lease holder carries it, so a manager whose lease was taken over (paused, cut off)
commits nothing late. A trigger NOTIFYs each new row version; ``changed_by_others`` reads the
notifications on a connection of its own (no query while nothing changed).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from . import _codes
from ._enums import JobState
from ._errors import BitsError, StoreBusyError
from ._records import FileRecord, JobRecord
from ._store import lease_holder_dead
from ._store_api import StoreURL
from ._store_pg_rows import (
    CHANNEL,
    CLAIM,
    CLAIM_BATCH,
    CLAIM_DEAD,
    DB_NOW,
    FILE_COLUMNS,
    FINAL,
    INSERT_JOB,
    PG_JOB_COLUMNS,
    RENEW,
    START_JOB,
    UPDATE_JOB,
    UPDATE_JOB_FENCED,
    UPSERT_FILES,
    migration_statements,
    pg_schema,
)
from ._store_rows import (
    SCHEMA_VERSION,
    file_from,
    file_params,
    file_placed,
    job_from,
    job_params,
    placed_text,
)

__all__ = ["PgStore"]

# how long one statement waits for a row another transaction holds before StoreBusyError
STATEMENT_LOCK_TIMEOUT_MS = 50
_MIGRATION_LOCK = 0x6269_7473_6E62  # "bitsnb": one migration at a time, cluster-wide

# a save of this many files or more goes by COPY (fewer: one upsert statement)
COPY_FROM = 256
_FILE_NAMES = [c.strip() for c in FILE_COLUMNS.split(",")]
# the staging table of a COPY that updates rows too: one per connection, emptied at commit
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS bitsnb_files_in (LIKE files INCLUDING DEFAULTS)"
    " ON COMMIT DELETE ROWS"
)
_MERGE_STAGED = (
    f"INSERT INTO files ({FILE_COLUMNS}) SELECT {FILE_COLUMNS} FROM bitsnb_files_in"
    " ON CONFLICT (job_id, idx) DO UPDATE SET "
    + ", ".join(f"{c}=EXCLUDED.{c}" for c in _FILE_NAMES[2:])
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

# -- files of one job claimed by many managers (see ``PgStore.claim_files``) --------------------
# A claimed batch is one row of its own (its token, holder, expiry and file indexes), so a file
# row is written once on its way (at its end), and a heartbeat is one statement.
SHARED = "bitsnb:shared"  # the job lease of a job whose files are claimed one batch at a time
_SHARED_FILES_DDL = """
CREATE TABLE IF NOT EXISTS bitsnb_shares (
    job_id TEXT COLLATE "C" PRIMARY KEY, next_idx BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS bitsnb_batches (
    token BIGINT PRIMARY KEY, job_id TEXT COLLATE "C" NOT NULL, owner TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL, idxs BIGINT[] NOT NULL
);
CREATE INDEX IF NOT EXISTS bitsnb_batches_job ON bitsnb_batches(job_id);
CREATE INDEX IF NOT EXISTS bitsnb_batches_owner ON bitsnb_batches(owner);
ALTER TABLE files SET (fillfactor = 70);
"""
_STARTABLE_SQL = str((int(JobState.QUEUED), int(JobState.CONNECTING), int(JobState.TRANSFERRING)))
_NOW_NS_SQL = "(extract(epoch from clock_timestamp()) * 1000000000)::bigint"
_JOB_WRITE = f"version=version+1, writer=%s, written_ns={_NOW_NS_SQL}, modified={DB_NOW}"
# a startable job nobody runs whole becomes the cluster's: TRANSFERRING, its lease SHARED
_SHARE_JOB = (
    f"UPDATE jobs SET state={int(JobState.TRANSFERRING)}, lease_owner='{SHARED}',"
    f" lease_expires='Infinity', {_JOB_WRITE} WHERE id=%s AND state IN {_STARTABLE_SQL}"
    f" AND (lease_owner IS NULL OR lease_owner='{SHARED}' OR lease_expires < {DB_NOW})"
)
# the next range of indexes, for one claimer only (the first claim makes the cursor); the
# cursor row stays locked to the end of the claim's transaction: claims of a job take turns
_RESERVE = (
    "INSERT INTO bitsnb_shares (job_id, next_idx) VALUES (%s, %s) ON CONFLICT (job_id)"
    " DO UPDATE SET next_idx = bitsnb_shares.next_idx + EXCLUDED.next_idx"
    " RETURNING next_idx - %s, next_idx"
)
_TODO = "transferred=0 AND completed=0"
_CLAIM_RANGE = (
    f"SELECT {FILE_COLUMNS} FROM files WHERE job_id=%s AND idx >= %s AND idx < %s AND {_TODO}"
    " ORDER BY idx"
)
# past the last range (every range handed out): files of the ranges that no live batch holds
# (given back, failed, added later, or of a batch whose holder's lease ran out)
_CLAIM_LEFT = (
    f"SELECT {FILE_COLUMNS} FROM files f WHERE job_id=%s AND idx < %s AND {_TODO}"
    " AND NOT EXISTS (SELECT 1 FROM bitsnb_batches b WHERE b.job_id = f.job_id"
    " AND f.idx = ANY(b.idxs)) ORDER BY idx LIMIT %s"
)
# batches whose lease ran out, but not one its holder is ending this moment (its row is
# locked: its end commits, or fails and gives the files back)
_DROP_EXPIRED = (
    "DELETE FROM bitsnb_batches WHERE token IN (SELECT token FROM bitsnb_batches"
    f" WHERE job_id=%s AND expires < {DB_NOW} FOR UPDATE SKIP LOCKED)"
)
_NEW_BATCH = (
    "INSERT INTO bitsnb_batches (token, job_id, owner, expires, idxs) VALUES"
    f" (nextval('bitsnb_lease_token'), %s, %s, {DB_NOW} + %s, %s) RETURNING token"
)
# a batch's end takes its row: if another claimer took it over (its lease ran out), nothing
_TAKE_BATCH = "DELETE FROM bitsnb_batches WHERE token=%s AND owner=%s RETURNING idxs"
_FINISH_FILES = (
    "UPDATE files SET bytes_total=u.total, bytes_transferred=u.done, transferred=1,"
    " etag=u.etag, last_modified=u.lm, hash=u.hash, ranges=NULL"
    " FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::text[],"
    " %b::text[], %b::text[]) AS u(idx, total, done, etag, lm, hash) WHERE files.job_id=%s"
    " AND files.idx = ANY(%b::bigint[]) AND files.idx=u.idx AND files.transferred=0"
)
_END_SHARED_JOB = (
    f"UPDATE jobs SET state={int(JobState.TRANSFERRED)}, transfer_completed={DB_NOW},"
    f" lease_owner=NULL, lease_expires=NULL, {_JOB_WRITE} WHERE id=%s"
    f" AND lease_owner='{SHARED}' AND state={int(JobState.TRANSFERRING)}"
)
_RENEW_BATCHES = (
    f"UPDATE bitsnb_batches SET expires={DB_NOW} + %s WHERE owner=%s RETURNING job_id, token"
)
# at most this many empty ranges (files done already: a resumed job) skipped by one claim
_SKIPS = 1000

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _store_error(where: StoreURL, exc: Exception) -> BitsError:
    text = str(exc).strip()
    if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.DeadlockDetected):
        return StoreBusyError(f"the store {where} is busy ({text})")
    if isinstance(exc, pg_errors.SerializationFailure | psycopg_pool.PoolTimeout):
        return StoreBusyError(f"the store {where} is busy ({text})")
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return BitsError(_codes.E_ACCESSDENIED, f"cannot write the store {where} ({text})")
    if isinstance(exc, psycopg.OperationalError):  # the server went away, or is restarting
        return StoreBusyError(f"the store {where} cannot be reached ({text})")
    if isinstance(exc, psycopg.DataError | OverflowError):
        return BitsError(
            _codes.E_INVALIDARG, f"a value is too large for the store {where} ({text})"
        )
    return BitsError(_codes.E_INVALIDARG, f"cannot use the store {where} ({text})")


def _locked(
    method: Callable[Concatenate[PgStore, _P], _R],
) -> Callable[Concatenate[PgStore, _P], _R]:
    @functools.wraps(method)
    def locked(self: PgStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            try:
                return method(self, *args, **kwargs)
            except (psycopg.Error, psycopg_pool.PoolTimeout, OverflowError) as exc:
                raise _store_error(self.path, exc) from exc

    return locked


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"SET lock_timeout = {STATEMENT_LOCK_TIMEOUT_MS}")


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


def _write_files(
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
        _copy(conn, "files", rows, types)
        return
    conn.execute(_STAGING)
    _copy(conn, "bitsnb_files_in", rows, types)
    conn.execute(_MERGE_STAGED)


def _copy(
    conn: psycopg.Connection[Any], table: str, rows: list[tuple[object, ...]], types: list[str]
) -> None:
    """``COPY … FROM STDIN`` in the binary format (*types*: each column's, from the catalog)."""
    sql = f"COPY {table} ({FILE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


class PgStore:
    """PostgreSQL-backed job store; ``path`` is its ``StoreURL`` (``str()`` hides a password)."""

    def __init__(self, url: StoreURL, writer: str, busy_timeout: float = 10.0) -> None:
        self.path = url
        self.writer = writer
        self.busy_timeout = busy_timeout
        self._held: dict[uuid.UUID, int] = {}  # jobs whose lease we hold: their fencing token
        self._lost: set[uuid.UUID] = set()  # leases taken over: their runs commit nothing
        self.damaged: dict[uuid.UUID, str] = {}
        self.lock = threading.RLock()
        self._file_types: list[str] = []
        # batches of files we hold: (job id, token) → their indexes
        self._held_files: dict[tuple[uuid.UUID, int], list[int]] = {}
        self._listener: psycopg.Connection[Any] | None = None
        self._catch_up = False  # the listener was (re)connected: changes may have been missed
        try:  # the listener first: a wrong URL or a server that is down fails at once
            self._listener = psycopg.Connection.connect(url.url, autocommit=True, connect_timeout=5)
            self._pool = psycopg_pool.ConnectionPool(
                url.url,
                min_size=1,
                max_size=2,
                kwargs={"autocommit": True},
                configure=_configure,
                timeout=busy_timeout,
                num_workers=1,
                open=False,
                name=f"bitsnb-{writer}",
            )
            self._pool.open(wait=True, timeout=busy_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            if self._listener is not None:
                self._listener.close()
            raise BitsError(
                _codes.E_INVALIDARG, f"cannot connect to the store {url} ({exc})"
            ) from exc
        try:
            self._open_schema()
            # listening before the manager loads the queue: no change falls in between
            self._listener.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            self._listener.close()
            self._pool.close()
            raise

    def _open_schema(self) -> None:
        """Refuse a newer schema; create or migrate an older one (one manager at a time)."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {int(self.busy_timeout * 1000)}")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                version = self._schema_version(conn)
                if version > SCHEMA_VERSION:  # refuse before writing anything to it
                    raise BitsError(
                        _codes.E_INVALIDARG,
                        f"the store {self.path} has schema version {version}, newer than this "
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
                if conn.execute("SELECT to_regclass('bitsnb_batches')").fetchone() == (None,):
                    conn.execute(_SHARED_FILES_DDL)
                self._file_types = [str(r[0]) for r in conn.execute(_FILE_TYPES, (_FILE_NAMES,))]
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _store_error(self.path, exc) from exc

    @staticmethod
    def _schema_version(conn: psycopg.Connection[Any]) -> int:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bitsnb_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"
        )
        row = conn.execute("SELECT value FROM bitsnb_meta WHERE name = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _listen(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            conn = psycopg.Connection.connect(self.path.url, autocommit=True)
            conn.execute(f"LISTEN {CHANNEL}")
            self._listener = conn
            self._catch_up = True
        return self._listener

    def patiently(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Call the store method *fn*, retrying while the store is busy or unreachable, for up
        to the busy timeout. Blocks the calling thread: never call it on the loop."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.005
        while True:
            try:
                return fn(*args, **kwargs)
            except StoreBusyError:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    # -- plumbing ---------------------------------------------------------------------------------
    @_locked
    def close(self) -> None:
        """Close the listener and the pool."""
        if self._listener is not None:
            self._listener.close()
        self._pool.close()

    @_locked
    def integrity_check(self) -> str:
        """ "ok" when the tables answer (PostgreSQL keeps its own pages sound)."""
        with self._pool.connection() as conn:
            conn.execute("SELECT count(*) FROM jobs, files WHERE false")
        return "ok"

    def _one(self, sql: str, params: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    # -- rows -------------------------------------------------------------------------------------
    @_locked
    def insert_job(self, rec: JobRecord) -> None:
        """Add a new job (no files yet); sets ``rec.seq`` and ``rec.version``."""
        row = self._one(INSERT_JOB, (str(rec.id), *job_params(rec), self.writer))
        rec.seq = int(row[0]) if row else 0
        rec.version = 1

    @_locked
    def save_job(
        self, rec: JobRecord, files: Iterable[FileRecord] = (), *, release: bool = False
    ) -> bool:
        """Write the job row (and *files*) if nobody changed it since we read it and, while we
        hold its lease, if the lease is still ours (the fencing token); with *release*, give
        the lease up in the same statement. False, writing nothing, otherwise."""
        if rec.id in self._lost:
            return False  # taken over while we ran it: nothing of this run is written
        token = self._held.get(rec.id)
        mine = (self.writer, self.writer) if release else (None, None)
        params: tuple[object, ...] = (*job_params(rec), self.writer, *mine, str(rec.id))
        if token is None:
            sql, params = UPDATE_JOB, (*params, rec.version)
        else:
            sql, params = UPDATE_JOB_FENCED, (*params, rec.version, self.writer, token)
        key = str(rec.id)
        rows = [file_params(key, f) for f in files]  # the id's text once, not per file
        with self._pool.connection() as conn:
            if rows:
                with conn.transaction():
                    if conn.execute(sql, params).rowcount != 1:
                        return self._refused(conn, rec.id, token)
                    _write_files(conn, key, rows, self._file_types)
            elif conn.execute(sql, params).rowcount != 1:
                return self._refused(conn, rec.id, token)
        rec.version += 1
        if release:
            self._held.pop(rec.id, None)
        return True

    def _refused(self, conn: psycopg.Connection[Any], job_id: uuid.UUID, token: int | None) -> bool:
        """A save wrote nothing: if it was fenced and the lease is no longer ours, the run
        that made it has lost the job (see ``_lost``). Always False."""
        if token is not None:
            row = conn.execute(
                "SELECT lease_owner, lease_token FROM jobs WHERE id=%s", (str(job_id),)
            ).fetchone()
            if row is None or row[0] != self.writer or row[1] != token:
                self._lose(job_id)
        return False

    def _lose(self, job_id: uuid.UUID) -> None:
        self._held.pop(job_id, None)
        self._lost.add(job_id)

    @_locked
    def start(self, rec: JobRecord, seconds: float) -> bool:
        """Save *rec* (its move to CONNECTING) and take its lease, in one statement, if the
        row is as we read it and no other manager holds a live lease; else False."""
        key = str(rec.id)
        row = self._one(
            START_JOB,
            (*job_params(rec), self.writer, self.writer, seconds, key, rec.version, self.writer),
        )
        if row is None:
            return False
        rec.version += 1
        self._held[rec.id] = int(row[0])
        self._lost.discard(rec.id)
        return True

    @_locked
    def delete_files(self, job_id: uuid.UUID, first_index: int) -> None:
        """Remove file rows from *first_index* on (undoing a failed add)."""
        with self._pool.connection() as conn:
            conn.execute(
                "DELETE FROM files WHERE job_id=%s AND idx>=%s", (str(job_id), first_index)
            )

    def _jobs_from(self, rows: Iterable[Any]) -> list[JobRecord]:
        jobs = []
        for row in rows:
            try:
                jobs.append(job_from(row))
            except (ValueError, TypeError, KeyError) as exc:
                self._mark_damaged(row[0], exc)
        return jobs

    def _mark_damaged(self, job_id: object, exc: Exception) -> None:
        try:
            key = uuid.UUID(str(job_id))
        except ValueError:
            return
        self.damaged[key] = f"{type(exc).__name__}: {exc}"

    def _attach_files(
        self, conn: psycopg.Connection[Any], jobs: list[JobRecord]
    ) -> list[JobRecord]:
        if not jobs:
            return jobs
        by_id = {str(j.id): j for j in jobs}
        sql = f"SELECT {FILE_COLUMNS} FROM files"
        if len(jobs) <= 500:
            rows = conn.execute(
                f"{sql} WHERE job_id = ANY(%s) ORDER BY job_id, idx", (list(by_id),)
            )
        else:
            rows = conn.execute(f"{sql} ORDER BY job_id, idx")
        bad: set[str] = set()
        for row in rows:
            job = by_id.get(str(row[0]))
            if job is None:
                continue
            try:
                job.files.append(file_from(row))
            except (ValueError, TypeError, KeyError) as exc:
                bad.add(str(row[0]))
                self._mark_damaged(row[0], exc)
        return [j for j in jobs if str(j.id) not in bad]

    def _load(self, where: str, params: tuple[object, ...]) -> list[JobRecord]:
        """Jobs and their files from one snapshot (a REPEATABLE READ read transaction)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            rows = conn.execute(f"SELECT {PG_JOB_COLUMNS} FROM jobs {where}", params).fetchall()
            return self._attach_files(conn, self._jobs_from(rows))

    @_locked
    def version_of(self, job_id: uuid.UUID) -> int | None:
        """The job row's version (None when the job is gone)."""
        row = self._one("SELECT version FROM jobs WHERE id=%s", (str(job_id),))
        return None if row is None else int(row[0])

    @_locked
    def placed_file(self, local_name: str) -> tuple[str, tuple[int, int, int]] | None:
        """The hash and (size, mtime_ns, inode) of the file a job last completed at
        *local_name*, verified (None when no job did, or recorded no hash)."""
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT f.hash, f.placed FROM files f JOIN jobs j ON j.id = f.job_id"
                " WHERE f.local_name=%s AND f.completed=1 AND f.hash IS NOT NULL"
                " AND f.validation_state=1 AND f.placed IS NOT NULL"
                " ORDER BY j.modified DESC LIMIT 1",
                (local_name,),
            ).fetchone()
        if row is None:
            return None
        placed = file_placed(row[1])
        return None if placed is None else (str(row[0]), placed)

    @_locked
    def hashed_file(self, local_name: str) -> tuple[str, tuple[int, int, int]] | None:
        """The hash and (size, mtime_ns, inode) recorded for a file bitsnb hashed at
        *local_name* without having written it (None when none was)."""
        row = self._one("SELECT hash, placed FROM hashed_files WHERE local_name=%s", (local_name,))
        if row is None:
            return None
        placed = file_placed(row[1])
        return None if placed is None else (str(row[0]), placed)

    @_locked
    def record_hash(self, local_name: str, hash_: str, placed: tuple[int, int, int]) -> None:
        """Record that the file at *local_name*, as *placed* says it was, hashes to *hash_*."""
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO hashed_files (local_name, hash, placed) VALUES (%s, %s, %s) ON"
                " CONFLICT (local_name) DO UPDATE SET hash=EXCLUDED.hash, placed=EXCLUDED.placed",
                (local_name, hash_, placed_text(placed)),
            )

    @_locked
    def load_job(self, job_id: uuid.UUID) -> JobRecord | None:
        """One job with its files, or None."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(
                f"SELECT {PG_JOB_COLUMNS} FROM jobs WHERE id=%s", (str(job_id),)
            ).fetchone()
            if row is None:
                return None
            jobs = self._attach_files(conn, self._jobs_from([row]))
        if not jobs:
            raise BitsError(
                _codes.E_FAIL, f"job {job_id} is damaged in the store: {self.damaged.get(job_id)}"
            )
        return jobs[0]

    @_locked
    def load_jobs(self, include_finished: bool = False) -> list[JobRecord]:
        """Every job (by default only the non-final ones), in creation order."""
        where = "" if include_finished else f"WHERE state NOT IN {FINAL}"
        return self._load(f"{where} ORDER BY seq", ())

    @_locked
    def changed_by_others(self, since_ns: int) -> tuple[list[JobRecord], int]:
        """Jobs another manager wrote since the last call, from the NOTIFYs received (no query
        while none came); after the listener (re)connected, every row written after *since_ns*.
        Returns them and the newest write time seen."""
        ids: set[str] = set()
        try:
            listener = self._listen()
            for note in listener.notifies(timeout=0):
                job_id, _, writer = note.payload.partition(" ")
                if writer != self.writer:
                    ids.add(job_id)
        except psycopg.OperationalError:
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            raise
        if self._catch_up:
            jobs = self._load("WHERE written_ns > %s AND writer != %s", (since_ns, self.writer))
            self._catch_up = False
        elif ids:
            jobs = self._load("WHERE id = ANY(%s)", (sorted(ids),))
        else:
            return [], since_ns
        newest = self._one("SELECT MAX(written_ns) FROM jobs")
        return jobs, max(since_ns, int(newest[0] or 0) if newest else 0)

    @_locked
    def count_jobs(self, owner: str | None = None) -> int:
        """Number of non-final jobs (of *owner*, or of everybody)."""
        sql = f"SELECT COUNT(*) FROM jobs WHERE state NOT IN {FINAL}"
        args: tuple[object, ...] = ()
        if owner is not None:
            sql += " AND owner=%s"
            args = (owner,)
        row = self._one(sql, args)
        return int(row[0]) if row else 0

    @_locked
    def prune_finished(self, before: float) -> int:
        """Delete finished jobs last modified before *before*; returns how many."""
        with self._pool.connection() as conn, conn.transaction():
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM jobs WHERE state IN {FINAL} AND modified < %s"
                    " FOR UPDATE SKIP LOCKED",
                    (before,),
                )
            ]
            if ids:
                conn.execute("DELETE FROM files WHERE job_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (ids,))
        return len(ids)

    # -- leases -----------------------------------------------------------------------------------
    @_locked
    def claim(self, job_id: uuid.UUID, seconds: float) -> int | None:
        """Take the lease of a job (a new fencing token); returns the row's version, or None
        while another live manager holds it."""
        key = str(job_id)
        self._lost.discard(job_id)  # the run that lost it has ended: the runner claims anew
        row = self._one(CLAIM, (self.writer, seconds, key, self.writer))
        if row is None:  # held by another manager: take it over only if that process is dead
            held = self._one("SELECT lease_owner FROM jobs WHERE id=%s", (key,))
            if held is None or held[0] is None or not lease_holder_dead(str(held[0])):
                return None
            row = self._one(CLAIM_DEAD, (self.writer, seconds, key, held[0]))
            if row is None:
                return None
        self._held[job_id] = int(row[1])
        return int(row[0])

    @_locked
    def claim_batch(self, limit: int, seconds: float) -> list[tuple[uuid.UUID, int]]:
        """Leases of up to *limit* startable jobs that nobody holds (expired leases included),
        best priority first; ``(job id, row version)`` of each. Managers claiming at the same
        moment get disjoint batches and never wait on each other (``SKIP LOCKED``)."""
        rows = self._all(CLAIM_BATCH, (self.writer, seconds, limit))
        out = []
        for job_id, version, token in rows:
            key = uuid.UUID(str(job_id))
            self._held[key] = int(token)
            self._lost.discard(key)
            out.append((key, int(version)))
        return out

    @_locked
    def renew_leases(self, seconds: float) -> None:
        """The heartbeat: extend every lease we hold; one another manager took over is lost."""
        if not self._held:
            return  # nothing to extend: no statement at all (an idle manager stays idle)
        kept = {r[0] for r in self._all(RENEW, (seconds, self.writer))}
        for job_id in [j for j in self._held if str(j) not in kept]:
            self._lose(job_id)

    @_locked
    def release(self, job_id: uuid.UUID | None = None) -> None:
        """Give up the lease of one job (or all of ours)."""
        with self._pool.connection() as conn:
            if job_id is None:
                conn.execute(
                    "UPDATE jobs SET lease_owner=NULL, lease_expires=NULL WHERE lease_owner=%s",
                    (self.writer,),
                )
                self._held.clear()
                self._lost.clear()
            else:
                conn.execute(
                    "UPDATE jobs SET lease_owner=NULL, lease_expires=NULL"
                    " WHERE id=%s AND lease_owner=%s",
                    (str(job_id), self.writer),
                )
                self._held.pop(job_id, None)
                self._lost.discard(job_id)

    @_locked
    def holds(self, job_id: uuid.UUID) -> bool:
        """True while we hold the job's lease under the token our claim drew."""
        token = self._held.get(job_id)
        if token is None:
            return False
        row = self._one(
            "SELECT 1 FROM jobs WHERE id=%s AND lease_owner=%s AND lease_token=%s",
            (str(job_id), self.writer, token),
        )
        if row is None:
            self._lose(job_id)
        return row is not None

    @_locked
    def holders(self) -> list[tuple[str, uuid.UUID, int, int]]:
        """Each live lease: ``(lease owner, job id, files not yet transferred, bytes done)``,
        for a view of who runs what across the cluster."""
        rows = self._all(
            "SELECT j.lease_owner, j.id, COUNT(f.idx) FILTER (WHERE f.transferred = 0),"
            " COALESCE(SUM(f.bytes_transferred), 0) FROM jobs j LEFT JOIN files f ON"
            f" f.job_id = j.id WHERE j.lease_owner IS NOT NULL AND j.lease_expires >= {DB_NOW}"
            " GROUP BY j.lease_owner, j.id"
        )
        return [(str(r[0]), uuid.UUID(str(r[1])), int(r[2]), int(r[3])) for r in rows]

    @_locked
    def errors_by_writer(self) -> dict[str, int]:
        """Jobs in ERROR or TRANSIENT_ERROR, by the manager that wrote them last."""
        rows = self._all(
            "SELECT writer, COUNT(*) FROM jobs WHERE state IN (%s, %s) GROUP BY writer",
            (int(JobState.ERROR), int(JobState.TRANSIENT_ERROR)),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    @_locked
    def lost_leases(self) -> set[uuid.UUID]:
        """Jobs whose lease another manager took over while we ran them (seen by a refused
        save or the heartbeat): their runs here must stop; nothing they do is written."""
        return set(self._lost)

    @_locked
    def leased_by_others(self) -> set[uuid.UUID]:
        """Ids of jobs whose lease another manager holds and has not let expire."""
        rows = self._all(
            "SELECT id, lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_owner != %s"
            f" AND lease_expires >= {DB_NOW}",
            (self.writer,),
        )
        return {uuid.UUID(str(r[0])) for r in rows if not lease_holder_dead(str(r[1]))}

    # -- files of one job, claimed by many managers -----------------------------------------------
    @_locked
    def claim_files(
        self, job_id: uuid.UUID, limit: int, seconds: float
    ) -> tuple[int, list[FileRecord]]:
        """Lease up to *limit* files of a job that nobody runs whole, for a manager of the
        cluster to fetch: ``(fencing token, files)``, no files once none is left to claim (or
        the job is not startable, or a manager runs it whole). The first claim makes the job
        the cluster's (TRANSFERRING, its lease ``SHARED``). Claims take the next range of
        indexes from a cursor (no scan of the files done); once every range is handed out,
        files that no live batch holds (a batch whose lease ran out is taken over)."""
        key = str(job_id)
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT state, lease_owner FROM jobs WHERE id=%s", (key,)).fetchone()
            if row is None:
                return 0, []
            shared = row[1] == SHARED and int(row[0]) == int(JobState.TRANSFERRING)
            if not shared and conn.execute(_SHARE_JOB, (self.writer, key)).rowcount != 1:
                return 0, []
            last = _value(conn, "SELECT coalesce(max(idx), -1) FROM files WHERE job_id=%s", (key,))
            rows: list[tuple[Any, ...]] = []
            for _ in range(_SKIPS):
                start, cursor = _pair(conn, _RESERVE, (key, limit, limit))
                if start > last:  # every range is handed out: what nobody holds
                    conn.execute(_DROP_EXPIRED, (key,))
                    rows = conn.execute(_CLAIM_LEFT, (key, cursor, limit)).fetchall()
                    break
                rows = conn.execute(_CLAIM_RANGE, (key, start, cursor)).fetchall()
                if rows:
                    break
            if not rows:
                return 0, []
            files = [file_from(r) for r in rows]
            token = _value(conn, _NEW_BATCH, (key, self.writer, seconds, [f.index for f in files]))
        self._held_files[(job_id, token)] = [f.index for f in files]
        return token, files

    @_locked
    def finish_files(
        self, job_id: uuid.UUID, token: int, files: Iterable[FileRecord]
    ) -> tuple[int, bool]:
        """End a claimed batch: mark its fetched *files* transferred, in one statement, if
        the batch is still ours (else nothing: it was taken over; a late end commits nothing);
        the batch's other files are given back. The ends of a job take turns on its cursor
        row, so the one that leaves no file to fetch sees every other end's commit and moves
        the job to TRANSFERRED. Returns (files written, whether this call ended the job)."""
        key = str(job_id)
        self._held_files.pop((job_id, token), None)
        ended = False
        with self._pool.connection() as conn, conn.transaction():
            batch = conn.execute(_TAKE_BATCH, (token, self.writer)).fetchone()
            if batch is None:
                return 0, False
            mine = set(batch[0])
            done = [f for f in files if f.index in mine]
            columns = (
                [f.index for f in done],
                [f.bytes_total for f in done],
                [f.bytes_transferred for f in done],
                [f.etag for f in done],
                [f.last_modified for f in done],
                [f.hash for f in done],
            )
            # the batch's rows are found by index; matched to their values by a hash, not by a
            # loop over the values for each row
            conn.execute("SET LOCAL enable_nestloop = off")
            written = conn.execute(_FINISH_FILES, (*columns, key, columns[0])).rowcount
            cursor = conn.execute(
                "UPDATE bitsnb_shares SET next_idx = next_idx WHERE job_id=%s RETURNING next_idx",
                (key,),
            ).fetchone()
            last = _value(conn, "SELECT coalesce(max(idx), -1) FROM files WHERE job_id=%s", (key,))
            if cursor is not None and int(cursor[0]) > last:  # every range is handed out
                left = conn.execute(
                    f"SELECT 1 FROM files WHERE job_id=%s AND {_TODO} LIMIT 1", (key,)
                ).fetchone()
                if left is None:
                    ended = conn.execute(_END_SHARED_JOB, (self.writer, key)).rowcount == 1
                    conn.execute("DELETE FROM bitsnb_shares WHERE job_id=%s", (key,))
        return written, ended

    @_locked
    def renew_files(self, seconds: float) -> set[tuple[uuid.UUID, int]]:
        """The heartbeat of our batches, one statement: extend each; returns the batches
        another claimer took over (their fetches may stop: their ends write nothing)."""
        if not self._held_files:
            return set()
        kept = {
            (uuid.UUID(str(r[0])), int(r[1]))
            for r in self._all(_RENEW_BATCHES, (seconds, self.writer))
        }
        lost = {batch for batch in self._held_files if batch not in kept}
        for batch in lost:
            self._held_files.pop(batch, None)
        return lost

    @_locked
    def give_back_files(self, job_id: uuid.UUID, token: int) -> None:
        """Give a whole batch back unfetched: the next claims past the cursor take its files."""
        self._held_files.pop((job_id, token), None)
        with self._pool.connection() as conn:
            conn.execute(_TAKE_BATCH, (token, self.writer))

    @_locked
    def job_state(self, job_id: uuid.UUID) -> JobState | None:
        """The job's state as stored (None when it is gone); no file is read."""
        row = self._one("SELECT state FROM jobs WHERE id=%s", (str(job_id),))
        return None if row is None else JobState(int(row[0]))


def _pair(conn: psycopg.Connection[Any], sql: str, params: tuple[object, ...]) -> tuple[int, int]:
    """The two integers a statement returns."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _value(conn: psycopg.Connection[Any], sql: str, params: tuple[object, ...]) -> int:
    """The one integer a statement returns."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])
