"""The mutable in-memory records the manager keeps and the store persists, the secrets it keeps
beside them in memory only, and their read-only snapshots (``FileInfo``, ``ErrorInfo``)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ._enums import (
    AuthScheme,
    AuthTarget,
    ErrorContext,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    ProxyUsage,
)
from ._models import ErrorInfo, FileInfo, FileProgress, FileRange

DEFAULT_MIN_RETRY_DELAY = 600.0
DEFAULT_NO_PROGRESS_TIMEOUT = 1_209_600.0
DEFAULT_MAX_DOWNLOAD_TIME = 7_776_000.0
DEFAULT_NOTIFY = NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR


@dataclass
class ErrorRecord:
    """The job's last error."""

    code: int
    context: ErrorContext
    file_index: int | None = None
    protocol: str | None = None
    message: str = ""


@dataclass
class FileRecord:
    """One (remote, local) pair and its transfer progress."""

    index: int
    remote_name: str
    local_name: str
    temp_name: str
    bytes_total: int | None = None
    bytes_transferred: int = 0
    transferred: bool = False  # every byte is durable in the temporary file
    completed: bool = False  # renamed to its final name by complete()
    etag: str | None = None
    last_modified: str | None = None
    ranges: list[tuple[int, int | None]] | None = None
    known_hash: str | None = None  # "alg:hex", checked when the last byte is in
    hash: str | None = None  # "alg:hex" computed while the bytes streamed in, once complete
    validation_state: bool = True  # False: declared invalid (a mismatch, or the application)
    placed: tuple[int, int, int] | None = None  # (size, mtime_ns, inode) complete() left it with


@dataclass
class JobSettings:
    """Per-job settings that are persisted as one JSON document."""

    description: str = ""
    minimum_retry_delay: float = DEFAULT_MIN_RETRY_DELAY
    no_progress_timeout: float = DEFAULT_NO_PROGRESS_TIMEOUT
    maximum_download_time: float = DEFAULT_MAX_DOWNLOAD_TIME
    notify_flags: int = int(DEFAULT_NOTIFY)
    notify_cmd_line: tuple[str, str] | None = None
    proxy_usage: int = int(ProxyUsage.PRECONFIG)
    proxy_list: str | None = None
    proxy_bypass_list: str | None = None
    custom_headers: str | None = None
    dynamic_content: bool = False
    high_performance: bool = False
    reply_file_name: str | None = None
    # upload jobs: the server session and the reply (one file per upload job, so it lives here)
    upload_session_id: str | None = None
    upload_source_stamp: str | None = None
    upload_fragment_size: int = 8 * 1024 * 1024
    reply_url: str | None = None
    reply_temp_name: str | None = None
    reply_bytes_total: int | None = None
    reply_bytes_transferred: int = 0
    reply_done: bool = False
    max_bandwidth: float | None = None  # this job's own cap, bytes/s (None: none)


@dataclass
class JobRecord:
    """A job as the manager holds it; the store mirrors it."""

    id: uuid.UUID
    display_name: str
    type: JobType
    owner: str
    priority: JobPriority = JobPriority.NORMAL
    state: JobState = JobState.SUSPENDED
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)
    transfer_completed: float | None = None
    error: ErrorRecord | None = None
    error_count: int = 0
    settings: JobSettings = field(default_factory=JobSettings)
    files: list[FileRecord] = field(default_factory=list)
    first_failure_at: float | None = None  # start of the no-progress window
    retry_at: float | None = None
    active_seconds: float = 0.0  # time spent CONNECTING/TRANSFERRING since the last resume()
    resumed_once: bool = False
    version: int = 0  # optimistic-concurrency counter in the store
    seq: int = 0  # creation order, for FIFO within a priority

    def touch(self) -> None:
        """Record a modification now."""
        self.modified = time.time()


@dataclass
class JobSecrets:
    """What a job never writes to the store: credentials and secret headers."""

    credentials: dict[tuple[AuthTarget, AuthScheme], tuple[str | None, str | None]] = field(
        default_factory=dict
    )
    headers: dict[str, str] = field(default_factory=dict)


# headers kept in memory only (never in the store, never shown): credentials and tokens
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "private-token",
        "x-amz-security-token",
        "x-goog-api-key",
    }
)


def file_info(f: FileRecord) -> FileInfo:
    """The read-only snapshot of a file record."""
    return FileInfo(
        index=f.index,
        remote_name=f.remote_name,
        local_name=f.local_name,
        temporary_name=f.temp_name,
        progress=FileProgress(f.bytes_total, f.bytes_transferred, f.completed),
        ranges=tuple(FileRange(o, n) for o, n in (f.ranges or ())),
        transferred=f.transferred,
        known_hash=f.known_hash,
        hash=f.hash,
        validation_state=f.validation_state,
    )


def error_info(rec: JobRecord) -> ErrorInfo | None:
    """The read-only snapshot of a job's last error (None when it has none)."""
    err = rec.error
    if err is None:
        return None
    file = (
        file_info(rec.files[err.file_index])
        if err.file_index is not None and err.file_index < len(rec.files)
        else None
    )
    return ErrorInfo(err.code, err.context, file, err.protocol, err.message)
