"""A job record's progress and times as BITS reports them (BG_JOB_PROGRESS, BG_JOB_TIMES)."""

from __future__ import annotations

import datetime as _dt

from ._models import JobProgress, JobTimes
from ._records import JobRecord

__all__ = ["job_progress", "job_times"]


def _utc(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC)


def job_progress(rec: JobRecord) -> JobProgress:
    """BG_JOB_PROGRESS of a record."""
    total: int | None = 0
    done = 0
    files_done = 0
    for f in rec.files:
        if total is not None:
            total = None if f.bytes_total is None else total + f.bytes_total
        done += f.bytes_transferred
        files_done += f.transferred or f.completed
    return JobProgress(total, done, len(rec.files), files_done)


def job_times(rec: JobRecord) -> JobTimes:
    """BG_JOB_TIMES of a record."""
    return JobTimes(
        _utc(rec.created),
        _utc(rec.modified),
        _utc(rec.transfer_completed) if rec.transfer_completed is not None else None,
    )
