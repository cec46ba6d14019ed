"""``AsyncJob``: IBackgroundCopyJob (1–5) and its HTTP options, as coroutines and properties.

Reading a property is free (it reads the job's record); every change goes through the
``JobHost`` — the queue's operations (``_jobctl.JobControl``) — which checks the state table,
stores the change and tells the listeners. The calls only some jobs have (one job type, or
Windows) come from ``_jobtyped.TypedJobCalls``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import _codes
from ._bandwidth import BandwidthStatus, check_rate
from ._enumerator import Enumerator
from ._enums import AuthScheme, AuthTarget, JobPriority, JobState, JobType, NotifyFlags, ProxyUsage
from ._errors import BitsError
from ._jobchecks import (
    check_credentials,
    check_notify_cmd_line,
    check_notify_flags,
    check_proxy_settings,
    split_custom_headers,
)
from ._jobstats import job_progress, job_times
from ._jobtyped import TypedJobCalls
from ._models import ErrorInfo, FileInfo, JobProgress, JobTimes, Policy
from ._persist import await_patiently
from ._records import FileRecord, JobRecord, JobSecrets, error_info, file_info
from ._states import allowed_calls
from ._store_api import StoreURL
from ._validate import (
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    check_ranges,
    check_seconds,
    check_string,
    check_url,
    is_admin,
)

__all__ = ["AsyncJob", "JobHost", "ManagerView", "record_of"]


class ManagerView(Protocol):
    """What ``AsyncJob.manager`` offers: the owning ``AsyncManager``'s public face."""

    policy: Policy
    store_path: Path | StoreURL

    async def get_job(self, job_id: uuid.UUID | str) -> AsyncJob: ...

    async def enum_jobs(
        self, all_users: bool = False, *, include_finished: bool = False
    ) -> Enumerator[AsyncJob]: ...


class JobHost(Protocol):
    """The narrow interface a job handle uses: the queue's operations on one record."""

    @property
    def manager(self) -> ManagerView: ...

    @property
    def policy(self) -> Policy: ...

    def check_priority(self, priority: object) -> JobPriority: ...
    def live(self, rec: JobRecord) -> JobRecord: ...
    def update(
        self,
        rec: JobRecord,
        apply: Callable[[JobRecord], object],
        files: Iterable[FileRecord] = (),
    ) -> None: ...
    def add_files(
        self,
        rec: JobRecord,
        pairs: Sequence[
            tuple[str, str | os.PathLike[str]] | tuple[str, str | os.PathLike[str], str | None]
        ],
        ranges: list[tuple[int, int | None]] | None = None,
    ) -> None: ...
    async def set_validation_state(self, rec: JobRecord, index: int, valid: bool) -> None: ...
    def resume(self, rec: JobRecord) -> None: ...
    async def suspend(self, rec: JobRecord) -> None: ...
    async def cancel(self, rec: JobRecord) -> int: ...
    async def complete(self, rec: JobRecord) -> int: ...
    async def wait(self, rec: JobRecord, timeout: float | None) -> JobState: ...
    def set_notify_target(self, rec: JobRecord, target: Any) -> None: ...
    def secrets(self, job_id: uuid.UUID) -> JobSecrets | None: ...
    def secrets_for(self, rec: JobRecord) -> JobSecrets: ...
    def drop_secrets(self, job_id: uuid.UUID) -> None: ...
    def bandwidth_changed(self, rec: JobRecord) -> None: ...
    def bandwidth(self, rec: JobRecord) -> BandwidthStatus: ...


class AsyncJob(TypedJobCalls):
    """A BITS job; methods are coroutines run on the manager's loop."""

    def __init__(self, host: JobHost, rec: JobRecord) -> None:
        self._host = host
        self._rec = rec

    async def _change(self, fn: Callable[..., object], *args: Any) -> Any:
        """Run a host operation, retrying while another process holds the store's lock."""
        return await await_patiently(self._host.policy.store_busy_timeout, fn, *args)

    def _update(self, apply: Callable[[JobRecord], object]) -> Any:
        return self._change(self._host.update, self._rec, apply)

    # -- identity and reading --------------------------------------------------------------
    @property
    def id(self) -> uuid.UUID:
        """The job's GUID."""
        return self._rec.id

    @property
    def manager(self) -> ManagerView:
        """The manager that owns this handle."""
        return self._host.manager

    @property
    def type(self) -> JobType:
        """DOWNLOAD, UPLOAD or UPLOAD_REPLY."""
        return self._rec.type

    @property
    def state(self) -> JobState:
        """The current state."""
        return self._rec.state

    @property
    def display_name(self) -> str:
        """The name shown in lists and panels."""
        return self._rec.display_name

    @property
    def description(self) -> str:
        """Free text (up to 1,024 characters)."""
        return self._rec.settings.description

    @property
    def priority(self) -> JobPriority:
        """FOREGROUND, HIGH, NORMAL or LOW."""
        return self._rec.priority

    @property
    def owner(self) -> str:
        """The OS user who owns the job."""
        return self._rec.owner

    @property
    def progress(self) -> JobProgress:
        """Bytes and files, total and transferred."""
        return job_progress(self._rec)

    @property
    def times(self) -> JobTimes:
        """Creation, modification and transfer-completion times (UTC)."""
        return job_times(self._rec)

    @property
    def error(self) -> ErrorInfo | None:
        """The last error while the job is in ERROR or TRANSIENT_ERROR, else None."""
        if self._rec.state not in (JobState.ERROR, JobState.TRANSIENT_ERROR):
            return None
        return error_info(self._rec)

    def get_error(self) -> ErrorInfo:
        """GetError: like ``error``, but BG_E_ERROR_INFORMATION_UNAVAILABLE when there is none."""
        err = self.error
        if err is None:
            raise BitsError(
                _codes.BG_E_ERROR_INFORMATION_UNAVAILABLE,
                f"the job is {self.state.name}, not in an error state",
            )
        return err

    @property
    def error_count(self) -> int:
        """How many times a transfer attempt failed (never reset)."""
        return self._rec.error_count

    @property
    def minimum_retry_delay(self) -> float:
        """Seconds to wait after a transient error before retrying (default 600)."""
        return self._rec.settings.minimum_retry_delay

    @property
    def no_progress_timeout(self) -> float:
        """Seconds of failed retries without progress before ERROR (default 14 days)."""
        return self._rec.settings.no_progress_timeout

    @property
    def maximum_download_time(self) -> float:
        """Seconds of active transfer allowed before ERROR (default 90 days)."""
        return self._rec.settings.maximum_download_time

    @property
    def notify_flags(self) -> NotifyFlags:
        """Which events are delivered to the notify interface / command line."""
        return NotifyFlags(self._rec.settings.notify_flags)

    @property
    def notify_cmd_line(self) -> tuple[str, str] | None:
        """(program, parameters) run on TRANSFERRED or ERROR, or None."""
        return self._rec.settings.notify_cmd_line

    @property
    def proxy_settings(self) -> tuple[ProxyUsage, str | None, str | None]:
        """(usage, proxy list, bypass list)."""
        s = self._rec.settings
        return ProxyUsage(s.proxy_usage), s.proxy_list, s.proxy_bypass_list

    @property
    def custom_headers(self) -> str | None:
        """Extra request headers; secret ones (Authorization, Cookie) show as '<hidden>'."""
        s = self._rec.settings.custom_headers
        secret = self._host.secrets(self.id)
        if secret is None or not secret.headers:
            return s
        hidden = "\r\n".join(f"{name}: <hidden>" for name in secret.headers)
        return f"{s}\r\n{hidden}" if s else hidden

    @property
    def dynamic_content(self) -> bool:
        """Accept servers without sizes or ranges; interruptions restart files from zero."""
        return self._rec.settings.dynamic_content

    @property
    def high_performance(self) -> bool:
        """Write straight into the destination files (no temporary file)."""
        return self._rec.settings.high_performance

    @property
    def allowed_calls(self) -> frozenset[str]:
        """Which of suspend/resume/cancel/complete are valid in the current state, as BITS
        answers them: suspend on a SUSPENDED job and resume on a running one are valid no-ops
        (a panel offers only the calls that change something)."""
        calls = set(allowed_calls(self.state, self.type))
        if not self._rec.files:  # BG_E_EMPTY
            calls.discard("resume")
        return frozenset(calls)

    @property
    def paths(self) -> list[Path]:
        """The files' local names (where they appear once the job is complete)."""
        return [Path(f.local_name) for f in self._rec.files]

    def enum_files(self) -> Enumerator[FileInfo]:
        """EnumFiles: a snapshot of the job's files."""
        return Enumerator([file_info(f) for f in self._rec.files])

    @property
    def files(self) -> list[FileInfo]:
        """The job's files as a list (same as ``list(enum_files())``)."""
        return list(self.enum_files())

    # -- state changes -------------------------------------------------------------------------
    async def add_file(
        self,
        remote_url: str,
        local_name: str | os.PathLike[str],
        *,
        known_hash: str | None = None,
    ) -> None:
        """AddFile: one remote URL → absolute local path.

        *known_hash* (``"sha256:<hex>"``, pooch's format; bare hex is sha256; also sha512, sha1,
        md5, blake2b, and xxh64/xxh128 with ``xxhash`` installed) is checked as the bytes
        arrive: a mismatch puts the job in ERROR with BG_E_VALIDATION_FAILED.
        """
        entry = (remote_url, local_name, known_hash)
        await self._change(self._host.add_files, self._rec, [entry])

    async def add_file_set(
        self,
        files: Iterable[
            tuple[str, str | os.PathLike[str]] | tuple[str, str | os.PathLike[str], str | None]
        ],
    ) -> None:
        """AddFileSet: several (url, path) pairs or (url, path, known_hash) triples at once;
        all or none are added."""
        await self._change(self._host.add_files, self._rec, list(files))

    async def add_file_with_ranges(
        self,
        remote_url: str,
        local_name: str | os.PathLike[str],
        ranges: Sequence[tuple[int, int | None]],
    ) -> None:
        """AddFileWithRanges: fetch only these (offset, length) ranges, back to back."""
        if self.type is not JobType.DOWNLOAD:
            raise BitsError(_codes.E_NOTIMPL, "file ranges are for download jobs only")
        checked = check_ranges(ranges)
        limit = self._host.policy.max_ranges_per_file
        if limit is not None and len(checked) > limit:
            raise BitsError(
                _codes.BG_E_TOO_MANY_RANGES_IN_FILE, f"a file may have at most {limit} ranges"
            )
        await self._change(self._host.add_files, self._rec, [(remote_url, local_name)], checked)

    async def resume(self) -> None:
        """Resume: queue the job (BG_E_EMPTY without files)."""
        await self._change(self._host.resume, self._rec)

    async def suspend(self) -> None:
        """Suspend: stop transferring; data on disk is kept."""
        await self._host.suspend(self._rec)

    async def cancel(self) -> int:
        """Cancel: delete temporary files and end the job (S_OK or BG_S_UNABLE_TO_DELETE_FILES)."""
        return await self._host.cancel(self._rec)

    async def complete(self) -> int:
        """Complete: move transferred files to their names (S_OK or BG_S_PARTIAL_COMPLETE)."""
        return await self._host.complete(self._rec)

    async def wait(self, timeout: float | None = None) -> JobState:
        """Wait until TRANSFERRED, ERROR, CANCELLED or ACKNOWLEDGED (TimeoutError after *timeout*)."""
        return await self._host.wait(self._rec, timeout)

    wait_async = wait

    # -- setters ---------------------------------------------------------------------------------
    async def set_display_name(self, name: str) -> None:
        """SetDisplayName (≤256 characters)."""
        check_string(name, "display name", MAX_DISPLAY_NAME)
        await self._update(lambda r: setattr(r, "display_name", name))

    async def set_description(self, text: str) -> None:
        """SetDescription (≤1,024 characters)."""
        check_string(text, "description", MAX_DESCRIPTION)
        await self._update(lambda r: setattr(r.settings, "description", text))

    async def set_priority(self, priority: JobPriority | int) -> None:
        """SetPriority (E_NOTIMPL for a value outside BG_JOB_PRIORITY)."""
        prio = self._host.check_priority(priority)
        await self._update(lambda r: setattr(r, "priority", prio))

    @property
    def max_bandwidth(self) -> float | None:
        """This job's own cap in bytes/s (None: none), whatever its priority; kept in the store."""
        return self._rec.settings.max_bandwidth

    @property
    def bandwidth(self) -> BandwidthStatus:
        """What limits the transfer now: throttled, yielding or blocked by policy; cap; rate."""
        return self._host.bandwidth(self._rec)

    async def set_max_bandwidth(self, bytes_per_second: float | None) -> None:
        """Cap this job (bytes/s; None removes the cap); E_INVALIDARG for a negative, NaN or
        non-numeric value. Applies at once to its open connections."""
        value = check_rate(bytes_per_second, "max_bandwidth")
        await self._update(lambda r: setattr(r.settings, "max_bandwidth", value))
        self._host.bandwidth_changed(self._rec)

    async def set_minimum_retry_delay(self, seconds: float) -> None:
        """SetMinimumRetryDelay; values under the policy's floor (BITS: 5 s) are raised to it."""
        value = max(
            check_seconds(seconds, "minimum_retry_delay"), self._host.policy.min_retry_delay_floor
        )
        await self._update(lambda r: setattr(r.settings, "minimum_retry_delay", value))

    async def set_no_progress_timeout(self, seconds: float) -> None:
        """SetNoProgressTimeout; 0 makes every error fatal."""
        value = check_seconds(seconds, "no_progress_timeout")
        await self._update(lambda r: setattr(r.settings, "no_progress_timeout", value))

    async def set_maximum_download_time(self, seconds: float) -> None:
        """SetMaximumDownloadTime: cap on active transfer time (0 = no cap? no: BITS needs > 0)."""
        value = check_seconds(seconds, "maximum_download_time")
        if value == 0:
            value = float(7_776_000)  # 0 means "use the default" in BITS
        await self._update(lambda r: setattr(r.settings, "maximum_download_time", value))

    async def set_notify_flags(self, flags: NotifyFlags | int) -> None:
        """SetNotifyFlags (E_NOTIMPL for unknown bits)."""
        value = check_notify_flags(flags)
        await self._update(lambda r: setattr(r.settings, "notify_flags", value))

    async def set_notify_interface(self, target: Any) -> None:
        """SetNotifyInterface: an object with any of job_transferred(job), job_error(job, error),
        job_modification(job), file_transferred(job, file) — plain or async; None removes it.

        As in BITS it is not persisted, and an event that already happened is delivered at once.
        The notify command line runs only when no callback handles the event or the callback
        raises. ``file_transferred`` follows the order files finish in: with several files in
        flight (``Policy.files_in_flight``) that may differ from the job's order; a policy with
        ``files_in_flight=1`` keeps the job's order.
        """
        self._host.set_notify_target(self._rec, target)

    async def set_notify_cmd_line(self, program: str | None, parameters: str | None = None) -> None:
        """SetNotifyCmdLine: run *program* (a full path) on TRANSFERRED or ERROR; None removes."""
        cmd = check_notify_cmd_line(program, parameters)
        await self._update(lambda r: setattr(r.settings, "notify_cmd_line", cmd))

    async def set_proxy_settings(
        self, usage: ProxyUsage | int, proxy_list: str | None = None, bypass_list: str | None = None
    ) -> None:
        """SetProxySettings: lists only with OVERRIDE, which needs a proxy list."""
        use = check_proxy_settings(usage, proxy_list, bypass_list)

        def apply(r: JobRecord) -> None:
            r.settings.proxy_usage = int(use)
            r.settings.proxy_list = proxy_list
            r.settings.proxy_bypass_list = bypass_list

        await self._update(apply)

    async def set_custom_headers(self, headers: str | dict[str, str] | None) -> None:
        """SetCustomHeaders: extra headers on every request. Credentials and tokens
        (Authorization, Proxy-Authorization, Cookie, X-Api-Key, X-Amz-Security-Token, ...: see
        ``SECRET_HEADERS``) are kept in memory only, never in the store."""
        secret, public = split_custom_headers(headers)
        rec = self._host.live(self._rec)
        self._host.secrets_for(rec).headers = secret
        await self._update(lambda r: setattr(r.settings, "custom_headers", public))

    async def set_credentials(
        self,
        target: AuthTarget | int,
        scheme: AuthScheme | int,
        user_name: str | None,
        password: str | None,
    ) -> None:
        """SetCredentials: kept in memory only (never in the store, never in a repr)."""
        tgt, sch, user_name, password = check_credentials(target, scheme, user_name, password)
        rec = self._host.live(self._rec)
        self._host.secrets_for(rec).credentials[(tgt, sch)] = (user_name, password)

    async def remove_credentials(self, target: AuthTarget | int, scheme: AuthScheme | int) -> bool:
        """RemoveCredentials: False (S_FALSE) when that pair was not set."""
        rec = self._host.live(self._rec)
        holder = self._host.secrets(rec.id)
        if holder is None:
            return False
        return holder.credentials.pop((AuthTarget(target), AuthScheme(scheme)), None) is not None

    async def set_remote_name(self, file: int | FileInfo, remote_url: str) -> None:
        """IBackgroundCopyFile2::SetRemoteName: re-point one file (download jobs)."""
        if self.type is not JobType.DOWNLOAD:
            raise BitsError(_codes.E_NOTIMPL, "set_remote_name is for download jobs")
        url = check_url(remote_url)
        index = file.index if isinstance(file, FileInfo) else int(file)
        if not 0 <= index < len(self._rec.files):
            raise BitsError(_codes.E_INVALIDARG, f"the job has no file {index}")

        def apply(r: JobRecord) -> None:
            r.files[index].remote_name = url

        f = self._rec.files[index]
        await self._change(self._host.update, self._rec, apply, [f])

    async def set_validation_state(self, file: int | FileInfo, valid: bool) -> None:
        """IBackgroundCopyFile3::SetValidationState: the application's verdict on a transferred
        file (E_PENDING before it is). False: the job goes to ERROR with BG_E_VALIDATION_FAILED,
        the file back to 0 bytes, and resume() fetches it again; True is the default."""
        index = file.index if isinstance(file, FileInfo) else int(file)
        await self._host.set_validation_state(self._rec, index, bool(valid))

    async def replace_remote_prefix(self, old_prefix: str, new_prefix: str) -> bool:
        """ReplaceRemotePrefix: swap a URL prefix on every file; False (S_FALSE) if none matched."""
        if self.type is not JobType.DOWNLOAD:
            raise BitsError(_codes.E_NOTIMPL, "replace_remote_prefix is for download jobs")
        if not old_prefix or not new_prefix:
            raise BitsError(_codes.E_INVALIDARG, "both prefixes must be non-empty")
        rec = self._host.live(self._rec)
        changed = []
        for f in rec.files:
            if f.remote_name.startswith(old_prefix) and not f.completed:
                changed.append((f, check_url(new_prefix + f.remote_name[len(old_prefix) :])))

        def apply(r: JobRecord) -> None:
            for f, url in changed:
                f.remote_name = url

        if changed:
            await self._change(self._host.update, rec, apply, [f for f, _ in changed])
        return bool(changed)

    async def take_ownership(self) -> None:
        """TakeOwnership: root only; drops credentials, custom headers and the command line."""
        if not is_admin():
            raise BitsError(_codes.E_ACCESSDENIED, "only root may take ownership of a job")
        owner = self._host.policy.owner

        def apply(r: JobRecord) -> None:
            r.owner = owner
            r.settings.custom_headers = None
            r.settings.notify_cmd_line = None

        self._host.drop_secrets(self.id)
        await self._update(apply)

    # -- dunder -------------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncJob) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        p = self.progress
        total = "?" if p.bytes_total is None else str(p.bytes_total)
        return (
            f"<{type(self).__name__} {self.display_name!r} {self.id} {self.state.name} "
            f"{p.files_transferred}/{p.files_total} files {p.bytes_transferred}/{total} bytes>"
        )


def record_of(job: AsyncJob) -> JobRecord:
    """The record behind a handle, for the queue's own layers (the blocking API passes it to
    the operations it runs through the loop); applications read the handle's properties."""
    return job._rec
