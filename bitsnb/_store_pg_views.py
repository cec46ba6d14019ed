"""The PostgreSQL store's views of who holds what, for the notebook and ``serve()``'s status:
the queue as columns with each job's worker, who holds which file of a job, each worker's
share of the cluster, and jobs in error by the manager that wrote them last."""

from __future__ import annotations

import uuid

from ._enums import JobState
from ._jobtable import JobTable
from ._store_pg_conn import PgBase, locked
from ._store_pg_rows import DB_NOW
from ._store_pg_shares import RETRY, SHARED, TODO
from ._store_rows import mark_damaged
from ._store_table import JOINED_SUMS, SETTINGS_CHANGED, job_table_from, job_table_sql

__all__ = ["PgViews"]

# a live batch held by a worker (not files parked until their retry is due)
_LIVE = f"expires >= {DB_NOW} AND owner <> '{RETRY}'"
# who holds a job: its live lease's holder, or for a shared job its live batches' holders
_WORKER = (
    f"CASE WHEN j.lease_owner = '{SHARED}' THEN (SELECT string_agg(DISTINCT b.owner, ', '"
    f" ORDER BY b.owner) FROM bitsnb_batches b WHERE b.job_id = j.id AND b.{_LIVE})"
    f" WHEN j.lease_expires >= (SELECT {DB_NOW}) THEN j.lease_owner END"
)
_TABLE_COLUMNS = {"worker": _WORKER, "settings": SETTINGS_CHANGED, **JOINED_SUMS}  # JOB_TABLE
_BATCH_HOLDERS = (
    "SELECT u.idx, b.owner FROM bitsnb_batches b, unnest(b.idxs) AS u(idx)"
    f" WHERE b.job_id = %s AND b.{_LIVE}"
)
_JOB_HOLDER = (
    f"SELECT lease_owner FROM jobs WHERE id = %s AND lease_owner <> '{SHARED}'"
    f" AND lease_expires >= {DB_NOW}"
)
# who holds which job now (the queue panel's worker column): whole leases, then shared jobs'
# live batches; an index probe each (jobs_lease, bitsnb_batches_job), not a scan of the queue
_JOB_WORKERS = (
    f"SELECT id, lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_owner <> '{SHARED}'"
    f" AND lease_expires >= {DB_NOW} UNION ALL SELECT job_id, string_agg(DISTINCT owner, ', '"
    f" ORDER BY owner) FROM bitsnb_batches WHERE {_LIVE} GROUP BY job_id"
)
# each worker's share of the cluster now: jobs held whole (and their files not yet done, and
# bytes done), then batches of shared jobs' files held, then the bytes of the batches each
# worker ended (a count it adds to at each end: its batches' rate) while it is recent
_ACTIVITY = (
    "SELECT j.lease_owner, COUNT(DISTINCT j.id), COUNT(f.idx) FILTER (WHERE f.transferred = 0"
    " AND f.completed = 0), CAST(COALESCE(SUM(f.bytes_transferred), 0) AS BIGINT) FROM jobs j"
    f" LEFT JOIN files f ON f.job_id = j.id WHERE j.lease_owner IS NOT NULL AND j.lease_owner"
    f" <> '{SHARED}' AND j.lease_expires >= {DB_NOW} GROUP BY j.lease_owner"
)
_BATCH_ACTIVITY = (
    "SELECT owner, COUNT(DISTINCT job_id), CAST(COALESCE(SUM(cardinality(idxs)), 0) AS BIGINT)"
    f" FROM bitsnb_batches WHERE {_LIVE} GROUP BY owner"
)
_MOVED_RECENT = 60.0  # seconds a worker's count of batch bytes shows after its last batch
_MOVED = f"SELECT owner, bytes FROM bitsnb_moved WHERE at >= {DB_NOW} - %s"


class PgViews(PgBase):
    """Reads across the cluster: no lease is taken, nothing is written."""

    @locked
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

    @locked
    def job_table(self, include_finished: bool = False, owner: str | None = None) -> JobTable:
        """The queue as columns (non-final jobs unless *include_finished*; *owner*'s only when
        given), with who holds each job: one query, no record per job."""
        sql, args = job_table_sql(_TABLE_COLUMNS, "seq", include_finished, owner, "%s")
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL work_mem = '64MB'")  # the sort by seq in memory
            rows = conn.cursor(binary=True).execute(sql, args).fetchall()
        table, bad = job_table_from(rows)
        for job_id in bad:
            mark_damaged(self.damaged, job_id, ValueError("a value no bitsnb knows"))
        return table

    @locked
    def file_workers(self, job_id: uuid.UUID) -> dict[int, str]:
        """Who holds which file of the job now: the holder of each live batch of a shared
        job's files, or the job's lease holder for each file not yet transferred."""
        key = str(job_id)
        with self._pool.connection() as conn:
            held = {int(i): str(w) for i, w in conn.execute(_BATCH_HOLDERS, (key,))}
            row = conn.execute(_JOB_HOLDER, (key,)).fetchone()
            if row is not None:
                todo = conn.execute(f"SELECT idx FROM files WHERE job_id=%s AND {TODO}", (key,))
                held.update((int(r[0]), str(row[0])) for r in todo)
        return held

    @locked
    def job_workers(self) -> dict[str, str]:
        """Who holds which job now: job id (text) → the lease holder, or a shared job's
        batch holders (``a, b``); jobs nobody holds are not listed."""
        return {str(job_id): str(worker) for job_id, worker in self._all(_JOB_WORKERS)}

    @locked
    def activity(self) -> dict[str, tuple[int, int, int]]:
        """Each worker holding anything now (or that ended a batch in the last minute):
        ``(jobs held, files held, bytes moved)`` — a shared job's batch counts as its job and
        its files; bytes moved are those done in the jobs it holds whole plus those of every
        batch it ended (so a rate is the difference of two readings)."""
        out: dict[str, tuple[int, int, int]] = {}
        with self._pool.connection() as conn:
            for owner, jobs, files, done in conn.execute(_ACTIVITY):
                out[str(owner)] = (int(jobs), int(files), int(done))
            for owner, jobs, files in conn.execute(_BATCH_ACTIVITY):
                held, todo, done = out.get(str(owner), (0, 0, 0))
                out[str(owner)] = (held + int(jobs), todo + int(files), done)
            for owner, moved in conn.execute(_MOVED, (_MOVED_RECENT,)):
                held, todo, done = out.get(str(owner), (0, 0, 0))
                out[str(owner)] = (held, todo, done + int(moved))
        return out

    @locked
    def errors_by_writer(self) -> dict[str, int]:
        """Jobs in ERROR or TRANSIENT_ERROR, by the manager that wrote them last."""
        rows = self._all(
            "SELECT writer, COUNT(*) FROM jobs WHERE state IN (%s, %s) GROUP BY writer",
            (int(JobState.ERROR), int(JobState.TRANSIENT_ERROR)),
        )
        return {str(r[0]): int(r[1]) for r in rows}
