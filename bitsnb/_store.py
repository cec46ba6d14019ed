"""The persistent queue: jobs, files, settings, checkpoints and leases in SQLite (WAL).

One ``Store`` per manager, used from the manager's loop thread, and for a new job's insert
from the blocking API's calling thread: its methods hold ``Store.lock`` (one connection,
``check_same_thread=False``, one user at a time). Every write of a job row
bumps ``version`` and is conditional on the version the writer last saw, so two processes on
one store notice each other's changes instead of overwriting them. Leases say which process
transfers a job; a dead process's lease is taken over at once (same host) or when it expires.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from . import _codes
from ._errors import BitsError, StoreBusyError
from ._jobtable import JobTable
from ._records import FileRecord, JobRecord
from ._store_rows import (
    FILE_COLUMNS,
    FINAL,
    JOB_COLUMNS,
    MIGRATIONS,
    PLACED_FILE,
    SCHEMA,
    SCHEMA_VERSION,
    START_JOB,
    UPDATE_JOB,
    UPSERT_FILE,
    attach_files,
    file_params,
    job_params,
    jobs_from,
    mark_damaged,
    only_job,
    placed_answer,
    placed_text,
)
from ._store_table import APART_SUMS, FILE_SUMS, job_table_from, job_table_sql

_P = ParamSpec("_P")
_R = TypeVar("_R")


def lease_name() -> str:
    """A name for this process's leases: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_holder_dead(holder: str) -> bool:
    """True when *holder* (a ``lease_name``) is a process of this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def retry_busy(
    busy_timeout: float, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
) -> _R:
    """Call *fn*, again while it answers ``StoreBusyError`` (backing off from 5 ms to 100 ms),
    for up to *busy_timeout* seconds; a store's ``patiently`` (both stores)."""
    deadline = time.monotonic() + busy_timeout
    pause = 0.005
    while True:
        try:
            return fn(*args, **kwargs)
        except StoreBusyError:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _store_error(path: Path, exc: Exception) -> BitsError:
    text = str(exc)
    if isinstance(exc, OverflowError):
        return BitsError(_codes.E_INVALIDARG, f"a value is too large for the store {path} ({text})")
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        message = f"the store {path} is not a bitsnb database or is corrupt ({text})"
        return BitsError(_codes.E_INVALIDARG, message)
    if "locked" in text or "busy" in text:
        return StoreBusyError(f"the store {path} is locked by another process ({text})")
    if (
        "readonly" in text
        or "unable to open" in text
        or (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS))
    ):
        return BitsError(_codes.E_ACCESSDENIED, f"cannot write the store {path} ({text})")
    return BitsError(_codes.E_INVALIDARG, f"cannot use the store {path} ({text})")


def _locked(method: Callable[Concatenate[Store, _P], _R]) -> Callable[Concatenate[Store, _P], _R]:
    @functools.wraps(method)
    def locked(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            try:
                return method(self, *args, **kwargs)
            except (sqlite3.Error, OverflowError) as exc:  # every failure as a BitsError
                raise _store_error(self.path, exc) from exc

    return locked


_TABLE_COLUMNS = {"worker": "NULL", "settings": "j.settings", **APART_SUMS}  # see JOB_TABLE

# How long one statement waits for another process's write lock before it gives up with
# ``StoreBusyError``: the manager calls the store on its event loop, which must never wait
# long on another process (the caller retries, off the loop or after an ``await``).
STATEMENT_BUSY_TIMEOUT = 0.05


class Store:
    """SQLite-backed job store (WAL, ``synchronous=NORMAL``: a process crash loses nothing).

    A statement waits at most ``STATEMENT_BUSY_TIMEOUT`` for the write lock; *busy_timeout* is
    how long ``patiently`` (and the manager's retries) keep trying before the call fails.
    """

    def __init__(
        self, path: str | os.PathLike[str], writer: str, busy_timeout: float = 10.0
    ) -> None:
        self.path = Path(path)
        self.writer = writer
        self.busy_timeout = busy_timeout
        self._held: set[uuid.UUID] = set()  # jobs whose lease claim() gave us, not given up
        self.damaged: dict[uuid.UUID, str] = {}  # rows that could not be read, and why
        self.lock = threading.RLock()  # each public method holds it; hold it across several
        try:
            _private_file(self.path)
            # opening and migrating waits for the whole busy timeout (no transfers run yet,
            # and the manager opens the store off its loop); later statements do not
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:  # refuse before writing anything to it
                self._db.close()
                raise BitsError(
                    _codes.E_INVALIDARG,
                    f"the store {self.path} has schema version {version}, newer than this "
                    f"bitsnb understands ({SCHEMA_VERSION}); upgrade bitsnb",
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # checkpoints fsync: fewer, larger ones keep small commits cheap (WAL ≤ ~40 MB)
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute("PRAGMA journal_size_limit=67108864")
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            if version < SCHEMA_VERSION or not {"jobs", "files", "hashed_files"} <= tables:
                with self._tx():  # a new store, or one that lost a table: the rest keeps working
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._migrate(version)
                    self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            statement_ms = int(min(busy_timeout, STATEMENT_BUSY_TIMEOUT) * 1000)
            self._db.execute(f"PRAGMA busy_timeout={statement_ms}")
            for suffix in ("-wal", "-shm"):  # SQLite gives them the database's mode; make sure
                _tighten(Path(f"{self.path}{suffix}"))
        except (sqlite3.Error, OSError) as exc:
            raise _store_error(self.path, exc) from exc

    def _migrate(self, version: int) -> None:
        """Bring a store of schema *version* up to this one in place (inside the caller's
        transaction): each later version's columns, those a table lacks."""
        for step in sorted(v for v in MIGRATIONS if v > version):
            for table, column, declaration in MIGRATIONS[step]:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def patiently(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Call the store method *fn*, retrying while another process holds the write lock,
        for up to the busy timeout. Blocks the calling thread: never call it on the loop."""
        return retry_busy(self.busy_timeout, fn, *args, **kwargs)

    # -- plumbing -------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self.path)

    @_locked
    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @_locked
    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``'s answer ("ok" when sound)."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- rows -------------------------------------------------------------------------------
    def _write(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        """One statement as its own transaction (autocommit: no BEGIN/COMMIT round trips).

        A write statement takes the write lock as it starts, waiting up to the busy timeout,
        exactly as ``BEGIN IMMEDIATE`` would.
        """
        try:
            return self._db.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise _store_error(self.path, exc) from exc

    @_locked
    def insert_job(self, rec: JobRecord) -> None:
        """Add a new job (no files yet); sets ``rec.seq`` and ``rec.version``."""
        cur = self._write(
            "INSERT INTO jobs (id, display_name, type, owner, priority, state, created,"
            " modified, transfer_completed, error_code, error_context, error_file,"
            " error_protocol, error_message, error_count, settings, first_failure_at,"
            " retry_at, active_seconds, resumed_once, version, writer, written_ns)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,?,?)",
            (str(rec.id), *job_params(rec), self.writer, time.time_ns()),
        )
        rec.seq = int(cur.lastrowid or 0)
        rec.version = 1

    @_locked
    def save_job(
        self, rec: JobRecord, files: Iterable[FileRecord] = (), *, release: bool = False
    ) -> bool:
        """Write the job row (and *files*) if nobody else changed it since we read it; with
        *release*, give up our lease in the same transaction.

        Returns False, writing nothing, when another writer got there first. The lease goes
        in the row's own UPDATE, and a save without files is a single statement.
        """
        job_id = str(rec.id)
        mine = self.writer if release else None
        final = rec.state.is_final  # a final job's lease goes, whoever holds it
        params = (
            *job_params(rec),
            self.writer,
            time.time_ns(),
            *(mine, final, mine, final),
            job_id,
            rec.version,
        )
        rows = [file_params(rec.id, f) for f in files]
        if rows:
            with self._tx():
                if self._db.execute(UPDATE_JOB, params).rowcount != 1:
                    return False
                self._db.executemany(UPSERT_FILE, rows)
        elif self._write(UPDATE_JOB, params).rowcount != 1:
            return False
        rec.version += 1
        if release:
            self._held.discard(rec.id)
        return True

    @_locked
    def start(self, rec: JobRecord, seconds: float) -> bool:
        """Save *rec* (its move to CONNECTING) and take its transfer lease, in one statement.

        Only if nobody changed the row since we read it and no other process holds the lease;
        otherwise it writes nothing and returns False (the caller takes the long way, claim()).
        """
        now = time.time()
        params = (
            *job_params(rec),
            self.writer,
            time.time_ns(),
            self.writer,
            now + seconds,
            str(rec.id),
            rec.version,
            self.writer,
            now,
        )
        if self._write(START_JOB, params).rowcount != 1:
            return False
        rec.version += 1
        self._held.add(rec.id)
        return True

    @_locked
    def delete_files(self, job_id: uuid.UUID, first_index: int) -> None:
        """Remove file rows from *first_index* on (undoing a failed add)."""
        with self._tx():
            self._db.execute(
                "DELETE FROM files WHERE job_id=? AND idx>=?", (str(job_id), first_index)
            )

    def _attach_files(self, jobs: list[JobRecord]) -> list[JobRecord]:
        if not jobs:
            return jobs
        if len(jobs) <= 500:
            marks = ",".join("?" * len(jobs))
            rows = self._db.execute(
                f"SELECT {FILE_COLUMNS} FROM files WHERE job_id IN ({marks}) ORDER BY job_id, idx",
                [str(j.id) for j in jobs],
            )
        else:
            rows = self._db.execute(f"SELECT {FILE_COLUMNS} FROM files ORDER BY job_id, idx")
        return attach_files(jobs, rows, self.damaged)

    @_locked
    def version_of(self, job_id: uuid.UUID) -> int | None:
        """The job row's version (None when the job is gone): a cheap staleness check."""
        row = self._db.execute("SELECT version FROM jobs WHERE id=?", (str(job_id),)).fetchone()
        return None if row is None else int(row[0])

    @_locked
    def load_job(self, job_id: uuid.UUID) -> JobRecord | None:
        """One job with its files, or None."""
        row = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=?", (str(job_id),)
        ).fetchone()
        if row is None:
            return None
        return only_job(self._attach_files(jobs_from([row], self.damaged)), job_id, self.damaged)

    @_locked
    def placed_file(self, local_name: str) -> tuple[str, tuple[int, int, int]] | None:
        """The hash and (size, mtime_ns, inode) of the file a job last completed at
        *local_name*, verified (None when no job did, or recorded no hash)."""
        return placed_answer(self._db.execute(PLACED_FILE, (local_name,)).fetchone())

    @_locked
    def hashed_file(self, local_name: str) -> tuple[str, tuple[int, int, int]] | None:
        """The hash and (size, mtime_ns, inode) recorded for a file bitsnb hashed at
        *local_name* without having written it (None when none was)."""
        return placed_answer(
            self._db.execute(
                "SELECT hash, placed FROM hashed_files WHERE local_name=?", (local_name,)
            ).fetchone()
        )

    @_locked
    def record_hash(self, local_name: str, hash_: str, placed: tuple[int, int, int]) -> None:
        """Record that the file at *local_name*, as *placed* says it was, hashes to *hash_*."""
        self._write(
            "INSERT INTO hashed_files (local_name, hash, placed) VALUES (?, ?, ?) ON CONFLICT"
            " (local_name) DO UPDATE SET hash=excluded.hash, placed=excluded.placed",
            (local_name, hash_, placed_text(placed)),
        )

    @_locked
    def load_jobs(self, include_finished: bool = False) -> list[JobRecord]:
        """Every job (by default only the non-final ones), in creation order."""
        where = "" if include_finished else f"WHERE state NOT IN {FINAL}"
        rows = self._db.execute(f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY rowid")
        return self._attach_files(jobs_from(rows, self.damaged))

    @_locked
    def changed_by_others(self, since_ns: int) -> tuple[list[JobRecord], int]:
        """Jobs another writer changed after *since_ns*, and the newest write time of any row.

        ``written_ns`` is read from the clock inside the write transaction, and write
        transactions are serialised, so the newest committed time is a safe watermark: a later
        commit gets a later time. Advancing past our own writes keeps each poll an index probe.
        """
        with self._tx_read():
            newest = self._db.execute("SELECT MAX(written_ns) FROM jobs").fetchone()[0]
            rows = self._db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE written_ns > ? AND writer != ?",
                (since_ns, self.writer),
            ).fetchall()
        jobs = self._attach_files(jobs_from(rows, self.damaged))
        return jobs, max(since_ns, int(newest or 0))

    @_locked
    def job_table(self, include_finished: bool = False, owner: str | None = None) -> JobTable:
        """The queue as columns (non-final jobs unless *include_finished*; *owner*'s only when
        given): one query, no record per job. No worker is named (the processes of a SQLite
        store share one machine)."""
        sql, args = job_table_sql(_TABLE_COLUMNS, "rowid", include_finished, owner, "?")
        with self._tx_read():  # the jobs and their files' sums from one snapshot
            rows = self._db.execute(sql, args).fetchall()
            sums = {str(r[0]): r for r in self._db.execute(FILE_SUMS)}
        table, bad = job_table_from(rows, sums)
        for job_id in bad:
            mark_damaged(self.damaged, job_id, ValueError("a value no bitsnb knows"))
        return table

    def file_workers(self, job_id: uuid.UUID) -> dict[int, str]:
        """Who holds which file of the job: nobody is named on SQLite."""
        return {}

    def job_workers(self) -> dict[str, str]:
        """Who holds which job: nobody is named on SQLite."""
        return {}

    def _tx_read(self) -> _ReadTransaction:
        return _ReadTransaction(self._db)

    @_locked
    def count_jobs(self, owner: str | None = None) -> int:
        """Number of non-final jobs (of *owner*, or of everybody)."""
        sql = f"SELECT COUNT(*) FROM jobs WHERE state NOT IN {FINAL}"
        args: tuple[object, ...] = ()
        if owner is not None:
            sql += " AND owner=?"
            args = (owner,)
        return int(self._db.execute(sql, args).fetchone()[0])

    @_locked
    def prune_finished(self, before: float) -> int:
        """Delete finished jobs last modified before *before*; returns how many."""
        with self._tx():
            ids = [
                r[0]
                for r in self._db.execute(
                    f"SELECT id FROM jobs WHERE state IN {FINAL} AND modified < ?", (before,)
                )
            ]
            self._db.executemany("DELETE FROM files WHERE job_id=?", [(i,) for i in ids])
            self._db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in ids])
        return len(ids)

    # -- leases -----------------------------------------------------------------------------
    @_locked
    def claim(self, job_id: uuid.UUID, seconds: float) -> int | None:
        """Take the transfer lease of a job; returns the row's version (so the caller knows
        whether its copy is current), or None while another live process holds it."""
        now = time.time()
        key = str(job_id)
        rows = self._write(
            "UPDATE jobs SET lease_owner=?, lease_expires=? WHERE id=? AND (lease_owner IS"
            " NULL OR lease_owner=? OR lease_expires < ?) RETURNING version",
            (self.writer, now + seconds, key, self.writer, now),
        ).fetchall()
        if not rows:  # held by another process: take it over only if that process is dead
            with self._tx():
                row = self._db.execute(
                    "SELECT lease_owner, version FROM jobs WHERE id=?", (key,)
                ).fetchone()
                if row is None or row[0] is None or not lease_holder_dead(str(row[0])):
                    return None
                rows = self._db.execute(
                    "UPDATE jobs SET lease_owner=?, lease_expires=? WHERE id=? AND lease_owner=?"
                    " RETURNING version",
                    (self.writer, now + seconds, key, row[0]),
                ).fetchall()
                if not rows:
                    return None
        self._held.add(job_id)
        return int(rows[0][0])

    @_locked
    def renew_leases(self, seconds: float) -> None:
        """Extend every lease this process holds."""
        if not self._held:
            return  # nothing to extend: no write at all (an idle queue stays idle)
        self._write(
            "UPDATE jobs SET lease_expires=? WHERE lease_owner=?",
            (time.time() + seconds, self.writer),
        )

    @_locked
    def release(self, job_id: uuid.UUID | None = None) -> None:
        """Give up the lease of one job (or all of ours)."""
        if job_id is None:
            self._write(
                "UPDATE jobs SET lease_owner=NULL, lease_expires=NULL WHERE lease_owner=?",
                (self.writer,),
            )
            self._held.clear()
        else:
            self._write(
                "UPDATE jobs SET lease_owner=NULL, lease_expires=NULL WHERE id=? AND lease_owner=?",
                (str(job_id), self.writer),
            )
            self._held.discard(job_id)

    @_locked
    def holds(self, job_id: uuid.UUID) -> bool:
        """True while this process holds the job's lease.

        Only ``claim`` takes a lease under our writer name, so a job it never gave us (or one
        we gave up since) is answered from memory; otherwise a read (no commit) confirms it.
        """
        if job_id not in self._held:
            return False
        row = self._db.execute(
            "SELECT 1 FROM jobs WHERE id=? AND lease_owner=?", (str(job_id), self.writer)
        ).fetchone()
        return row is not None

    def lost_leases(self) -> set[uuid.UUID]:
        """Leases of ours another process took over: none reported (the SQLite store keeps
        no fencing token; its processes share one machine, where a dead one is taken over)."""
        return set()

    @_locked
    def leased_by_others(self) -> set[uuid.UUID]:
        """Ids of jobs whose lease another process holds and has not let expire."""
        rows = self._db.execute(
            "SELECT id, lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_owner != ?"
            " AND lease_expires >= ?",
            (self.writer, time.time()),
        )
        return {uuid.UUID(r[0]) for r in rows if not lease_holder_dead(str(r[1]))}


def _private_file(path: Path) -> None:
    """Create *path*'s folder (0700) and the file itself (0600) if missing, and tighten an
    existing one: the store holds URLs with tokens and headers, for its owner's eyes only."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        _tighten(path)
    else:
        os.close(fd)


def _tighten(path: Path) -> None:
    """Take group and other permissions off a file of ours (if it exists)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


class _ReadTransaction:
    """``BEGIN`` … ``COMMIT``: one consistent snapshot for several reads."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error) on an autocommit connection.

    A store another process keeps locked past the busy timeout is a ``BitsError``.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _store_error(self._path, exc) from exc

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
