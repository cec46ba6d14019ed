"""Files of one job claimed by many managers (PostgreSQL): the job becomes the cluster's
(TRANSFERRING, its lease ``SHARED``), a per-job cursor hands out ranges of file indexes, each
claimed batch is a row of its own (fencing token, holder, expiry, indexes) so a file row is
written once, at its end; after the last range, batches whose lease ran out are taken over
(SKIP LOCKED) and a taken-over batch writes nothing late. The batch that leaves no file to
fetch moves the job to TRANSFERRED."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, NamedTuple

import psycopg

from ._enums import JobState
from ._records import ErrorRecord, FileRecord
from ._store_pg_conn import PgBase, locked
from ._store_pg_rows import CHANNEL, DB_NOW, FILE_COLUMNS
from ._store_rows import file_from, settings_from

__all__ = ["RETRY", "SHARED", "SHARES_DDL", "TODO", "FileFailure", "PgShares", "job_changes"]

# -- files of one job claimed by many managers (see ``PgStore.claim_files``) --------------------
# A claimed batch is one row of its own (its token, holder, expiry and file indexes), so a file
# row is written once on its way (at its end), and a heartbeat is one statement. The files'
# index by local name holds completed files only (the one query by name asks for those), so
# an enqueue of new files writes no entry in it.
SHARED = "bitsnb:shared"  # the job lease of a job whose files are claimed one batch at a time
RETRY = "bitsnb:retry"  # the holder of a shared job's files parked until their retry is due
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
CREATE TABLE IF NOT EXISTS bitsnb_moved (
    owner TEXT PRIMARY KEY, bytes BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL
);
ALTER TABLE files SET (fillfactor = 70);
CREATE INDEX IF NOT EXISTS files_local_done ON files(local_name) WHERE completed = 1;
DROP INDEX IF EXISTS files_local;
"""
_STARTABLE_SQL = str((int(JobState.QUEUED), int(JobState.CONNECTING), int(JobState.TRANSFERRING)))
# a shared job whose batches are handed out: startable, or waiting on a due retry
_RUNNING_SQL = str(
    (
        int(JobState.QUEUED),
        int(JobState.CONNECTING),
        int(JobState.TRANSFERRING),
        int(JobState.TRANSIENT_ERROR),
    )
)
_TE = int(JobState.TRANSIENT_ERROR)
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
# JSON document, each found by its key) and adds their bytes to the holder's count of bytes
# moved (``bitsnb_moved``: the cluster views' rate of batch holders); answers (the batch was
# ours, files written, last index)
_FINISH = (
    "WITH b AS (DELETE FROM bitsnb_batches WHERE token=%s AND owner=%s RETURNING idxs),"
    " u AS (UPDATE files SET bytes_total=v.t, bytes_transferred=v.d, transferred=1,"
    " etag=v.e, last_modified=v.l, hash=v.h, ranges=NULL FROM json_to_recordset(%s::json)"
    " AS v(i bigint, t bigint, d bigint, e text, l text, h text) WHERE files.job_id=%s"
    " AND files.idx=v.i AND files.transferred=0 AND v.i IN (SELECT unnest(idxs) FROM b)"
    " RETURNING v.d),"
    " m AS (INSERT INTO bitsnb_moved (owner, bytes, at) SELECT %s, coalesce(sum(d), 0),"
    f" {DB_NOW} FROM u HAVING count(*) > 0 ON CONFLICT (owner) DO UPDATE SET"
    " bytes = bitsnb_moved.bytes + EXCLUDED.bytes, at = EXCLUDED.at)"
    " SELECT EXISTS (SELECT 1 FROM b), (SELECT count(*) FROM u),"
    " (SELECT coalesce(max(idx), -1) FROM files WHERE job_id=%s)"
)
# a transient failure's files parked until their retry is due: a batch row of ``RETRY``'s (no
# heartbeat renews it), taken over by the first claim after it expires, as a dead holder's is
_PARK = (
    "INSERT INTO bitsnb_batches (token, job_id, owner, expires, idxs)"
    f" VALUES (nextval('bitsnb_lease_token'), %s, '{RETRY}', {DB_NOW} + %s, %s)"
)
_ERROR_SET = (
    "error_code=%s, error_context=%s, error_file=%s, error_protocol=%s, error_message=%s,"
    " error_count=error_count+1"
)
# a file that retrying cannot help (or past the no-progress timeout): the job in ERROR
_FAIL_JOB = (
    f"UPDATE jobs SET state={int(JobState.ERROR)}, {_ERROR_SET}, retry_at=NULL, {_JOB_WRITE}"
    f" WHERE id=%s AND lease_owner='{SHARED}' AND state IN {_RUNNING_SQL}"
)
# a transient failure when nothing else of the job progresses: TRANSIENT_ERROR until the retry
_WAIT_JOB = (
    f"UPDATE jobs SET state={_TE}, {_ERROR_SET}, retry_at={DB_NOW} + %s,"
    f" first_failure_at=coalesce(first_failure_at, {DB_NOW}), {_JOB_WRITE}"
    f" WHERE id=%s AND lease_owner='{SHARED}' AND state={int(JobState.TRANSFERRING)}"
    f" AND NOT EXISTS (SELECT 1 FROM bitsnb_batches WHERE job_id=%s AND owner <> '{RETRY}')"
)
# files written: the job transfers again and its no-progress timer restarts (one write only
# when it was waiting on a retry or had failed before; otherwise no row matches)
_PROGRESSED = (
    f"UPDATE jobs SET state={int(JobState.TRANSFERRING)}, first_failure_at=NULL, retry_at=NULL,"
    f" {_JOB_WRITE} WHERE id=%s AND lease_owner='{SHARED}' AND state IN"
    f" ({int(JobState.TRANSFERRING)}, {_TE}) AND (state={_TE} OR first_failure_at IS NOT NULL)"
)
# a claim of a job waiting on its retry took files (the due ones): it transfers again
_RETRYING = (
    f"UPDATE jobs SET state={int(JobState.TRANSFERRING)}, retry_at=NULL, {_JOB_WRITE}"
    f" WHERE id=%s AND lease_owner='{SHARED}' AND state={_TE}"
)
# a running shared job's settings and no-progress timer (a stopped one's files just go back)
_RETRY_SETTINGS = (
    f"SELECT settings, first_failure_at, {DB_NOW} FROM jobs WHERE id=%s"
    f" AND lease_owner='{SHARED}' AND state IN {_RUNNING_SQL}"
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
# a job made the cluster's before any claim (``share``), or again after an error: suspended,
# queued or in error, with files, and nobody runs it whole
_SHAREABLE_SQL = str(
    (
        int(JobState.SUSPENDED),
        int(JobState.QUEUED),
        int(JobState.CONNECTING),
        int(JobState.TRANSFERRING),
        _TE,
        int(JobState.ERROR),
    )
)
_SHARE_NEW_JOB = (
    f"UPDATE jobs SET state={int(JobState.TRANSFERRING)}, lease_owner='{SHARED}',"
    " lease_expires='Infinity', retry_at=NULL, first_failure_at=NULL,"
    f" {_JOB_WRITE} WHERE id=%s AND state IN {_SHAREABLE_SQL}"
    f" AND (lease_owner IS NULL OR lease_owner='{SHARED}' OR lease_expires < {DB_NOW})"
    f" AND EXISTS (SELECT 1 FROM files WHERE job_id=%s AND {TODO})"
)
# the shared jobs still running (transferring, resumed after an error, or waiting on a retry)
_SHARED_JOBS = (
    f"SELECT j.id FROM jobs j WHERE j.lease_owner='{SHARED}' AND j.state IN {_RUNNING_SQL}"
    " ORDER BY j.priority, j.seq"
)
# at most this many empty ranges (files done already: a resumed job) skipped by one claim
_SKIPS = 1000


class FileFailure(NamedTuple):
    """A file of a batch that failed: the job's error it makes (the file's index in it),
    whether retrying may help, and the server's Retry-After."""

    error: ErrorRecord
    transient: bool
    retry_after: float | None = None


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
            waiting = holder == SHARED and int(state) == _TE  # only its due retries
            if waiting and not expired:
                return 0, []
            shared = holder == SHARED and int(state) == int(JobState.TRANSFERRING)
            if (
                not (shared or waiting)
                and conn.execute(_SHARE_JOB, (self.writer, key)).rowcount != 1
            ):
                return 0, []
            mine = (key, self.writer, seconds)
            rows: list[tuple[Any, ...]] = []
            if expired:  # a batch whose holder's lease ran out: its files first
                rows = conn.execute(_CLAIM_TAKEN, (key, sorted(expired), *mine)).fetchall()
            for _ in range(_SKIPS if not (rows or waiting) else 0):
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
            if waiting:
                conn.execute(_RETRYING, (self.writer, key))
        self._held_files[(job_id, token)] = [f.index for f in files]
        return token, files

    @locked
    def finish_files(
        self,
        job_id: uuid.UUID,
        token: int,
        files: Iterable[FileRecord],
        failed: Sequence[FileFailure] = (),
    ) -> tuple[int, bool]:
        """End a claimed batch: mark its fetched *files* transferred, in one statement, if
        the batch is still ours (else nothing: it was taken over; a late end commits nothing);
        the batch's other files are given back. The ends of a job take turns on its cursor
        row, so the one that leaves no file to fetch sees every other end's commit and moves
        the job to TRANSFERRED. With *failed* files, as BITS: one that retrying cannot help
        puts the job in ERROR (its batches no longer handed out); transient ones are parked
        until the retry delay (``_fail``). Returns (files written, whether this call ended
        the job)."""
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
            mine = (token, self.writer, values, key, self.writer, key)
            row = conn.execute(_FINISH, mine).fetchone()
            assert row is not None
            ours, written, last = bool(row[0]), int(row[1]), int(row[2])
            if not ours:
                return 0, False
            if written:
                conn.execute(_PROGRESSED, (self.writer, key))
            if failed:
                self._fail(conn, key, failed, written)
                return written, False
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

    def _fail(
        self, conn: psycopg.Connection[Any], key: str, failed: Sequence[FileFailure], written: int
    ) -> None:
        """A batch's failures, in its end's transaction: the first fatal one (or a transient
        one past the job's no-progress timeout) puts the job in ERROR; else the failed files
        wait ``minimum_retry_delay`` (or Retry-After) in a parked batch, and the job goes
        TRANSIENT_ERROR if nothing else of it progresses (this batch wrote nothing and no
        worker holds another)."""
        fatal = next((f for f in failed if not f.transient), None)
        first = fatal or failed[0]
        row = conn.execute(_RETRY_SETTINGS, (key,)).fetchone()
        if row is None:  # cancelled, suspended, in ERROR already: the files are given back
            return
        s = settings_from(str(row[0]))
        now = float(row[2])
        began = now if row[1] is None else float(row[1])
        deadline = began + s.no_progress_timeout
        delay = max(s.minimum_retry_delay, max(f.retry_after or 0.0 for f in failed))
        if fatal is None and (s.no_progress_timeout <= 0 or now >= deadline):
            fatal = first  # no progress for too long: BITS's ERROR
        e = first.error
        error = (e.code, int(e.context), e.file_index, e.protocol, e.message)
        if fatal is not None:
            conn.execute(_FAIL_JOB, (*error, self.writer, key))
            return
        wait = min(delay, deadline - now)
        conn.execute(_PARK, (key, wait, sorted(f.error.file_index or 0 for f in failed)))
        if not written:
            conn.execute(_WAIT_JOB, (*error, wait, self.writer, key, key))

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
