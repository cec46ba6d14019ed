"""The store's rows: the SQLite schema, its statements, and records to and from rows.

No IO: ``Store`` (``_store.py``) executes these; kept apart so that the connection, locking and
lease logic reads on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import uuid
from collections.abc import Iterable
from typing import Any

from . import _codes
from ._enums import ErrorContext, JobPriority, JobState, JobType
from ._errors import BitsError
from ._records import SECRET_HEADERS, ErrorRecord, FileRecord, JobRecord, JobSettings

__all__ = [
    "FILE_COLUMNS",
    "FINAL",
    "JOB_COLUMNS",
    "MIGRATIONS",
    "PLACED_FILE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "START_JOB",
    "UPDATE_JOB",
    "UPSERT_FILE",
    "attach_files",
    "file_from",
    "file_params",
    "file_placed",
    "job_from",
    "job_params",
    "jobs_from",
    "mark_damaged",
    "only_job",
    "placed_answer",
    "placed_text",
    "settings_from",
    "settings_json",
    "settings_values",
]

SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    type INTEGER NOT NULL,
    owner TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    created REAL NOT NULL,
    modified REAL NOT NULL,
    transfer_completed REAL,
    error_code INTEGER,
    error_context INTEGER,
    error_file INTEGER,
    error_protocol TEXT,
    error_message TEXT,
    error_count INTEGER NOT NULL DEFAULT 0,
    settings TEXT NOT NULL,
    first_failure_at REAL,
    retry_at REAL,
    active_seconds REAL NOT NULL DEFAULT 0,
    resumed_once INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL,
    writer TEXT NOT NULL,
    written_ns INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires REAL
);
CREATE INDEX IF NOT EXISTS jobs_written ON jobs(written_ns);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, modified);
CREATE TABLE IF NOT EXISTS files (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    remote_name TEXT NOT NULL,
    local_name TEXT NOT NULL,
    temp_name TEXT NOT NULL,
    bytes_total INTEGER,
    bytes_transferred INTEGER NOT NULL DEFAULT 0,
    transferred INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    etag TEXT,
    last_modified TEXT,
    ranges TEXT,
    known_hash TEXT,
    hash TEXT,
    validation_state INTEGER NOT NULL DEFAULT 1,
    placed TEXT,
    segments TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_local ON files(local_name);
-- files bitsnb did not write, hashed once and found matching (the cache of download), with
-- the hash ("alg:hex") and "[size, mtime_ns, inode]" when hashed: made when missing, no step
CREATE TABLE IF NOT EXISTS hashed_files (
    local_name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    placed TEXT NOT NULL
);
"""

# what each version adds to the one before, as (table, column, declaration): a store of an
# older version gets the columns it lacks, in place (the rows keep their values, the new
# columns their defaults)
MIGRATIONS: dict[int, tuple[tuple[str, str, str], ...]] = {
    2: (
        ("files", "known_hash", "TEXT"),
        ("files", "hash", "TEXT"),
        ("files", "validation_state", "INTEGER NOT NULL DEFAULT 1"),
    ),
    # what complete() left a verified file as, "[size, mtime_ns, inode]" (download()'s cache;
    # the files_local index comes with SCHEMA)
    3: (("files", "placed", "TEXT"),),
    # a segmented download's table: [[start, done, end], ...] (JSON), NULL when not split
    4: (("files", "segments", "TEXT"),),
}

JOB_COLUMNS = (
    "id, display_name, type, owner, priority, state, created, modified, transfer_completed,"
    " error_code, error_context, error_file, error_protocol, error_message, error_count, settings,"
    " first_failure_at, retry_at, active_seconds, resumed_once, version, rowid"
)
FILE_COLUMNS = (
    "job_id, idx, remote_name, local_name, temp_name, bytes_total, bytes_transferred,"
    " transferred, completed, etag, last_modified, ranges, known_hash, hash, validation_state,"
    " placed, segments"
)
FINAL = (int(JobState.ACKNOWLEDGED), int(JobState.CANCELLED))
SET_JOB = (
    "UPDATE jobs SET display_name=?, type=?, owner=?, priority=?, state=?, created=?,"
    " modified=?, transfer_completed=?, error_code=?, error_context=?, error_file=?,"
    " error_protocol=?, error_message=?, error_count=?, settings=?,"
    " first_failure_at=?, retry_at=?, active_seconds=?, resumed_once=?,"
    " version=version+1, writer=?, written_ns=?,"
)
# a save: the row, if nobody changed it since we read it (its version); given our writer name
# (twice, before the id), it also gives up our lease in the same statement, and a save that
# makes the job final (the flags) clears the lease whoever holds it: a final job is nobody's to
# run, and a dead holder's lease left on it named that manager for ever (the soak found it)
UPDATE_JOB = (
    SET_JOB + " lease_expires=CASE WHEN lease_owner=? OR ? THEN NULL ELSE lease_expires END,"
    " lease_owner=CASE WHEN lease_owner=? OR ? THEN NULL ELSE lease_owner END"
    " WHERE id=? AND version=?"
)
# a job's start: the save and the lease in one statement, if the row is as we read it and
# no other process holds the lease
START_JOB = (
    SET_JOB + " lease_owner=?, lease_expires=? WHERE id=? AND version=?"
    " AND (lease_owner IS NULL OR lease_owner=? OR lease_expires < ?)"
)
UPSERT_FILE = (
    f"INSERT OR REPLACE INTO files ({FILE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
# the hash and placement of the file a job last completed at a local name, verified
# (``placed_answer``: download()'s cache)
PLACED_FILE = (
    "SELECT f.hash, f.placed FROM files f JOIN jobs j ON j.id = f.job_id"
    " WHERE f.local_name=? AND f.completed=1 AND f.hash IS NOT NULL"
    " AND f.validation_state=1 AND f.placed IS NOT NULL"
    " ORDER BY j.modified DESC LIMIT 1"
)


def _public_headers(text: str | None) -> str | None:
    if not text:
        return text
    kept = [
        line
        for line in text.splitlines()
        if line.split(":", 1)[0].strip().lower() not in SECRET_HEADERS
    ]
    return "\r\n".join(kept) or None


_SETTING_NAMES = tuple(f.name for f in dataclasses.fields(JobSettings))


def settings_json(settings: JobSettings) -> str:
    # most saves leave the settings as they were, and most jobs share theirs: the text of a
    # set of values is kept in a small cache, keyed by the values (all plain and hashable)
    values = tuple([getattr(settings, name) for name in _SETTING_NAMES])
    try:
        return _encode_settings(values)
    except TypeError:  # an unhashable value slipped in: encode without the cache
        return _encode_settings.__wrapped__(values)


@functools.lru_cache(maxsize=256)
def _encode_settings(values: tuple[object, ...]) -> str:
    data = dict(zip(_SETTING_NAMES, values, strict=True))
    data["custom_headers"] = _public_headers(data["custom_headers"])  # type: ignore[arg-type]
    return json.dumps(data, separators=(",", ":"))


def settings_from(text: str) -> JobSettings:
    return JobSettings(**_decode_settings(text))


def settings_values(text: str) -> dict[str, Any]:
    """The settings' text decoded (cached: one decoding per distinct text); do not change it."""
    return _decode_settings(text)


_SETTING_KEYS = frozenset(_SETTING_NAMES)


@functools.lru_cache(maxsize=256)
def _decode_settings(text: str) -> dict[str, Any]:
    # most jobs share their settings: a queue of 100,000 decodes a few texts, not 100,000
    # (the values are all immutable, so one decoded dict serves every job that has them)
    data = json.loads(text)
    data = {k: v for k, v in data.items() if k in _SETTING_KEYS}
    if data.get("notify_cmd_line") is not None:
        data["notify_cmd_line"] = tuple(data["notify_cmd_line"])
    return data


def job_params(rec: JobRecord) -> tuple[object, ...]:
    err = rec.error
    return (
        rec.display_name,
        int(rec.type),
        rec.owner,
        int(rec.priority),
        int(rec.state),
        rec.created,
        rec.modified,
        rec.transfer_completed,
        err.code if err else None,
        int(err.context) if err else None,
        err.file_index if err else None,
        err.protocol if err else None,
        err.message if err else None,
        rec.error_count,
        settings_json(rec.settings),
        rec.first_failure_at,
        rec.retry_at,
        rec.active_seconds,
        int(rec.resumed_once),
    )


def file_params(job_id: uuid.UUID | str, f: FileRecord) -> tuple[object, ...]:
    """A file's row; *job_id* may be its text already (a save of many files makes it once)."""
    return (
        str(job_id),
        f.index,
        f.remote_name,
        f.local_name,
        f.temp_name,
        f.bytes_total,
        f.bytes_transferred,
        int(f.transferred),
        int(f.completed),
        f.etag,
        f.last_modified,
        json.dumps(f.ranges) if f.ranges is not None else None,
        f.known_hash,
        f.hash,
        int(f.validation_state),
        json.dumps(f.placed) if f.placed is not None else None,
        json.dumps(f.segments) if f.segments is not None else None,
    )


def job_from(row: Any) -> JobRecord:
    (
        jid,
        name,
        jtype,
        owner,
        prio,
        state,
        created,
        modified,
        tdone,
        ecode,
        ectx,
        efile,
        eproto,
        emsg,
        ecount,
        settings,
        ffail,
        retry_at,
        active,
        resumed,
        version,
        rowid,
    ) = row
    error = (
        ErrorRecord(
            int(ecode),
            ErrorContext(ectx),
            efile,
            eproto,
            emsg or "",
        )
        if ecode is not None
        else None
    )
    return JobRecord(
        id=uuid.UUID(str(jid)),
        display_name=str(name),
        type=JobType(jtype),
        owner=str(owner),
        priority=JobPriority(prio),
        state=JobState(state),
        created=float(created),
        modified=float(modified),
        transfer_completed=tdone,
        error=error,
        error_count=int(ecount),
        settings=settings_from(str(settings)),
        first_failure_at=ffail,
        retry_at=retry_at,
        active_seconds=float(active),
        resumed_once=bool(resumed),
        version=int(version),
        seq=int(rowid),
    )


def file_from(row: Any) -> FileRecord:
    (
        _,
        idx,
        remote,
        local,
        temp,
        total,
        done_bytes,
        transferred,
        completed,
        etag,
        lm,
        ranges,
        known_hash,
        hash_,
        valid,
        placed,
        segments,
    ) = row
    return FileRecord(
        index=int(idx),
        remote_name=str(remote),
        local_name=str(local),
        temp_name=str(temp),
        bytes_total=total,
        bytes_transferred=int(done_bytes),
        transferred=bool(transferred),
        completed=bool(completed),
        etag=etag,
        last_modified=lm,
        ranges=[tuple(r) for r in json.loads(str(ranges))] if ranges else None,
        known_hash=known_hash,
        hash=hash_,
        validation_state=bool(valid),
        placed=file_placed(placed),
        segments=[(int(a), int(b), int(c)) for a, b, c in json.loads(str(segments))]
        if segments
        else None,
    )


def placed_text(placed: tuple[int, int, int]) -> str:
    """(size, mtime_ns, inode) as the ``placed`` JSON both tables keep."""
    return json.dumps(list(placed))


def file_placed(text: str | None) -> tuple[int, int, int] | None:
    """``placed``'s JSON back to (size, mtime_ns, inode); None when absent or malformed (the
    cache then hashes the file instead of trusting it)."""
    if text is None:  # most files: no exception raised and caught for each
        return None
    try:
        size, mtime_ns, inode = (int(v) for v in json.loads(str(text)))
    except (TypeError, ValueError):
        return None
    return size, mtime_ns, inode


def mark_damaged(damaged: dict[uuid.UUID, str], job_id: object, exc: Exception) -> None:
    """Note in *damaged* why the row of *job_id* cannot be read (an id that is not one: not)."""
    try:
        key = uuid.UUID(str(job_id))
    except ValueError:
        return
    damaged[key] = f"{type(exc).__name__}: {exc}"


def jobs_from(rows: Iterable[Any], damaged: dict[uuid.UUID, str]) -> list[JobRecord]:
    """Records of job *rows*; a row that cannot be read (a state no bitsnb knows, corrupt
    settings) is left out and noted in *damaged*, so the rest of the queue works."""
    jobs = []
    for row in rows:
        try:
            jobs.append(job_from(row))
        except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
            mark_damaged(damaged, row[0], exc)
    return jobs


def attach_files(
    jobs: list[JobRecord], rows: Iterable[Any], damaged: dict[uuid.UUID, str]
) -> list[JobRecord]:
    """Give each file row (``FILE_COLUMNS``, by job then index) to its job among *jobs* (rows
    of other jobs are skipped); a job with a file row that cannot be read is left out and
    noted in *damaged*. Returns the jobs kept, in their order."""
    by_id = {str(j.id): j for j in jobs}
    bad: set[str] = set()
    for row in rows:
        job = by_id.get(str(row[0]))
        if job is None:
            continue
        try:
            job.files.append(file_from(row))
        except (ValueError, TypeError, KeyError) as exc:
            bad.add(str(row[0]))
            mark_damaged(damaged, row[0], exc)
    return [j for j in jobs if str(j.id) not in bad]


def placed_answer(row: Any) -> tuple[str, tuple[int, int, int]] | None:
    """``PLACED_FILE``'s row as ``(hash, (size, mtime_ns, inode))``; None without one."""
    if row is None:
        return None
    placed = file_placed(row[1])
    return None if placed is None else (str(row[0]), placed)


def only_job(jobs: list[JobRecord], job_id: uuid.UUID, damaged: dict[uuid.UUID, str]) -> JobRecord:
    """The one job read by id; a job whose rows could not be read is ``E_FAIL``."""
    if not jobs:
        raise BitsError(
            _codes.E_FAIL, f"job {job_id} is damaged in the store: {damaged.get(job_id)}"
        )
    return jobs[0]
