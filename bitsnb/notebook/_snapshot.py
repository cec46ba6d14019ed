"""``JobSnapshot``: what a panel last read from a job, and the texts made from it.

Destructive buttons ask first: Cancel on a job that holds data and Complete on a job whose files
are not all transferred turn into "Confirm …" and say what they will do; the second click does it.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .._bandwidth import BandwidthStatus
from .._enums import JobState, JobType
from .._format import format_bytes, format_rate
from .._models import ErrorInfo, FileProgress, JobProgress, JobTimes
from .._protocols import JobView
from ._text import (
    Estimate,
    error_summary,
    escape,
    estimate,
    files_text,
)


@dataclass(frozen=True)
class JobSnapshot:
    """What a panel last read from a job (what it shows; also its text fallback).

    ``files`` holds the files' progress only while some size is unknown (to estimate the
    total); ``folder`` is where Complete moves the files (read while TRANSFERRED or ERROR);
    ``retry_at`` is when a TRANSIENT_ERROR job retries by itself (epoch seconds);
    ``verified`` how many files were checked against a hash and matched (read once the job is
    TRANSFERRED or ACKNOWLEDGED).
    """

    id: uuid.UUID
    display_name: str
    state: JobState
    progress: JobProgress
    error: ErrorInfo | None
    times: JobTimes | None = None
    files: tuple[FileProgress, ...] | None = None
    type: JobType = JobType.DOWNLOAD
    attempts: int = 0
    retry_at: float | None = None
    folder: str | None = None
    verified: int | None = None
    connections: int = 0  # in use by its files now (read for jobs of a few files)
    bandwidth: str = ""  # its cap and what limits it now ("cap 5.0 MB/s, throttled"), or ''

    @classmethod
    def of(cls, job: JobView, *, detail: bool = True) -> JobSnapshot:
        """Read *job* now (plain attribute reads: safe from any thread). *detail* also reads
        the files when a size is unknown or the job waits for Complete."""
        state = job.state
        error = job.error if state in (JobState.ERROR, JobState.TRANSIENT_ERROR) else None
        p = job.progress
        times = job.times
        files: tuple[FileProgress, ...] | None = None
        folder = None
        need_files = detail and p.bytes_total is None and p.files_total > 1
        wants_folder = state in (JobState.TRANSFERRED, JobState.ERROR)
        done = state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED)
        verified = None
        if need_files or (detail and (wants_folder or done)):
            infos = job.files
            if need_files:
                files = tuple(f.progress for f in infos)
            if wants_folder and infos:
                folder = _common_folder([f.local_name for f in infos])
            if done:
                verified = sum(1 for f in infos if f.hash is not None and f.validation_state)
        attempts = int(getattr(job, "error_count", 0) or 0)
        retry_at = None
        if state is JobState.TRANSIENT_ERROR:
            delay = getattr(job, "minimum_retry_delay", None)
            if isinstance(delay, int | float):
                retry_at = times.modification.timestamp() + float(delay)
        connections = 0
        if detail and state is JobState.TRANSFERRING and p.files_total <= 16:
            connections = sum(f.connections for f in job.files)
        return cls(
            job.id,
            job.display_name,
            state,
            p,
            error,
            times,
            files,
            job.type,
            attempts,
            retry_at,
            folder,
            verified,
            connections,
            bandwidth_text(getattr(job, "bandwidth", None)),
        )

    @functools.cached_property
    def estimate(self) -> Estimate:
        """The share done, exact or estimated (see ``_text.estimate``); computed once."""
        return estimate(self.progress, self.files)

    def error_line(self, now: float | None = None) -> str:
        """The error said once (with the retry countdown for TRANSIENT_ERROR), or ''."""
        if self.error is None:
            return ""
        retry_in = None
        if self.retry_at is not None:
            retry_in = self.retry_at - (time.time() if now is None else now)
        return error_summary(
            self.error,
            job_type=self.type,
            retry_in=retry_in,
            attempts=self.attempts,
            transient=self.state is JobState.TRANSIENT_ERROR,
        )


def verified_text(snap: JobSnapshot) -> str:
    """'verified' when every file matched its hash, 'k of n files verified' for some, else ''."""
    n, total = snap.verified, snap.progress.files_total
    if not n:
        return ""
    return "verified" if n == total else f"{n} of {total} files verified"


def bandwidth_text(status: object) -> str:
    """A job's ``BandwidthStatus`` as panels say it: "cap 5.0 MB/s, throttled", "yielding",
    "blocked by policy", or '' (no cap, nothing limiting it)."""
    if not isinstance(status, BandwidthStatus):
        return ""
    parts = []
    if status.cap is not None:
        parts.append(f"cap {format_rate(status.cap) or '0 B/s'}")
    if status.state:
        parts.append(status.state)
    return ", ".join(parts)


def bandwidth_mark(text: str) -> str:
    """A queue row's speed cell says a cap or a limit briefly; the whole text is its title."""
    return f" <small>({escape(text)})</small>" if text else ""


def _common_folder(paths: Sequence[str]) -> str:
    folders = {os.path.dirname(p) for p in paths}
    try:
        return os.path.commonpath(list(folders))
    except ValueError:  # different drives
        return sorted(folders)[0]


def folder_text(folder: str | None) -> str:
    if not folder:
        return "place"
    try:
        rel = os.path.relpath(folder)
    except ValueError:
        rel = folder
    shown = rel if not rel.startswith("..") and len(rel) < len(folder) else folder
    return shown.rstrip(os.sep) + os.sep


def confirm_text(method: str, snap: JobSnapshot) -> str | None:
    """What a destructive button would do, when it deserves a second click (else None).

    Cancel on a job with data deletes it; Complete before every file is transferred keeps only
    the transferred ones.
    """
    p = snap.progress
    if snap.state.is_final:
        return None
    if method == "cancel" and (p.bytes_transferred > 0 or p.files_transferred > 0):
        verb = "uploaded" if snap.type is not JobType.DOWNLOAD else "downloaded"
        return (
            f"Cancel deletes the {format_bytes(p.bytes_transferred)} already {verb} "
            f"({files_text(p)} done) and ends the job."
        )
    if method == "complete" and snap.state is not JobState.TRANSFERRED:
        if p.files_transferred == 0:
            return f"Complete now ends the job without any of its {files_text(p)}."
        return (
            f"Complete now keeps only the {p.files_transferred} of {p.files_total} files "
            f"transferred (moved into {folder_text(snap.folder)}) and drops the rest."
        )
    return None
