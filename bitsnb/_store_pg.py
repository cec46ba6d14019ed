"""The persistent queue in PostgreSQL (psycopg 3): one queue shared by managers on many machines.

Same behaviour as the SQLite ``Store``, same calls. The store's parts, each a module: the connection and its errors
(``_store_pg_conn``), the schema as a store opens (``_store_pg_schema``), COPY of many file
rows (``_store_pg_copy``), files of one job claimed in batches (``_store_pg_shares``), who holds
what (``_store_pg_views``); here, the rows, the leases and the fencing. The core calls its store
with short blocking calls, from the manager's loop thread and (a new job's insert) from the blocking API's thread,
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

import threading
import uuid
from collections.abc import Iterable
from typing import Any

import psycopg
import psycopg_pool

from . import _codes
from ._errors import BitsError
from ._records import FileRecord, JobRecord
from ._store import lease_holder_dead
from ._store_api import StoreURL
from ._store_pg_conn import configure, locked, store_error
from ._store_pg_copy import write_files
from ._store_pg_limits import PgLimits
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
    PG_PLACED_FILE,
    RENEW,
    START_JOB,
    UPDATE_JOB,
    UPDATE_JOB_FENCED,
)
from ._store_pg_schema import open_schema
from ._store_pg_shares import PgShares
from ._store_pg_views import PgViews
from ._store_rows import (
    attach_files,
    file_params,
    job_params,
    jobs_from,
    only_job,
    placed_answer,
    placed_text,
)

__all__ = ["PgStore"]


class PgStore(PgShares, PgViews, PgLimits):
    """PostgreSQL-backed job store (its parts: ``PgShares``, the batches of shared jobs' files;
    ``PgViews``, who holds what; ``PgLimits``, managers' shares of cluster-wide limits);
    ``path`` is its ``StoreURL`` (``str()`` hides a password)."""

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
                configure=configure,
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
            with self._pool.connection() as conn:
                self._file_types = open_schema(conn, self.path, self.busy_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise store_error(self.path, exc) from exc

    def _listen(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            conn = psycopg.Connection.connect(self.path.url, autocommit=True)
            conn.execute(f"LISTEN {CHANNEL}")
            self._listener = conn
            self._catch_up = True
        return self._listener

    # -- plumbing ---------------------------------------------------------------------------------
    @locked
    def close(self) -> None:
        """Close the listener and the pool."""
        if self._listener is not None:
            self._listener.close()
        self._pool.close()

    @locked
    def integrity_check(self) -> str:
        """ "ok" when the tables answer (PostgreSQL keeps its own pages sound)."""
        with self._pool.connection() as conn:
            conn.execute("SELECT count(*) FROM jobs, files WHERE false")
        return "ok"

    # -- rows -------------------------------------------------------------------------------------
    @locked
    def insert_job(self, rec: JobRecord) -> None:
        """Add a new job (no files yet); sets ``rec.seq`` and ``rec.version``."""
        row = self._one(INSERT_JOB, (str(rec.id), *job_params(rec), self.writer))
        rec.seq = int(row[0]) if row else 0
        rec.version = 1

    @locked
    def save_job(
        self, rec: JobRecord, files: Iterable[FileRecord] = (), *, release: bool = False
    ) -> bool:
        """Write the job row (and *files*) if nobody changed it since we read it and, while we
        hold its lease, if the lease is still ours (the fencing token); with *release*, give
        the lease up in the same statement. False, writing nothing, otherwise."""
        if rec.id in self._lost:
            return False  # taken over while we ran it: nothing of this run is written
        token = self._held.get(rec.id)
        mine = self.writer if release else None
        final = rec.state.is_final  # a final job's lease goes, whoever holds it
        key = str(rec.id)
        params: tuple[object, ...] = (*job_params(rec), self.writer, mine, final, mine, final, key)
        if token is None:
            sql, params = UPDATE_JOB, (*params, rec.version)
        else:
            sql, params = UPDATE_JOB_FENCED, (*params, rec.version, self.writer, token)
        rows = [file_params(key, f) for f in files]  # the id's text once, not per file
        with self._pool.connection() as conn:
            if rows:
                with conn.transaction():
                    if conn.execute(sql, params).rowcount != 1:
                        return self._refused(conn, rec.id, token)
                    write_files(conn, key, rows, self._file_types)
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

    @locked
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

    @locked
    def delete_files(self, job_id: uuid.UUID, first_index: int) -> None:
        """Remove file rows from *first_index* on (undoing a failed add)."""
        with self._pool.connection() as conn:
            conn.execute(
                "DELETE FROM files WHERE job_id=%s AND idx>=%s", (str(job_id), first_index)
            )

    def _attach_files(
        self, conn: psycopg.Connection[Any], jobs: list[JobRecord]
    ) -> list[JobRecord]:
        if not jobs:
            return jobs
        sql = f"SELECT {FILE_COLUMNS} FROM files"
        if len(jobs) <= 500:
            ids = [str(j.id) for j in jobs]
            rows = conn.execute(f"{sql} WHERE job_id = ANY(%s) ORDER BY job_id, idx", (ids,))
        else:
            rows = conn.execute(f"{sql} ORDER BY job_id, idx")
        return attach_files(jobs, rows, self.damaged)

    def _load(self, where: str, params: tuple[object, ...]) -> list[JobRecord]:
        """Jobs and their files from one snapshot (a REPEATABLE READ read transaction)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            rows = conn.execute(f"SELECT {PG_JOB_COLUMNS} FROM jobs {where}", params).fetchall()
            return self._attach_files(conn, jobs_from(rows, self.damaged))

    @locked
    def version_of(self, job_id: uuid.UUID) -> int | None:
        """The job row's version (None when the job is gone)."""
        row = self._one("SELECT version FROM jobs WHERE id=%s", (str(job_id),))
        return None if row is None else int(row[0])

    @locked
    def placed_file(self, local_name: str) -> tuple[str, tuple[int, int, int]] | None:
        """The hash and (size, mtime_ns, inode) of the file a job last completed at
        *local_name*, verified (None when no job did, or recorded no hash)."""
        return placed_answer(self._one(PG_PLACED_FILE, (local_name,)))

    @locked
    def hashed_file(self, local_name: str) -> tuple[str, tuple[int, int, int]] | None:
        """The hash and (size, mtime_ns, inode) recorded for a file bitsnb hashed at
        *local_name* without having written it (None when none was)."""
        return placed_answer(
            self._one("SELECT hash, placed FROM hashed_files WHERE local_name=%s", (local_name,))
        )

    @locked
    def record_hash(self, local_name: str, hash_: str, placed: tuple[int, int, int]) -> None:
        """Record that the file at *local_name*, as *placed* says it was, hashes to *hash_*."""
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO hashed_files (local_name, hash, placed) VALUES (%s, %s, %s) ON"
                " CONFLICT (local_name) DO UPDATE SET hash=EXCLUDED.hash, placed=EXCLUDED.placed",
                (local_name, hash_, placed_text(placed)),
            )

    @locked
    def load_job(self, job_id: uuid.UUID) -> JobRecord | None:
        """One job with its files, or None."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(
                f"SELECT {PG_JOB_COLUMNS} FROM jobs WHERE id=%s", (str(job_id),)
            ).fetchone()
            if row is None:
                return None
            jobs = self._attach_files(conn, jobs_from([row], self.damaged))
        return only_job(jobs, job_id, self.damaged)

    @locked
    def load_jobs(self, include_finished: bool = False) -> list[JobRecord]:
        """Every job (by default only the non-final ones), in creation order."""
        where = "" if include_finished else f"WHERE state NOT IN {FINAL}"
        return self._load(f"{where} ORDER BY seq", ())

    @locked
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

    @locked
    def count_jobs(self, owner: str | None = None) -> int:
        """Number of non-final jobs (of *owner*, or of everybody)."""
        sql = f"SELECT COUNT(*) FROM jobs WHERE state NOT IN {FINAL}"
        args: tuple[object, ...] = ()
        if owner is not None:
            sql += " AND owner=%s"
            args = (owner,)
        row = self._one(sql, args)
        return int(row[0]) if row else 0

    @locked
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
    @locked
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

    @locked
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

    @locked
    def renew_leases(self, seconds: float) -> None:
        """The heartbeat: extend every lease we hold; one another manager took over is lost."""
        if not self._held:
            return  # nothing to extend: no statement at all (an idle manager stays idle)
        kept = {r[0] for r in self._all(RENEW, (seconds, self.writer))}
        for job_id in [j for j in self._held if str(j) not in kept]:
            self._lose(job_id)

    @locked
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

    @locked
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

    @locked
    def lost_leases(self) -> set[uuid.UUID]:
        """Jobs whose lease another manager took over while we ran them (seen by a refused
        save or the heartbeat): their runs here must stop; nothing they do is written."""
        return set(self._lost)

    @locked
    def leased_by_others(self) -> set[uuid.UUID]:
        """Ids of jobs whose lease another manager holds and has not let expire."""
        rows = self._all(
            "SELECT id, lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_owner != %s"
            f" AND lease_expires >= {DB_NOW}",
            (self.writer,),
        )
        return {uuid.UUID(str(r[0])) for r in rows if not lease_holder_dead(str(r[1]))}
