"""Public snapshot types (progress, times, errors, files) and the settings a manager runs with."""

from __future__ import annotations

import datetime as _dt
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from ._bandwidth import (
    BackgroundMode,
    BandwidthSchedule,
    BandwidthWindow,
    check_background,
    check_rate,
)
from ._enums import ErrorContext
from ._errors import context_description, lookup_error
from ._validate import os_user

__all__ = [
    "BG_SIZE_UNKNOWN",
    "ErrorInfo",
    "FileInfo",
    "FileProgress",
    "FileRange",
    "JobProgress",
    "JobTimes",
    "Policy",
]

BG_SIZE_UNKNOWN = 0xFFFFFFFFFFFFFFFF
"""BITS's marker for an unknown size; bitsnb reports ``None`` instead and keeps this for interop."""


@dataclass(frozen=True)
class JobProgress:
    """BG_JOB_PROGRESS; ``bytes_total`` is None while any file's size is unknown."""

    bytes_total: int | None
    bytes_transferred: int
    files_total: int
    files_transferred: int

    @property
    def percent(self) -> float | None:
        """Bytes transferred as a percentage, or None while the total is unknown."""
        if self.bytes_total is None:
            return None
        if self.bytes_total == 0:
            return 100.0 if self.files_total == self.files_transferred else 0.0
        return 100.0 * self.bytes_transferred / self.bytes_total


@dataclass(frozen=True)
class JobTimes:
    """BG_JOB_TIMES as tz-aware UTC datetimes; ``transfer_completion`` is None until TRANSFERRED."""

    creation: _dt.datetime
    modification: _dt.datetime
    transfer_completion: _dt.datetime | None


@dataclass(frozen=True)
class FileProgress:
    """BG_FILE_PROGRESS; ``completed`` means handed to the user by complete()."""

    bytes_total: int | None
    bytes_transferred: int
    completed: bool


@dataclass(frozen=True)
class FileRange:
    """BG_FILE_RANGE; ``length=None`` means to the end of the file."""

    offset: int
    length: int | None


@dataclass(frozen=True)
class FileInfo:
    """One file of a job, as IBackgroundCopyFile reports it (a snapshot).

    ``known_hash`` is what the application said the file hashes to (``"alg:hex"``); ``hash``
    what bitsnb computed while the bytes streamed in (the known hash's algorithm, or that of
    the digest the server sent; None when nothing asked for one); ``validation_state`` is
    IBackgroundCopyFile3's (False once a check failed or the application declared it invalid);
    ``connections`` how many connections fetch it now (a segmented download has several).
    """

    index: int
    remote_name: str
    local_name: str
    temporary_name: str
    progress: FileProgress
    ranges: tuple[FileRange, ...] = ()
    transferred: bool = False
    known_hash: str | None = None
    hash: str | None = None
    validation_state: bool = True
    connections: int = 0


@dataclass(frozen=True)
class ErrorInfo:
    """IBackgroundCopyError: the code, where it happened and the file involved."""

    code: int
    context: ErrorContext
    file: FileInfo | None
    protocol: str | None
    message: str = ""

    @property
    def name(self) -> str:
        """Symbolic name of the code."""
        return lookup_error(self.code).name

    @property
    def description(self) -> str:
        """The code's sentence (English)."""
        return lookup_error(self.code).description

    @property
    def context_description(self) -> str:
        """A sentence saying where the error happened."""
        return context_description(self.context)

    def __str__(self) -> str:
        where = f" [{self.file.remote_name}]" if self.file else ""
        detail = f" ({self.message})" if self.message else ""
        return f"{self.name} (0x{self.code:08X}): {self.description}{detail}{where}"


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class Policy:
    """Machine-wide settings of a manager: limits, concurrency and timings.

    The BITS limits are off (None) by default; ``Policy.windows_defaults()`` gives BITS's numbers.
    ``verify`` is passed to httpx (True, a CA bundle path or an ``ssl.SSLContext``); redirects
    are followed up to ``max_redirects`` and never from https to http unless allowed.
    ``lean_transport`` sends downloads' GET requests through bitsnb's own HTTP/1.1 transport
    under httpx (zero-copy bodies); False keeps httpx's default transport for everything.
    ``http2`` True offers HTTP/2 to https servers (TLS ALPN; needs the ``h2`` package, the
    ``http2`` extra): their requests go through httpx's own transport, many on one connection;
    plain http and servers that decline stay on HTTP/1.1. Off by default (see README, WAN).
    ``receive_buffer`` None (the default) leaves the socket receive buffer to Linux's
    autotuning, which grows it with the path (throughput ≤ window / round trip: a fixed 2 MiB
    held one connection to ~75 MB/s at 50 ms), except on a connection whose handshake took
    ≤ 1 ms (loopback, a LAN), which gets a fixed 2 MiB: no window bounds the rate there, and
    autotuning's ramp from ~64 KiB on each new connection did; a number fixes it everywhere
    (the kernel doubles it), bounding the bytes in flight that a killed process loses.
    ``max_bandwidth`` caps background jobs together (bytes/s, None = off); ``bandwidth_schedule``
    (``BandwidthWindow``s, local time) sets other caps at times, ``max_bandwidth`` applying
    outside them, and a limit of 0 blocks background jobs (BG_E_BLOCKED_BY_POLICY until the window
    ends). FOREGROUND jobs are never capped by either (only by their own ``job.max_bandwidth``).
    ``max_connections_per_file`` lets one large file be fetched in segments over up to that
    many connections (1 turns it off), added while each trial raises the file's rate by 10 %
    over ``segment_window`` seconds and at least two ``min_segment_bytes`` are left (doubling,
    one after another, after a trial that paid a whole connection's share);
    every connection counts against ``max_connections_per_host`` (16, as ``curl --parallel``
    16 or aria2c's most: 8 held a job of small files at 50 ms to 8 requests a round trip; a
    host that refuses the extra requests with 503/429 gets fewer again, see README).
    ``min_retry_delay_floor`` is BITS's 5 s floor for ``minimum_retry_delay``; tests lower it
    (also through the ``BITSNB_MIN_RETRY_DELAY_FLOOR`` environment variable).
    """

    max_jobs_per_user: int | None = None
    max_jobs_per_machine: int | None = None
    max_files_per_job: int | None = None
    max_ranges_per_file: int | None = None
    min_retry_delay_floor: float = field(
        default_factory=lambda: _env_float("BITSNB_MIN_RETRY_DELAY_FLOOR", 5.0)
    )
    max_active_jobs: int = 4
    max_connections_per_host: int = 16
    max_connections_per_file: int = 8
    min_segment_bytes: int = 8 * 1024 * 1024
    segment_window: float = 0.3
    files_in_flight: int = 4
    time_slice: float = 30.0
    lease_seconds: float = 15.0
    poll_interval: float = 0.5
    store_busy_timeout: float = 10.0
    checkpoint_interval: float = 1.0
    checkpoint_bytes: int = 64 * 1024 * 1024
    read_size: int = 1024 * 1024
    job_lifetime: float = 90 * 86400.0
    scavenge_interval: float = 60.0
    history_retention: float = 30 * 86400.0
    connect_timeout: float = 30.0
    read_timeout: float = 300.0
    max_redirects: int = 10
    allow_https_to_http: bool = False
    verify: bool | str | ssl.SSLContext = True
    lean_transport: bool = True
    http2: bool = False
    receive_buffer: int | None = None
    max_bandwidth: float | None = None
    bandwidth_schedule: tuple[BandwidthWindow, ...] = ()
    background: BackgroundMode = "yield"
    local_time: Callable[[], _dt.datetime] = _dt.datetime.now  # the schedule's clock (tests)
    owner: str = field(default_factory=os_user)

    def __post_init__(self) -> None:
        self.max_bandwidth = check_rate(self.max_bandwidth)
        # overlapping windows and bad values are E_INVALIDARG here, at construction
        self.bandwidth_schedule = BandwidthSchedule(self.bandwidth_schedule).windows
        self.background = check_background(self.background)

    def schedule(self) -> BandwidthSchedule:
        """The bandwidth schedule, with ``max_bandwidth`` applying outside its windows."""
        return BandwidthSchedule(self.bandwidth_schedule, self.max_bandwidth)

    @classmethod
    def windows_defaults(cls) -> Policy:
        """The limits Windows ships with (60 jobs per user, 300 per machine, 200 files, 500 ranges)."""
        return cls(
            max_jobs_per_user=60,
            max_jobs_per_machine=300,
            max_files_per_job=200,
            max_ranges_per_file=500,
        )
