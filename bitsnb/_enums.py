"""BITS enumerations, carrying the numbers BITS gives them (spec §2).

They are ``IntEnum``s (BITS passes numbers), but they print as their names: ``print(job.state)``
shows ``ERROR``, not ``4`` (``int(state)`` and ``f"{state:d}"`` still give the number).
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthScheme",
    "AuthTarget",
    "ErrorContext",
    "JobPriority",
    "JobState",
    "JobType",
    "NotifyFlags",
    "ProxyUsage",
]


class _Named(enum.IntEnum):
    """An ``IntEnum`` whose ``str()`` is its name (``IntEnum``'s own is the number)."""

    def __str__(self) -> str:
        return self.name


class JobState(_Named):
    """BG_JOB_STATE: where a job is in its life cycle."""

    QUEUED = 0  # waiting for the scheduler
    CONNECTING = 1  # contacting the server
    TRANSFERRING = 2  # moving bytes
    SUSPENDED = 3  # paused; every new job starts here
    ERROR = 4  # fatal failure; waits for the application
    TRANSIENT_ERROR = 5  # recoverable failure; retried after the retry delay
    TRANSFERRED = 6  # all files done; waiting for complete()
    ACKNOWLEDGED = 7  # complete() was called (final)
    CANCELLED = 8  # cancel() was called (final)

    @property
    def is_final(self) -> bool:
        """True for ACKNOWLEDGED and CANCELLED, which a job never leaves."""
        return self in (JobState.ACKNOWLEDGED, JobState.CANCELLED)

    @property
    def is_active(self) -> bool:
        """True for the states in which the scheduler owns the job."""
        return self in _ACTIVE


_ACTIVE = frozenset(
    {JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING, JobState.TRANSIENT_ERROR}
)


class JobType(_Named):
    """BG_JOB_TYPE."""

    DOWNLOAD = 0
    UPLOAD = 1
    UPLOAD_REPLY = 2


class JobPriority(_Named):
    """BG_JOB_PRIORITY: lower numbers run first."""

    FOREGROUND = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


class ErrorContext(_Named):
    """BG_ERROR_CONTEXT: where an error happened."""

    NONE = 0
    UNKNOWN = 1
    GENERAL_QUEUE_MANAGER = 2
    QUEUE_MANAGER_NOTIFICATION = 3
    LOCAL_FILE = 4
    REMOTE_FILE = 5
    GENERAL_TRANSPORT = 6
    REMOTE_APPLICATION = 7
    SERVER_CERTIFICATE_CALLBACK = 8


class NotifyFlags(enum.IntFlag):
    """BG_NOTIFY_*: which events a job reports."""

    def __str__(self) -> str:
        return self.name or "0"  # JOB_TRANSFERRED|JOB_ERROR for a combination

    JOB_TRANSFERRED = 0x0001
    JOB_ERROR = 0x0002
    DISABLE = 0x0004
    JOB_MODIFICATION = 0x0008
    FILE_TRANSFERRED = 0x0010
    FILE_RANGES_TRANSFERRED = 0x0020


class ProxyUsage(_Named):
    """BG_JOB_PROXY_USAGE."""

    PRECONFIG = 0  # the environment's proxy settings (HTTP_PROXY, ...)
    NO_PROXY = 1
    OVERRIDE = 2  # the job's own proxy list
    AUTODETECT = 3  # treated as PRECONFIG off Windows


class AuthTarget(_Named):
    """BG_AUTH_TARGET."""

    SERVER = 1
    PROXY = 2


class AuthScheme(_Named):
    """BG_AUTH_SCHEME; bitsnb speaks BASIC and DIGEST."""

    BASIC = 1
    DIGEST = 2
    NTLM = 3
    NEGOTIATE = 4
    PASSPORT = 5
