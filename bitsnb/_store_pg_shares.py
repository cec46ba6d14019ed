"""Files of one job claimed by many managers (PostgreSQL): the job becomes the cluster's
(TRANSFERRING, its lease ``SHARED``), a per-job cursor hands out ranges of file indexes, each
claimed batch is a row of its own (fencing token, holder, expiry, indexes) so a file row is
written once, at its end; after the last range, batches whose lease ran out are taken over
(SKIP LOCKED) and a taken-over batch writes nothing late. The batch that leaves no file to
fetch moves the job to TRANSFERRED."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import psycopg

from ._enums import JobState
from ._records import FileRecord
from ._store_pg_conn import PgBase, locked
from ._store_pg_rows import DB_NOW, FILE_COLUMNS
from ._store_rows import file_from

__all__ = ["SHARED", "SHARES_DDL", "TODO", "PgShares"]

# -- files of one job claimed by many managers (see ``PgStore.claim_files``) --------------------
# A claimed batch is one row of its own (its token, holder, expiry and file indexes), so a file
# row is written once on its way (at its end), and a heartbeat is one statement.
SHARED = "bitsnb:shared"  # the job lease of a job whose files are claimed one batch at a time
SHARES_DDL = """
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
TODO = "transferred=0 AND completed=0"
_CLAIM_RANGE = (
    f"SELECT {FILE_COLUMNS} FROM files WHERE job_id=%s AND idx >= %s AND idx < %s AND {TODO}"
    " ORDER BY idx"
)
# past the last range (every range handed out): files of the ranges that no live batch holds
# (given back, failed, added later, or of a batch whose holder's lease ran out)
_CLAIM_LEFT = (
    f"SELECT {FILE_COLUMNS} FROM files f WHERE job_id=%s AND idx < %s AND {TODO}"
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
# a job made the cluster's before any claim (``share``): suspended or queued, with files, and
# nobody runs it whole
_SHAREABLE_SQL = str(
    (
        int(JobState.SUSPENDED),
        int(JobState.QUEUED),
        int(JobState.CONNECTING),
        int(JobState.TRANSFERRING),
    )
)
_SHARE_NEW_JOB = (
    f"UPDATE jobs SET state={int(JobState.TRANSFERRING)}, lease_owner='{SHARED}',"
    f" lease_expires='Infinity', {_JOB_WRITE} WHERE id=%s AND state IN {_SHAREABLE_SQL}"
    f" AND (lease_owner IS NULL OR lease_owner='{SHARED}' OR lease_expires < {DB_NOW})"
    f" AND EXISTS (SELECT 1 FROM files WHERE job_id=%s AND {TODO})"
)
# the shared jobs with files that no batch holds yet (or whose batches' leases ran out)
_SHARED_JOBS = (
    f"SELECT j.id FROM jobs j WHERE j.lease_owner='{SHARED}' AND j.state={int(JobState.TRANSFERRING)}"
    " ORDER BY j.priority, j.seq"
)
# at most this many empty ranges (files done already: a resumed job) skipped by one claim
_SKIPS = 1000


class PgShares(PgBase):
    """The batches of shared jobs' files this manager claims, fetches and ends."""

    _held_files: dict[tuple[uuid.UUID, int], list[int]]  # (job id, token) → file indexes

    @locked
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

    @locked
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
                    f"SELECT 1 FROM files WHERE job_id=%s AND {TODO} LIMIT 1", (key,)
                ).fetchone()
                if left is None:
                    ended = conn.execute(_END_SHARED_JOB, (self.writer, key)).rowcount == 1
                    conn.execute("DELETE FROM bitsnb_shares WHERE job_id=%s", (key,))
        return written, ended

    @locked
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

    @locked
    def give_back_files(self, job_id: uuid.UUID, token: int) -> None:
        """Give a whole batch back unfetched: the next claims past the cursor take its files."""
        self._held_files.pop((job_id, token), None)
        with self._pool.connection() as conn:
            conn.execute(_TAKE_BATCH, (token, self.writer))

    @locked
    def share_job(self, job_id: uuid.UUID) -> bool:
        """Make a job the cluster's before any claim (TRANSFERRING, its lease ``SHARED``), so
        that the managers of ``serve`` claim its files in batches; False when it is not
        suspended or queued, has no file left to fetch, or a manager runs it whole."""
        key = str(job_id)
        with self._pool.connection() as conn:
            return conn.execute(_SHARE_NEW_JOB, (self.writer, key, key)).rowcount == 1

    @locked
    def shared_jobs(self) -> list[uuid.UUID]:
        """The shared jobs still transferring (best priority first): where batches are claimed."""
        return [uuid.UUID(str(r[0])) for r in self._all(_SHARED_JOBS, ())]

    @locked
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
