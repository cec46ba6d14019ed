"""Files of one job claimed by many managers (PostgreSQL): the job becomes the cluster's
(TRANSFERRING, its lease ``SHARED``), a per-job cursor hands out ranges of file indexes, each
claimed batch is a row of its own (fencing token, holder, expiry, indexes) so a file row is
written once, at its end; after the last range, batches whose lease ran out are taken over
(SKIP LOCKED) and a taken-over batch writes nothing late. The batch that leaves no file to
fetch moves the job to TRANSFERRED."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psycopg

from ._enums import JobState
from ._records import FileRecord
from ._store_pg_conn import PgBase, locked
from ._store_pg_rows import CHANNEL, DB_NOW, FILE_COLUMNS
from ._store_rows import file_from

__all__ = ["SHARED", "SHARES_DDL", "TODO", "PgShares", "job_changes"]

# -- files of one job claimed by many managers (see ``PgStore.claim_files``) --------------------
# A claimed batch is one row of its own (its token, holder, expiry and file indexes), so a file
# row is written once on its way (at its end), and a heartbeat is one statement. The files'
# index by local name holds completed files only (the one query by name asks for those), so
# an enqueue of new files writes no entry in it.
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
CREATE INDEX IF NOT EXISTS files_local_done ON files(local_name) WHERE completed = 1;
DROP INDEX IF EXISTS files_local;
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
# a claim's first look, one statement: the job's state and holder, its last file index, and
# the files of its batches whose lease ran out (taken over here: their rows deleted, but not
# one its holder is ending this moment — its row is locked: that end commits, or gives back)
_LOOK = (
    "WITH x AS (DELETE FROM bitsnb_batches WHERE token IN (SELECT token FROM bitsnb_batches"
    f" WHERE job_id=%s AND expires < {DB_NOW} FOR UPDATE SKIP LOCKED) RETURNING idxs)"
    " SELECT j.state, j.lease_owner,"
    " (SELECT coalesce(max(idx), -1) FROM files WHERE job_id=j.id),"
    " (SELECT array_agg(i) FROM x, unnest(x.idxs) AS i) FROM jobs j WHERE j.id=%s"
)
# a claim of the files *picked* (a statement selecting FILE_COLUMNS): they become a batch
# (its token from the fencing sequence), one statement; each row: the token, then the file
_BATCH_OF = (
    "WITH f AS ({picked}), b AS (INSERT INTO bitsnb_batches (token, job_id, owner, expires,"
    " idxs) SELECT nextval('bitsnb_lease_token'), %s, %s, " + DB_NOW + " + %s,"
    " array_agg(idx ORDER BY idx) FROM f HAVING count(*) > 0 RETURNING token)"
    " SELECT b.token, f.* FROM f, b ORDER BY f.idx"
)
_CLAIM_RANGE = _BATCH_OF.format(
    picked=f"SELECT {FILE_COLUMNS} FROM files WHERE job_id=%s AND idx >= %s AND idx < %s AND {TODO}"
)
_CLAIM_TAKEN = _BATCH_OF.format(
    picked=f"SELECT {FILE_COLUMNS} FROM files WHERE job_id=%s AND idx = ANY(%s) AND {TODO}"
)
# past the last range (every range handed out): files of the ranges that no live batch holds
# (given back, failed, added later)
_CLAIM_LEFT = _BATCH_OF.format(
    picked=f"SELECT {FILE_COLUMNS} FROM files f WHERE job_id=%s AND idx < %s AND {TODO}"
    " AND NOT EXISTS (SELECT 1 FROM bitsnb_batches b WHERE b.job_id = f.job_id"
    " AND f.idx = ANY(b.idxs)) ORDER BY idx LIMIT %s"
)
# a batch's end, one statement: it takes the batch's row (if another claimer took it over — its
# lease ran out — nothing), then marks the fetched files of it transferred (their values one
# JSON document, each found by its key); answers (the batch was ours, files written, last index)
_FINISH = (
    "WITH b AS (DELETE FROM bitsnb_batches WHERE token=%s AND owner=%s RETURNING idxs),"
    " u AS (UPDATE files SET bytes_total=v.t, bytes_transferred=v.d, transferred=1,"
    " etag=v.e, last_modified=v.l, hash=v.h, ranges=NULL FROM json_to_recordset(%s::json)"
    " AS v(i bigint, t bigint, d bigint, e text, l text, h text) WHERE files.job_id=%s"
    " AND files.idx=v.i AND files.transferred=0 AND v.i IN (SELECT unnest(idxs) FROM b)"
    " RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM b), (SELECT count(*) FROM u),"
    " (SELECT coalesce(max(idx), -1) FROM files WHERE job_id=%s)"
)
# a batch given back unfetched, or taken by its end
_TAKE_BATCH = "DELETE FROM bitsnb_batches WHERE token=%s AND owner=%s RETURNING idxs"
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
            row = conn.execute(_LOOK, (key, key)).fetchone()
            if row is None:
                return 0, []
            state, holder, last, expired = row
            shared = holder == SHARED and int(state) == int(JobState.TRANSFERRING)
            if not shared and conn.execute(_SHARE_JOB, (self.writer, key)).rowcount != 1:
                return 0, []
            mine = (key, self.writer, seconds)
            rows: list[tuple[Any, ...]] = []
            if expired:  # a batch whose holder's lease ran out: its files first
                rows = conn.execute(_CLAIM_TAKEN, (key, sorted(expired), *mine)).fetchall()
            for _ in range(_SKIPS if not rows else 0):
                start, cursor = _pair(conn, _RESERVE, (key, limit, limit))
                if start > int(last):  # every range is handed out: what nobody holds
                    rows = conn.execute(_CLAIM_LEFT, (key, cursor, limit, *mine)).fetchall()
                    break
                rows = conn.execute(_CLAIM_RANGE, (key, start, cursor, *mine)).fetchall()
                if rows:
                    break
            if not rows:
                return 0, []
            token = int(rows[0][0])
            files = [file_from(r[1:]) for r in rows]
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
        values = json.dumps(
            [
                {
                    "i": f.index,
                    "t": f.bytes_total,
                    "d": f.bytes_transferred,
                    "e": f.etag,
                    "l": f.last_modified,
                    "h": f.hash,
                }
                for f in files
            ]
        )
        ended = False
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(_FINISH, (token, self.writer, values, key, key)).fetchone()
            assert row is not None
            ours, written, last = bool(row[0]), int(row[1]), int(row[2])
            if not ours:
                return 0, False
            cursor = conn.execute(
                "UPDATE bitsnb_shares SET next_idx = next_idx WHERE job_id=%s RETURNING next_idx",
                (key,),
            ).fetchone()
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


async def job_changes(url: str) -> AsyncIterator[None]:
    """Once per job row written anywhere (the store's NOTIFYs, on a connection of its own):
    what wakes a claimer that has nothing to do, with no query while nothing changes."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        async for _ in conn.notifies():
            yield
