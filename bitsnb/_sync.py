"""The blocking API: ``Manager`` and ``Job`` run an ``AsyncManager`` on a loop thread of their own.

This is what notebooks and scripts use: calls block the caller, never the transfers, and work
the same inside a running Jupyter kernel (whose loop is busy running the cell) and in a script.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ._bandwidth import BandwidthStatus
from ._enumerator import Enumerator
from ._enums import AuthScheme, AuthTarget, JobPriority, JobState, JobType, NotifyFlags, ProxyUsage
from ._errors import get_error_description
from ._events import WAIT_DONE, JobEvent
from ._format import format_bytes
from ._job import AsyncJob, record_of
from ._jobtable import JobTable
from ._manager import AsyncManager, control_of
from ._models import ErrorInfo, FileInfo, JobProgress, JobTimes, Policy
from ._runtime import LoopThread
from ._store_api import StoreURL
from ._syncbridge import WINDOWS_ONLY, Bridge, closed, keep_open
from ._syncnotify import SyncNotify
from ._viewhooks import ViewHooks, views

__all__ = ["Job", "JobEnumerator", "Manager", "ViewHooks", "views"]

_T = TypeVar("_T")


class JobEnumerator(Enumerator["Job"]):
    """EnumJobs' answer: a snapshot of jobs with a cursor; ``to_frame()`` gives a DataFrame."""

    def __init__(
        self,
        items: Sequence[Job],
        position: int = 0,
        *,
        workers: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        super().__init__(items, position)
        self._workers = workers

    def to_frame(self) -> Any:
        """One row per job, indexed by job id: a pandas DataFrame (needs pandas); its worker
        column says who holds each job now (on a PostgreSQL store)."""
        return views.jobs_frame(self[:], self._workers() if self._workers is not None else None)


class Manager:
    """The BITS manager, blocking API. ``with bitsnb.Manager(store="jobs.db") as mgr: ...``."""

    def __init__(
        self,
        store: str | os.PathLike[str] | StoreURL | None = None,
        *,
        policy: Policy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._runtime = LoopThread()
        self._amgr = AsyncManager(store, policy=policy, transport=transport)
        self._jobs: weakref.WeakValueDictionary[uuid.UUID, Job] = weakref.WeakValueDictionary()
        self._bridge = Bridge(self._runtime, self._amgr.policy.store_busy_timeout, self._wrap)
        try:
            self._runtime.run(self._amgr.start())
        except BaseException:
            self._runtime.stop()
            raise
        keep_open(self)

    @property
    def async_manager(self) -> AsyncManager:
        """The ``AsyncManager`` this facade drives (it lives on the loop thread)."""
        return self._amgr

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the transfers run on."""
        return self._runtime.loop

    @property
    def policy(self) -> Policy:
        """The manager's settings."""
        return self._amgr.policy

    @property
    def store_path(self) -> Path | StoreURL:
        """Where the queue is stored: a SQLite file, or a PostgreSQL database's URL."""
        return self._amgr.store_path

    @property
    def closed(self) -> bool:
        """True after close()."""
        return not self._runtime.running

    def _wrap(self, ajob: AsyncJob) -> Job:
        job = self._jobs.get(ajob.id)
        if job is None or job.async_job is not ajob:
            job = Job(self, ajob, self._bridge)
            self._jobs[ajob.id] = job
        return job

    def create_job(
        self,
        display_name: str,
        type: JobType = JobType.DOWNLOAD,
        *,
        priority: JobPriority = JobPriority.NORMAL,
        description: str = "",
    ) -> Job:
        """CreateJob: a new, empty job in SUSPENDED."""
        self._bridge.refuse_here()
        # the checks and the insert in this thread (the store serialises its users); the
        # loop admits the job before its next look at the queue: no trip through it here
        ctl = control_of(self._amgr)
        return self._wrap(ctl.create(display_name, type, priority, description, on_loop=False))

    def get_job(self, job_id: uuid.UUID | str) -> Job:
        """GetJob: the job with that id; ``BitsError(BG_E_NOT_FOUND)`` when there is none."""
        return self._wrap(self._bridge.call(control_of(self._amgr).get_job, job_id))

    def enum_jobs(
        self, all_users: bool = False, *, include_finished: bool = False
    ) -> JobEnumerator:
        """EnumJobs: a snapshot of the queue (your jobs, or everybody's for root)."""
        jobs = self._bridge.call(control_of(self._amgr).enum_jobs, all_users, include_finished)
        return JobEnumerator([self._wrap(j) for j in jobs], workers=self.job_workers)

    def get_error_description(
        self, code: int, language: str | int | None = "en", *, job_type: JobType | None = None
    ) -> str:
        """GetErrorDescription: the sentence for an HRESULT (the upload reading for uploads)."""
        return get_error_description(code, language, job_type=job_type)

    def job_table(self, all_users: bool = False, *, include_finished: bool = False) -> JobTable:
        """The caller's jobs (or everybody's, for root) as columns, read from the store in one
        query (what ``bitsnb.jobs_frame`` builds on), with who holds each job and the live
        progress of the jobs this manager runs."""
        ctl = control_of(self._amgr)
        table = ctl.read_table(all_users, include_finished)  # here: the loop keeps running
        return self._runtime.call(ctl.live_table, table)

    def job_workers(self) -> dict[str, str]:
        """Who holds which job now (job id's text → worker: a lease holder, or a shared job's
        batch holders), as the store says; empty on SQLite."""
        return control_of(self._amgr).job_workers()

    def file_workers(self, job_id: uuid.UUID | str) -> dict[int, str]:
        """Who holds which file of the job now (file index → worker), as the store says;
        empty on SQLite and when nobody does."""
        return control_of(self._amgr).file_workers(job_id)

    def damaged_jobs(self) -> dict[uuid.UUID, str]:
        """Jobs whose stored rows cannot be read, and why (the rest of the queue works)."""
        return self._runtime.call(control_of(self._amgr).damaged_jobs)

    def verified_hash(self, local_name: str | os.PathLike[str]) -> str | None:
        """The hash a job verified for the file it completed at *local_name*, if the file is
        unchanged since (same size, mtime and inode); else None."""
        return self._runtime.run(self._amgr.verified_hash(local_name))

    def record_hash(
        self,
        local_name: str | os.PathLike[str],
        hash: str,
        *,
        seen: tuple[int, int, int] | None = None,
    ) -> bool:
        """Record that the file at *local_name*, as it is now, hashes to *hash* ("alg:hex"), so
        that ``verified_hash`` trusts it until it changes (False: it changed since *seen*)."""
        return self._runtime.run(self._amgr.record_hash(local_name, hash, seen=seen))

    def set_max_bandwidth(self, bytes_per_second: float | None) -> None:
        """The cap of background jobs together (bytes/s; None removes it), live."""
        self._runtime.run(self._amgr.set_max_bandwidth(bytes_per_second))

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call *listener(event)* on the loop thread for each job event; returns unsubscribe."""
        return self._runtime.call(self._amgr.subscribe, listener)

    def close(self) -> None:
        """Stop transfers (data stays for next time), release the store and the loop thread."""
        if not self._runtime.running:
            return
        try:
            if not self._runtime.in_loop_thread:
                self._runtime.run(self._amgr.aclose(), timeout=30)
        finally:
            self._runtime.stop()
            closed(self)

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{control_of(self._amgr).count()} jobs"
        return f"<bitsnb.Manager {str(self.store_path)!r} {state}>"

    def panel(self, *, jobs: Iterable[Job] | None = None, since: Any = None) -> Any:
        """A live ipywidgets panel of the queue (see ``bitsnb.notebook``); *jobs* or *since* (a
        datetime) narrow it to a run's own jobs."""
        return views.queue_panel(self, jobs=jobs, since=since)


class Job:
    """A BITS job, blocking API: properties read instantly, methods wait for the manager."""

    def __init__(self, manager: Manager, ajob: AsyncJob, bridge: Bridge) -> None:
        self._mgr = manager
        self._ajob = ajob
        self._ctl = control_of(manager.async_manager)
        self._bridge = bridge

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return self._bridge.run(coro, timeout)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a queue operation that never waits (add files, resume...) on the loop."""
        return self._bridge.call(fn, record_of(self._ajob), *args)

    @property
    def async_job(self) -> AsyncJob:
        """The ``AsyncJob`` behind this handle."""
        return self._ajob

    @property
    def manager(self) -> Manager:
        """The manager this job came from."""
        return self._mgr

    # reading
    @property
    def id(self) -> uuid.UUID:
        """The job's GUID."""
        return self._ajob.id

    @property
    def type(self) -> JobType:
        """DOWNLOAD, UPLOAD or UPLOAD_REPLY."""
        return self._ajob.type

    @property
    def state(self) -> JobState:
        """The current state."""
        return self._ajob.state

    @property
    def owner(self) -> str:
        """The OS user who owns the job."""
        return self._ajob.owner

    @property
    def progress(self) -> JobProgress:
        """Bytes and files, total and transferred."""
        return self._ajob.progress

    @property
    def times(self) -> JobTimes:
        """Creation, modification and transfer-completion times (UTC)."""
        return self._ajob.times

    @property
    def error(self) -> ErrorInfo | None:
        """The last error while in ERROR or TRANSIENT_ERROR."""
        return self._ajob.error

    def get_error(self) -> ErrorInfo:
        """GetError (BG_E_ERROR_INFORMATION_UNAVAILABLE outside the error states)."""
        return self._ajob.get_error()

    @property
    def error_count(self) -> int:
        """Failed attempts so far."""
        return self._ajob.error_count

    @property
    def allowed_calls(self) -> frozenset[str]:
        """Which of suspend/resume/cancel/complete are valid now."""
        return self._ajob.allowed_calls

    def enum_files(self) -> Enumerator[FileInfo]:
        """EnumFiles: a snapshot of the files."""
        return self._ajob.enum_files()

    @property
    def files(self) -> list[FileInfo]:
        """The files as a list."""
        return self._ajob.files

    @property
    def custom_headers(self) -> str | None:
        """Extra request headers (secret values hidden)."""
        return self._ajob.custom_headers

    @property
    def notify_cmd_line(self) -> tuple[str, str] | None:
        """(program, parameters) or None."""
        return self._ajob.notify_cmd_line

    @property
    def proxy_settings(self) -> tuple[ProxyUsage, str | None, str | None]:
        """(usage, proxy list, bypass list)."""
        return self._ajob.proxy_settings

    # read/write properties
    @property
    def display_name(self) -> str:
        """The name shown in lists and panels."""
        return self._ajob.display_name

    @display_name.setter
    def display_name(self, value: str) -> None:
        self._run(self._ajob.set_display_name(value))

    @property
    def description(self) -> str:
        """Free text (≤1,024 characters)."""
        return self._ajob.description

    @description.setter
    def description(self, value: str) -> None:
        self._run(self._ajob.set_description(value))

    @property
    def priority(self) -> JobPriority:
        """FOREGROUND, HIGH, NORMAL or LOW."""
        return self._ajob.priority

    @priority.setter
    def priority(self, value: JobPriority | int) -> None:
        self._run(self._ajob.set_priority(value))

    @property
    def max_bandwidth(self) -> float | None:
        """This job's own cap in bytes/s (None: none)."""
        return self._ajob.max_bandwidth

    @max_bandwidth.setter
    def max_bandwidth(self, value: float | None) -> None:
        self._run(self._ajob.set_max_bandwidth(value))

    @property
    def bandwidth(self) -> BandwidthStatus:
        """What limits the transfer now: throttled, yielding or blocked by policy; cap; rate."""
        return self._ajob.bandwidth

    def set_max_bandwidth(self, bytes_per_second: float | None) -> None:
        """Cap this job (bytes/s; None removes the cap)."""
        self._run(self._ajob.set_max_bandwidth(bytes_per_second))

    @property
    def minimum_retry_delay(self) -> float:
        """Seconds before a transient error is retried."""
        return self._ajob.minimum_retry_delay

    @minimum_retry_delay.setter
    def minimum_retry_delay(self, value: float) -> None:
        self._run(self._ajob.set_minimum_retry_delay(value))

    @property
    def no_progress_timeout(self) -> float:
        """Seconds of retries without progress before ERROR."""
        return self._ajob.no_progress_timeout

    @no_progress_timeout.setter
    def no_progress_timeout(self, value: float) -> None:
        self._run(self._ajob.set_no_progress_timeout(value))

    @property
    def maximum_download_time(self) -> float:
        """Seconds of active transfer allowed."""
        return self._ajob.maximum_download_time

    @maximum_download_time.setter
    def maximum_download_time(self, value: float) -> None:
        self._run(self._ajob.set_maximum_download_time(value))

    @property
    def notify_flags(self) -> NotifyFlags:
        """Which events are delivered."""
        return self._ajob.notify_flags

    @notify_flags.setter
    def notify_flags(self, value: NotifyFlags | int) -> None:
        self._run(self._ajob.set_notify_flags(value))

    @property
    def dynamic_content(self) -> bool:
        """Accept servers without sizes or ranges."""
        return self._ajob.dynamic_content

    @dynamic_content.setter
    def dynamic_content(self, value: bool) -> None:
        self._run(self._ajob.set_dynamic_content(value))

    @property
    def high_performance(self) -> bool:
        """Write straight into the destination files."""
        return self._ajob.high_performance

    @high_performance.setter
    def high_performance(self, value: bool) -> None:
        self._run(self._ajob.set_high_performance(value))

    # methods
    def add_file(
        self,
        remote_url: str,
        local_name: str | os.PathLike[str],
        *,
        known_hash: str | None = None,
    ) -> None:
        """AddFile: remote URL → absolute local path; *known_hash* ("alg:hex") is checked."""
        self._call(self._ctl.add_files, [(remote_url, local_name, known_hash)])

    def add_file_set(
        self,
        files: Iterable[
            tuple[str, str | os.PathLike[str]] | tuple[str, str | os.PathLike[str], str | None]
        ],
    ) -> None:
        """AddFileSet: several (url, path[, known_hash]) entries, all or none."""
        self._call(self._ctl.add_files, list(files))

    def add_file_with_ranges(
        self,
        remote_url: str,
        local_name: str | os.PathLike[str],
        ranges: Sequence[tuple[int, int | None]],
    ) -> None:
        """AddFileWithRanges: only these (offset, length) ranges, back to back."""
        self._run(self._ajob.add_file_with_ranges(remote_url, local_name, ranges))

    def resume(self) -> None:
        """Resume: queue the job."""
        self._call(self._ctl.resume)

    def suspend(self) -> None:
        """Suspend: stop; data on disk is kept."""
        self._run(self._ajob.suspend())

    def cancel(self) -> int:
        """Cancel: delete temporary files, end the job."""
        return int(self._run(self._ajob.cancel()))

    def complete(self) -> int:
        """Complete: move transferred files into place (S_OK or BG_S_PARTIAL_COMPLETE)."""
        done = self._call(self._ctl.complete_now)
        if done is None and self._ajob.state is JobState.TRANSFERRED:  # its run is ending
            self._run(self._ctl.settle(record_of(self._ajob)))
            done = self._call(self._ctl.complete_now)
        if done is None:  # transferring (it is stopped first) or an upload: the full call
            return int(self._run(self._ajob.complete()))
        return int(done.finish())  # the folders are synced here, in the calling thread

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until TRANSFERRED, ERROR, CANCELLED or ACKNOWLEDGED (TimeoutError after *timeout*)."""
        state = self._ajob.state
        if state in WAIT_DONE:
            return state  # already there: no trip through the loop
        return JobState(self._run(self._ajob.wait(timeout)))

    async def wait_async(self, timeout: float | None = None) -> JobState:
        """``await job.wait_async()`` from any running loop (a notebook cell, say)."""
        fut = self._bridge.submit(self._ajob.wait(timeout))
        return await asyncio.wrap_future(fut)

    def set_priority(self, priority: JobPriority | int) -> None:
        """SetPriority."""
        self._run(self._ajob.set_priority(priority))

    def set_notify_interface(self, target: Any) -> None:
        """An object with job_transferred/job_error/job_modification/file_transferred methods;
        they run in a worker thread and receive this ``Job``, so they may call its methods."""
        wrapped = None if target is None else SyncNotify(self._bridge.wrap, target)
        self._run(self._ajob.set_notify_interface(wrapped))

    def set_notify_cmd_line(self, program: str | None, parameters: str | None = None) -> None:
        """SetNotifyCmdLine."""
        self._run(self._ajob.set_notify_cmd_line(program, parameters))

    def set_proxy_settings(
        self, usage: ProxyUsage | int, proxy_list: str | None = None, bypass_list: str | None = None
    ) -> None:
        """SetProxySettings."""
        self._run(self._ajob.set_proxy_settings(usage, proxy_list, bypass_list))

    def set_custom_headers(self, headers: str | dict[str, str] | None) -> None:
        """SetCustomHeaders."""
        self._run(self._ajob.set_custom_headers(headers))

    def set_credentials(
        self,
        target: AuthTarget | int,
        scheme: AuthScheme | int,
        user_name: str | None,
        password: str | None,
    ) -> None:
        """SetCredentials (memory only)."""
        self._run(self._ajob.set_credentials(target, scheme, user_name, password))

    def remove_credentials(self, target: AuthTarget | int, scheme: AuthScheme | int) -> bool:
        """RemoveCredentials."""
        return bool(self._run(self._ajob.remove_credentials(target, scheme)))

    def set_remote_name(self, file: int | FileInfo, remote_url: str) -> None:
        """SetRemoteName on one file."""
        self._run(self._ajob.set_remote_name(file, remote_url))

    def set_validation_state(self, file: int | FileInfo, valid: bool) -> None:
        """SetValidationState (File3): False puts the job in ERROR, the file back to 0."""
        self._run(self._ajob.set_validation_state(file, valid))

    def replace_remote_prefix(self, old_prefix: str, new_prefix: str) -> bool:
        """ReplaceRemotePrefix."""
        return bool(self._run(self._ajob.replace_remote_prefix(old_prefix, new_prefix)))

    def take_ownership(self) -> None:
        """TakeOwnership (root only)."""
        self._run(self._ajob.take_ownership())

    def set_reply_file_name(self, path: str | os.PathLike[str]) -> None:
        """SetReplyFileName (upload-reply jobs, before the reply starts)."""
        self._run(self._ajob.set_reply_file_name(path))

    @property
    def upload_fragment_size(self) -> int:
        """Bytes per upload Fragment packet."""
        return self._ajob.upload_fragment_size

    @upload_fragment_size.setter
    def upload_fragment_size(self, size: int) -> None:
        self._run(self._ajob.set_upload_fragment_size(size))

    @property
    def reply_file_name(self) -> str | None:
        """Where an upload-reply job puts the reply."""
        return self._ajob.reply_file_name

    @property
    def reply_progress(self) -> tuple[int | None, int]:
        """GetReplyProgress: (total or None, transferred)."""
        return self._ajob.reply_progress

    def get_reply_data(self) -> bytes:
        """GetReplyData: the reply in memory (≤1 MB)."""
        return self._ajob.get_reply_data()

    def __getattr__(self, name: str) -> Any:
        # the Windows-only BITS calls (set_peer_caching_flags, ...) raise E_NOTIMPL
        if name in WINDOWS_ONLY:
            call = getattr(self._ajob, name)
            return lambda *args: self._run(call(*args))
        raise AttributeError(name)

    # notebook hooks (implemented in bitsnb.notebook / bitsnb.frames)
    def files_frame(self) -> Any:
        """One row per file: a pandas DataFrame (needs pandas)."""
        return views.files_frame(self)

    def panel(self, *, compact: bool | None = None) -> Any:
        """A live ipywidgets panel of this job (see ``bitsnb.notebook``); *compact*: one line."""
        return views.job_panel(self, compact=compact)

    @property
    def paths(self) -> list[Path]:
        """The files' local names (where they appear once the job is complete)."""
        return self._ajob.paths

    def _ipython_display_(self) -> None:
        """In a notebook, displaying a job shows its live panel."""
        views.display_job(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        p = self.progress
        size = format_bytes(p.bytes_total if p.bytes_total is not None else p.bytes_transferred)
        return (
            f"<bitsnb.Job {self.display_name!r} {self.id.hex[:8]} {self.state.name} "
            f"{p.files_transferred}/{p.files_total} files {size}>"
        )

    __str__ = __repr__
