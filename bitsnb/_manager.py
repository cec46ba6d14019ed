"""The async core: ``AsyncManager`` (IBackgroundCopyManager) and ``AsyncJob`` (IBackgroundCopyJob).

Everything here runs on one event loop: the store, the scheduler and the transfers. The sync
``Manager`` in ``_sync.py`` runs an ``AsyncManager`` on a loop thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import inspect
import logging
import os
import secrets
import shlex
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import _codes
from ._engine import Engine, FileContext, TransferFailure, YieldSlice
from ._enumerator import Enumerator
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
from ._errors import BitsError, InvalidStateError, JobNotFoundError, get_error_description
from ._models import ErrorInfo, FileInfo, FileProgress, FileRange, Policy
from ._records import ErrorRecord, FileRecord, JobRecord
from ._states import Event, allowed, transition
from ._store import Store, lease_name
from ._upload import UploadContext, Uploader
from ._validate import (
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    check_local_name,
    check_source_file,
    check_string,
    check_url,
    parse_headers,
)

__all__ = ["AsyncJob", "AsyncManager", "JobEvent", "default_store_path"]

log = logging.getLogger("bitsnb")

_WAIT_DONE = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.CANCELLED, JobState.ACKNOWLEDGED}
)
_RUNNING = frozenset({JobState.CONNECTING, JobState.TRANSFERRING})
_STARTABLE = frozenset({JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING})
_E_FAIL = 0x80004005


def default_store_path() -> Path:
    """``$BITSNB_HOME/jobs.db``, else ``jobs.db`` in the user data folder."""
    home = os.environ.get("BITSNB_HOME")
    if home:
        return Path(home).expanduser() / "jobs.db"
    import platformdirs

    return Path(platformdirs.user_data_dir("bitsnb", appauthor=False)) / "jobs.db"


@dataclass(frozen=True)
class JobEvent:
    """Something happened to a job: ``kind`` is created, state, progress, modified or removed."""

    job_id: uuid.UUID
    kind: str
    state: JobState


class _ManagerState(enum.Enum):
    UNOPENED = 1  # constructed; start() not called yet
    OPEN = 2  # store open, scheduler running
    CLOSED = 3  # aclose() called; cannot reopen


@dataclass
class _Secrets:
    """What a job never writes to the store: credentials and secret headers."""

    credentials: dict[tuple[AuthTarget, AuthScheme], tuple[str | None, str | None]]
    headers: dict[str, str]


NotifyTarget = Any


class AsyncManager:
    """The BITS manager on an asyncio loop: create, enumerate and look up jobs.

    Use ``async with AsyncManager(store=...) as mgr:``. Jobs that were active when the store
    was last used continue by themselves.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | None = None,
        *,
        policy: Policy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store_path = Path(store) if store is not None else default_store_path()
        self.policy = policy or Policy()
        self._transport = transport
        self._state = _ManagerState.UNOPENED
        self._store: Store | None = None
        self._engine: Engine | None = None
        self._uploader: Uploader | None = None
        self._jobs: dict[uuid.UUID, JobRecord] = {}
        self._handles: dict[uuid.UUID, AsyncJob] = {}
        self._runs: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._run_started: dict[uuid.UUID, float] = {}
        self._queues: list[deque[uuid.UUID]] = [deque() for _ in JobPriority]
        self._queued: dict[uuid.UUID, JobPriority] = {}  # queued job -> priority it was queued at
        self._waiting = [0] * len(JobPriority)
        self._foreign: set[uuid.UUID] = set()
        self._timers: dict[uuid.UUID, asyncio.TimerHandle] = {}
        self._waiters: dict[uuid.UUID, list[asyncio.Future[None]]] = {}
        self._listeners: list[Callable[[JobEvent], None]] = []
        self._notify: dict[uuid.UUID, NotifyTarget] = {}
        self._secrets: dict[uuid.UUID, _Secrets] = {}
        self._last_progress_event: dict[uuid.UUID, float] = {}
        self._last_modification_notify: dict[uuid.UUID, float] = {}
        self._housekeeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._folders: _FolderSync | None = None
        self._new: deque[AsyncJob] = deque()  # stored by another thread, not yet adopted
        self._closing = False

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> AsyncManager:
        """Open the store, load the queue and start transferring."""
        if self._state is _ManagerState.CLOSED:
            raise RuntimeError("Cannot reopen a manager once it has been closed.")
        if self._state is _ManagerState.OPEN:
            return self
        self._loop = asyncio.get_running_loop()
        self._folders = _FolderSync(self._loop)
        self._store = Store(self.store_path, lease_name(), self.policy.store_busy_timeout)
        self._engine = Engine(self.policy, self._transport)
        self._uploader = Uploader(self._engine)
        self._state = _ManagerState.OPEN
        self._since_ns = time.time_ns()
        for rec in self._store.load_jobs():
            self._jobs[rec.id] = rec
            self._adopt_active(rec)
        self._pump()
        self._housekeeper = asyncio.create_task(self._housekeep(), name="bitsnb-housekeeping")
        return self

    async def __aenter__(self) -> AsyncManager:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop transfers (their data stays for the next manager), release leases, close."""
        if self._state is not _ManagerState.OPEN or self._closing:
            self._state = _ManagerState.CLOSED
            return
        self._closing = True  # the store stays usable while running jobs are put back
        self._adopt_waiting()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        for job_id in list(self._runs):
            await self._stop_run(job_id)
            rec = self._jobs.get(job_id)
            if rec is not None and rec.state in _RUNNING:
                rec.state = JobState.QUEUED
                self._save(rec, rec.files)
        for timer in self._timers.values():
            timer.cancel()
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        assert self._store is not None and self._engine is not None
        with contextlib.suppress(BitsError):  # a store locked by another process: leases expire
            self._store.release()
        self._store.close()
        self._state = _ManagerState.CLOSED
        await self._engine.aclose()

    def _open(self) -> Store:
        if self._state is not _ManagerState.OPEN or self._store is None:
            if self._state is _ManagerState.CLOSED:
                raise RuntimeError("The manager is closed.")
            raise RuntimeError("The manager is not started: use 'async with AsyncManager()'.")
        return self._store

    # -- IBackgroundCopyManager -------------------------------------------------------------
    async def create_job(
        self,
        display_name: str,
        type: JobType = JobType.DOWNLOAD,
        *,
        priority: JobPriority = JobPriority.NORMAL,
        description: str = "",
    ) -> AsyncJob:
        """CreateJob: a new, empty job in SUSPENDED."""
        return self._create_job(display_name, type, priority, description)

    # The calls that never wait are plain functions underneath (``_create_job``,
    # ``_get_job``, ``_enum_jobs``, ``_add_files``, ``_resume``, ``_update``): the blocking
    # facade runs them with one trip through the loop (``LoopThread.call``), no task.
    def _create_job(
        self, display_name: str, type: JobType, priority: JobPriority, description: str
    ) -> AsyncJob:
        return self._adopt_new(self._insert_new(display_name, type, priority, description))

    def _insert_new(
        self, display_name: str, type: JobType, priority: JobPriority, description: str
    ) -> AsyncJob:
        """CreateJob's checks and its store insert, touching nothing else: safe from any thread
        (the store serialises its users). The blocking API runs it in the calling thread and
        hands the job to ``_post_new``; the loop adopts it before its next look at the queue."""
        store = self._open()
        if not isinstance(display_name, str):
            raise BitsError(_codes.E_INVALIDARG, "the display name must be a string")
        check_string(display_name, "display name", MAX_DISPLAY_NAME)
        check_string(description, "description", MAX_DESCRIPTION)
        try:
            job_type = JobType(type)
        except ValueError:
            raise BitsError(_codes.E_INVALIDARG, f"unknown job type {type!r}") from None
        prio = self._check_priority(priority)
        p = self.policy
        owner = p.owner
        rec = JobRecord(
            id=uuid.uuid4(), display_name=display_name, type=job_type, owner=owner, priority=prio
        )
        rec.settings.description = description
        with store.lock:  # the limits' counts and the insert: one step within this process
            if p.max_jobs_per_machine is not None and store.count_jobs() >= p.max_jobs_per_machine:
                raise BitsError(
                    _codes.BG_E_TOO_MANY_JOBS_PER_MACHINE,
                    f"the queue already holds {p.max_jobs_per_machine} jobs",
                )
            if p.max_jobs_per_user is not None and store.count_jobs(owner) >= p.max_jobs_per_user:
                raise BitsError(
                    _codes.BG_E_TOO_MANY_JOBS_PER_USER,
                    f"{owner} already has {p.max_jobs_per_user} jobs",
                )
            store.insert_job(rec)
        return AsyncJob(self, rec)

    def _post_new(self, job: AsyncJob) -> None:
        """From any thread: a job ``_insert_new`` stored, for the loop to adopt.

        Nothing wakes the loop: a SUSPENDED job without files needs no scheduling, and every
        look at the queue (``_live``, get/enum, housekeeping) adopts what is waiting first, so
        a call made after create_job() returned sees the job, and listeners hear "created"
        before anything else about it.
        """
        self._new.append(job)

    def _adopt_waiting(self) -> None:
        while self._new:
            self._adopt_new(self._new.popleft())

    def _adopt_new(self, job: AsyncJob) -> AsyncJob:
        """On the loop: a newly stored job joins the queue, and its listeners hear."""
        rec = job._rec
        self._jobs.setdefault(rec.id, rec)
        self._handles.setdefault(rec.id, job)
        self._emit(rec, "created")
        return job

    async def get_job(self, job_id: uuid.UUID | str) -> AsyncJob:
        """GetJob: the job with that id (BG_E_NOT_FOUND if unknown or finished)."""
        return self._get_job(job_id)

    def _get_job(self, job_id: uuid.UUID | str) -> AsyncJob:
        self._open()
        self._adopt_waiting()
        try:
            key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        except ValueError:
            raise JobNotFoundError(f"{job_id!r} is not a job id") from None
        rec = self._jobs.get(key)
        if rec is None:
            rec = self._reload(key)
        if rec is None or rec.state.is_final:
            raise JobNotFoundError(f"no job {key} in the queue")
        if not self._may_see(rec):
            raise BitsError(_codes.E_ACCESSDENIED, f"job {key} belongs to another user")
        return self._handle(rec)

    async def enum_jobs(
        self, all_users: bool = False, *, include_finished: bool = False
    ) -> Enumerator[AsyncJob]:
        """EnumJobs: a snapshot of the caller's jobs (or everybody's, for root)."""
        return self._enum_jobs(all_users, include_finished)

    def _enum_jobs(self, all_users: bool, include_finished: bool) -> Enumerator[AsyncJob]:
        store = self._open()
        self._adopt_waiting()
        if all_users and not _is_admin():
            raise BitsError(_codes.E_ACCESSDENIED, "only root may list every user's jobs")
        recs: Iterable[JobRecord]
        if include_finished:
            recs = [self._jobs.get(r.id, r) for r in store.load_jobs(include_finished=True)]
        else:
            recs = sorted(self._jobs.values(), key=lambda r: r.seq)
        owner = self.policy.owner
        return Enumerator(
            [self._handle(r) for r in recs if all_users or r.owner == owner],
        )

    async def get_error_description(self, code: int, language: str | int | None = "en") -> str:
        """GetErrorDescription: the sentence for an HRESULT."""
        return get_error_description(code, language)

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call *listener* (on the manager's loop) for every job event; returns an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    # -- helpers for jobs ---------------------------------------------------------------------
    def _handle(self, rec: JobRecord) -> AsyncJob:
        handle = self._handles.get(rec.id)
        if handle is None or handle._rec is not rec:
            handle = self._handles[rec.id] = AsyncJob(self, rec)
        return handle

    def _may_see(self, rec: JobRecord) -> bool:
        return rec.owner == self.policy.owner or _is_admin()

    def _check_priority(self, priority: object) -> JobPriority:
        try:
            return JobPriority(priority)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            raise BitsError(
                _codes.E_NOTIMPL, f"priority {priority!r} is not a BITS priority"
            ) from None

    def _reload(self, job_id: uuid.UUID) -> JobRecord | None:
        rec = self._open().load_job(job_id)
        if rec is not None and not rec.state.is_final:
            self._jobs[rec.id] = rec
            self._adopt_active(rec)
        return rec

    def _refresh(self, rec: JobRecord) -> JobRecord:
        """Bring a record up to date with the store before an application call changes it."""
        if rec.id in self._runs:
            return rec  # we are transferring it: ours is the newest
        store = self._open()
        version = store.version_of(rec.id)
        if version == rec.version:
            return rec
        fresh = store.load_job(rec.id) if version is not None else None
        if fresh is None:
            raise JobNotFoundError(f"job {rec.id} is no longer in the store")
        self._adopt(rec, fresh)
        return rec

    def _live(self, job: AsyncJob) -> JobRecord:
        """The record behind *job*, checked to be current and not final."""
        self._open()
        self._adopt_waiting()
        rec = self._refresh(job._rec)
        if rec.state.is_final:
            raise InvalidStateError(f"the job is {rec.state.name}; it can no longer change")
        if not self._may_see(rec):
            raise BitsError(_codes.E_ACCESSDENIED, "the job belongs to another user")
        return rec

    def _save(
        self, rec: JobRecord, files: Iterable[FileRecord] = (), *, release: bool = False
    ) -> bool:
        store = self._open()
        files = list(files)
        for _ in range(5):
            if store.save_job(rec, files, release=release):
                return True
            fresh = store.load_job(rec.id)
            if fresh is None:
                return False
            if rec.id not in self._runs:
                # not ours to run: the store's version wins and this change is dropped
                self._adopt(rec, fresh)
                return False
            self._merge_foreign(rec, fresh)
        return False

    def _merge_foreign(self, rec: JobRecord, fresh: JobRecord) -> None:
        """Another process changed *rec*: take its control fields, keep our transfer progress."""
        rec.version = fresh.version
        rec.display_name = fresh.display_name
        rec.priority = fresh.priority
        rec.owner = fresh.owner
        rec.settings = fresh.settings
        if fresh.state in (JobState.SUSPENDED, JobState.CANCELLED, JobState.ACKNOWLEDGED):
            rec.state = fresh.state
            if rec.id in self._runs:
                self._spawn(self._stop_run(rec.id))

    def _emit(self, rec: JobRecord, kind: str) -> None:
        event = JobEvent(rec.id, kind, rec.state)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener must not break the queue
                log.exception("bitsnb listener failed")
        if kind == "state":
            for fut in self._waiters.pop(rec.id, []):
                if not fut.done():
                    fut.set_result(None)
        if kind in ("state", "modified", "created", "progress"):
            self._notify_modification(rec)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _release_if_held(self, rec: JobRecord) -> None:
        """Give up the lease if the state change did not (its save lost to another writer)."""
        store = self._open()
        if store.holds(rec.id):
            store.release(rec.id)

    def _set_state(self, rec: JobRecord, event: Event, files: Iterable[FileRecord] = ()) -> None:
        rec.state = transition(rec.state, event, rec.type)
        rec.touch()
        # a job that leaves the running states gives up its lease in the same commit
        self._save(rec, files, release=rec.state not in _STARTABLE)
        self._emit(rec, "state")

    # -- scheduling ---------------------------------------------------------------------------
    def _adopt_active(self, rec: JobRecord) -> None:
        """A job loaded from the store: queue it, or arm its retry timer."""
        if rec.state in (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING):
            self._enqueue(rec)
        elif rec.state is JobState.TRANSIENT_ERROR:
            self._arm_retry(rec, (rec.retry_at or time.time()) - time.time())

    def _enqueue(self, rec: JobRecord) -> None:
        if rec.id in self._queued or rec.id in self._runs:
            return
        self._queued[rec.id] = rec.priority
        self._waiting[rec.priority] += 1
        self._queues[rec.priority].append(rec.id)

    def _requeue_if_moved(self, rec: JobRecord) -> None:
        """A queued job whose priority changed moves to its new queue's tail."""
        queued_at = self._queued.get(rec.id)
        if queued_at is not None and queued_at != rec.priority:
            self._dequeue(rec)
            self._enqueue(rec)
            self._pump()

    def _dequeue(self, rec: JobRecord) -> None:
        prio = self._queued.pop(rec.id, None)
        if prio is not None:
            self._waiting[prio] -= 1

    def _pump(self) -> None:
        """Start queued jobs, highest priority first, while slots are free."""
        if self._state is not _ManagerState.OPEN or self._store is None or self._closing:
            return
        for prio, queue in enumerate(self._queues):
            while queue and len(self._runs) < self.policy.max_active_jobs:
                job_id = queue.popleft()
                if self._queued.get(job_id) != prio:
                    continue  # stale entry (suspended, cancelled, re-prioritised)
                del self._queued[job_id]
                self._waiting[prio] -= 1
                rec = self._jobs.get(job_id)
                if rec is None or not rec.state.is_active or rec.state is JobState.TRANSIENT_ERROR:
                    continue
                if self._start(rec):  # the usual case: the start and the lease in one write
                    self._foreign.discard(job_id)
                    self._run_started[job_id] = time.monotonic()
                    self._runs[job_id] = asyncio.create_task(
                        self._run(rec, started=True), name=f"bitsnb-{job_id}"
                    )
                    continue
                version = self._store.claim(job_id, self.policy.lease_seconds)
                if version is None:
                    self._foreign.add(job_id)
                    continue
                self._foreign.discard(job_id)
                # another process may have moved it on: the claim says the row's version
                fresh = rec if version == rec.version else self._store.load_job(job_id)
                if fresh is not None and fresh is not rec:
                    _copy_record(rec, fresh)
                now_state: JobState = rec.state  # _copy_record may have changed it
                if fresh is None or now_state not in _STARTABLE:
                    self._store.release(job_id)
                    if now_state is JobState.TRANSIENT_ERROR and rec.id not in self._timers:
                        self._arm_retry(rec, (rec.retry_at or time.time()) - time.time())
                    continue
                self._run_started[job_id] = time.monotonic()
                self._runs[job_id] = asyncio.create_task(self._run(rec), name=f"bitsnb-{job_id}")

    def _start(self, rec: JobRecord) -> bool:
        """Move a queued job to CONNECTING and take its lease in one store write; False (and
        *rec* as it was) when the row changed elsewhere or another process holds the lease."""
        assert self._store is not None
        state, modified = rec.state, rec.modified
        if rec.state in _RUNNING:
            rec.state = JobState.QUEUED  # taken over from a process that stopped mid-transfer
        if not allowed(rec.state, Event.START, rec.type):
            rec.state = state
            return False
        rec.state = transition(rec.state, Event.START, rec.type)
        rec.touch()
        if not self._store.start(rec, self.policy.lease_seconds):
            rec.state, rec.modified = state, modified
            return False
        self._emit(rec, "state")
        return True

    def _should_yield(self, rec: JobRecord) -> bool:
        waiting = self._waiting
        if any(waiting[p] for p in range(rec.priority)):
            return True  # pre-empted by a higher priority
        if waiting[rec.priority]:
            started = self._run_started.get(rec.id, time.monotonic())
            return time.monotonic() - started >= self.policy.time_slice
        return False

    async def _stop_run(self, job_id: uuid.UUID) -> None:
        task = self._runs.get(job_id)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _file_context(self, rec: JobRecord) -> FileContext:
        s = rec.settings
        secrets_ = self._secrets.get(rec.id)
        headers = parse_headers(s.custom_headers)
        auth: httpx.Auth | None = None
        proxy_auth: tuple[str | None, str | None] | None = None
        if secrets_ is not None:
            headers.update(secrets_.headers)
            for (target, scheme), (user, password) in secrets_.credentials.items():
                if target is AuthTarget.SERVER and scheme is AuthScheme.BASIC:
                    auth = httpx.BasicAuth(user or "", password or "")
                elif target is AuthTarget.SERVER and scheme is AuthScheme.DIGEST:
                    auth = httpx.DigestAuth(user or "", password or "")
                elif target is AuthTarget.PROXY:
                    proxy_auth = (user, password)
        if s.proxy_usage != ProxyUsage.OVERRIDE:
            # Proxy-Authorization is for a proxy: never hand it to an origin server
            for name in [h for h in headers if h.lower() == "proxy-authorization"]:
                del headers[name]
        proxy: str | None = None
        trust_env = True
        if s.proxy_usage == ProxyUsage.NO_PROXY:
            trust_env = False
        elif s.proxy_usage == ProxyUsage.OVERRIDE and s.proxy_list:
            trust_env = False
            proxy = _proxy_url(s.proxy_list.split()[0], proxy_auth)
            if s.proxy_bypass_list and rec.files and _bypassed(rec, s.proxy_bypass_list):
                proxy = None
        progress_every = 0.1

        def on_progress(f: FileRecord) -> None:
            if rec.first_failure_at is not None:
                rec.first_failure_at = None  # progress resets the no-progress timer
            now = time.monotonic()
            if now - self._last_progress_event.get(rec.id, 0.0) >= progress_every:
                self._last_progress_event[rec.id] = now
                self._emit(rec, "progress")

        def on_connected() -> None:
            if rec.state is JobState.CONNECTING:
                rec.error = None  # BITS keeps the error until the job transfers again
                # not saved on its own: the next checkpoint or file end records it, and a
                # crash re-queues CONNECTING and TRANSFERRING jobs alike
                rec.state = transition(rec.state, Event.CONNECTED, rec.type)
                self._emit(rec, "state")

        def on_checkpoint(f: FileRecord, durable: int) -> None:
            rec.touch()
            self._save(rec, [dataclasses.replace(f, bytes_transferred=durable)])

        def on_validators(f: FileRecord) -> None:
            if f.bytes_total is None or f.bytes_total > 4 * 1024 * 1024:
                self._save(rec, [f])  # so a crash before the first checkpoint can still resume

        def on_restart(f: FileRecord) -> None:
            self._save(rec, [f])
            self._emit(rec, "progress")

        return FileContext(
            headers=headers,
            auth=auth,
            proxy=proxy,
            trust_env=trust_env,
            dynamic_content=s.dynamic_content,
            on_connected=on_connected,
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
            on_restart=on_restart,
            on_validators=on_validators,
            should_yield=lambda: self._should_yield(rec),
        )

    async def _run(self, rec: JobRecord, *, started: bool = False) -> None:
        """Transfer a job's files until done, failed, pre-empted or stopped (*started*: the
        scheduler already moved it to CONNECTING)."""
        began = time.monotonic()
        try:
            if not started:
                if rec.state in _RUNNING:
                    rec.state = JobState.QUEUED  # taken over from a process stopped mid-transfer
                self._set_state(rec, Event.START)
            ctx = self._file_context(rec)
            remaining = rec.settings.maximum_download_time - rec.active_seconds
            async with asyncio.timeout(max(0.0, remaining)):
                if rec.type is JobType.DOWNLOAD:
                    await self._transfer_files(rec, ctx)
                else:
                    await self._transfer_upload(rec, ctx)
            if rec.state is not JobState.TRANSFERRED:  # (downloads: the last file did it)
                self._end_transfer(rec)
        except YieldSlice:
            self._set_state(rec, Event.SLICE_END)  # re-queued at the tail in finally
        except TimeoutError:
            if rec.state is JobState.TRANSFERRED:
                return  # the time ran out just after the last file ended the transfer
            self._fail(
                rec,
                TransferFailure(
                    _codes.BG_E_MAXDOWNLOAD_TIMEOUT,
                    ErrorContext.GENERAL_QUEUE_MANAGER,
                    transient=False,
                    message="the job exceeded its maximum download time",
                    protocol=None,
                ),
                None,
            )
        except TransferFailure as failure:
            self._fail(rec, failure, failure.file)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not kill the queue: the job says what happened
            log.exception("bitsnb transfer failed unexpectedly")
            self._fail(
                rec,
                TransferFailure(
                    _E_FAIL,
                    ErrorContext.GENERAL_QUEUE_MANAGER,
                    transient=False,
                    message=f"unexpected {type(exc).__name__}: {exc}",
                    protocol=None,
                ),
                None,
            )
        finally:
            rec.active_seconds += time.monotonic() - began
            self._runs.pop(rec.id, None)
            self._run_started.pop(rec.id, None)
            if self._store is not None and self._state is _ManagerState.OPEN:
                if rec.state is JobState.QUEUED and not self._closing:
                    self._enqueue(rec)  # pre-empted or its slice ended: back of its queue
                elif rec.state not in _STARTABLE and self._store.holds(rec.id):
                    self._store.release(rec.id)  # stopped from outside (another process)
                self._loop_call(self._pump)

    def _end_transfer(self, rec: JobRecord, last: FileRecord | None = None) -> None:
        """Every file is durable: TRANSFERRED. With *last* (the file that just ended), its row,
        the state and the lease's end are one commit, and its notification comes first."""
        rec.transfer_completed = time.time()
        rec.first_failure_at = None
        rec.retry_at = None
        rec.state = transition(rec.state, Event.ALL_TRANSFERRED, rec.type)
        rec.touch()
        self._save(rec, [last] if last is not None else (), release=True)
        if last is not None:
            self._notify_file(rec, last)
        self._emit(rec, "state")
        self._notify_final(rec)

    def _upload_context(self, rec: JobRecord, ctx: FileContext) -> UploadContext:
        f = rec.files[0]
        return UploadContext(
            ctx,
            rec.settings,
            save=lambda: self._save(rec, [f]),
        )

    async def _transfer_upload(self, rec: JobRecord, ctx: FileContext) -> None:
        """Upload the job's one file, fetch the reply (upload-reply), close the session."""
        assert self._uploader is not None and self._engine is not None
        f = rec.files[0]
        uctx = self._upload_context(rec, ctx)
        try:
            async with self._uploader.session(uctx):
                await self._upload_session(rec, f, uctx, ctx)
        except TransferFailure as failure:
            failure.file = f
            self._save_quietly(rec, f)
            raise

    async def _upload_session(
        self, rec: JobRecord, f: FileRecord, uctx: UploadContext, ctx: FileContext
    ) -> None:
        """The session's packets, on the session's own connection."""
        assert self._uploader is not None
        s = rec.settings
        if not f.transferred:
            await self._uploader.upload(f, uctx)
            f.transferred = True
            rec.touch()
            self._save(rec, [f])
            self._emit(rec, "progress")
        if rec.type is JobType.UPLOAD_REPLY and not s.reply_done:
            await self._fetch_reply(rec, ctx)  # before Close-Session, or the reply is gone
        if s.upload_session_id is not None:
            await self._uploader.close(f, uctx)
            s.upload_session_id = None
            self._save(rec)

    async def _fetch_reply(self, rec: JobRecord, ctx: FileContext) -> None:
        """Download the server's reply (BITS-Reply-URL) to the reply file's temporary name."""
        assert self._engine is not None
        s = rec.settings
        reply_name = s.reply_file_name or _default_reply_name(rec)
        s.reply_file_name = reply_name
        if s.reply_temp_name is None:
            s.reply_temp_name = _temp_name(reply_name)
        if not s.reply_url:
            open(s.reply_temp_name, "wb").close()  # the server sent no reply: an empty file
            s.reply_bytes_total = 0
        else:
            from urllib.parse import urljoin

            reply = FileRecord(
                index=0,
                remote_name=urljoin(rec.files[0].remote_name, s.reply_url),
                local_name=reply_name,
                temp_name=s.reply_temp_name,
                bytes_total=s.reply_bytes_total,
                bytes_transferred=s.reply_bytes_transferred,
            )

            def on_progress(f: FileRecord) -> None:
                s.reply_bytes_total = f.bytes_total
                s.reply_bytes_transferred = f.bytes_transferred
                ctx.on_progress(rec.files[0])

            reply_ctx = dataclasses.replace(
                ctx, dynamic_content=True, on_progress=on_progress, on_validators=lambda f: None
            )
            await self._engine.download(reply, reply_ctx)
            s.reply_bytes_total = reply.bytes_transferred
            s.reply_bytes_transferred = reply.bytes_transferred
        s.reply_done = True
        rec.touch()
        self._save(rec)
        self._notify_file(rec, rec.files[0])

    async def _transfer_files(self, rec: JobRecord, ctx: FileContext) -> None:
        """Fetch the job's files, starting them in order, up to ``files_in_flight`` at once.

        BITS transfers a job's files one after the other; bitsnb starts them in the same order
        but overlaps a few, because one small file at a time leaves the connection idle while
        each file is fsynced and recorded. When a file fails, the files before it still finish
        (as they would have one at a time) and the ones after it stop. Files added while the
        job runs are picked up.
        """
        assert self._engine is not None
        engine = self._engine
        cursor = 0
        stopping = False  # a failure or a slice end: start no new file
        in_flight: dict[asyncio.Task[None], FileRecord] = {}

        def next_file() -> FileRecord | None:
            nonlocal cursor
            while not stopping and cursor < len(rec.files):
                f = rec.files[cursor]
                cursor += 1
                if not (f.transferred or f.completed):
                    return f
            return None

        async def worker() -> None:
            nonlocal stopping
            me = asyncio.current_task()
            assert me is not None
            while (f := next_file()) is not None:
                in_flight[me] = f
                try:
                    await engine.download(f, ctx)
                except TransferFailure as failure:
                    failure.file = f
                    self._save_quietly(rec, f)
                    raise
                except BaseException:
                    self._save_quietly(rec, f)
                    raise
                finally:
                    in_flight.pop(me, None)
                f.transferred = True
                rec.touch()
                if not in_flight and all(x.transferred or x.completed for x in rec.files):
                    # the job's last file: its row and the job's end go in one commit
                    self._end_transfer(rec, f)
                    continue
                self._save(rec, [f])
                self._notify_file(rec, f)
                if cursor < len(rec.files) and self._should_yield(rec):
                    stopping = True  # let the files in flight finish, then give up the slot
                    raise YieldSlice

        pending_files = sum(1 for f in rec.files if not (f.transferred or f.completed))
        width = max(1, min(self.policy.files_in_flight, pending_files))
        tasks = {asyncio.create_task(worker()) for _ in range(width)}
        first: BaseException | None = None
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    exc = None if task.cancelled() else task.exception()
                    if exc is None or isinstance(exc, asyncio.CancelledError):
                        continue
                    if first is None or (
                        isinstance(first, YieldSlice) and not isinstance(exc, YieldSlice)
                    ):
                        first = exc
                    stopping = True
                if first is not None and not isinstance(first, YieldSlice):
                    failed = first.file if isinstance(first, TransferFailure) else None
                    limit = failed.index if failed is not None else -1
                    for task in tasks:
                        f = in_flight.get(task)
                        if f is None or f.index > limit:
                            task.cancel()  # after the failing file: stop it, keep its data
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        if first is not None:
            raise first

    def _loop_call(self, fn: Callable[[], None]) -> None:
        if self._loop is not None:
            self._loop.call_soon(fn)

    def _save_quietly(self, rec: JobRecord, f: FileRecord) -> None:
        with contextlib.suppress(Exception):
            self._save(rec, [f])

    def _fail(self, rec: JobRecord, failure: TransferFailure, f: FileRecord | None) -> None:
        now = time.time()
        rec.error = ErrorRecord(
            failure.code,
            failure.context,
            f.index if f is not None else None,
            failure.protocol,
            failure.message,
        )
        rec.error_count += 1
        files = [f] if f is not None else []
        s = rec.settings
        if failure.transient and s.no_progress_timeout > 0:
            if rec.first_failure_at is None:
                rec.first_failure_at = now
            delay = max(s.minimum_retry_delay, failure.retry_after or 0.0)
            deadline = rec.first_failure_at + s.no_progress_timeout
            if s.minimum_retry_delay <= s.no_progress_timeout and now < deadline:
                rec.retry_at = min(now + delay, deadline)
                self._set_state(rec, Event.TRANSIENT_FAILURE, files)
                self._arm_retry(rec, rec.retry_at - now)
                return
        rec.retry_at = None
        self._set_state(rec, Event.FATAL_FAILURE, files)
        self._notify_final(rec)

    def _arm_retry(self, rec: JobRecord, delay: float) -> None:
        assert self._loop is not None
        old = self._timers.pop(rec.id, None)
        if old is not None:
            old.cancel()
        self._timers[rec.id] = self._loop.call_later(max(0.0, delay), self._retry_due, rec.id)

    def _retry_due(self, job_id: uuid.UUID) -> None:
        self._timers.pop(job_id, None)
        rec = self._jobs.get(job_id)
        if rec is None:
            return
        try:
            self._refresh(rec)  # another process may have retried, finished or ended it
        except JobNotFoundError:
            self._forget(rec)
            return
        if rec.state is not JobState.TRANSIENT_ERROR:
            return
        s = rec.settings
        if (
            rec.first_failure_at is not None
            and time.time() >= rec.first_failure_at + s.no_progress_timeout
        ):
            rec.retry_at = None
            self._set_state(rec, Event.FATAL_FAILURE)  # no progress for too long
            self._notify_final(rec)
            return
        rec.retry_at = None
        self._set_state(rec, Event.RETRY)
        self._enqueue(rec)
        self._pump()

    def _cancel_timer(self, rec: JobRecord) -> None:
        timer = self._timers.pop(rec.id, None)
        if timer is not None:
            timer.cancel()

    # -- housekeeping: leases, other processes, scavenging -------------------------------------
    async def _housekeep(self) -> None:
        p = self.policy
        last_renew = last_scavenge = time.monotonic()
        while True:
            await asyncio.sleep(p.poll_interval)
            try:
                self._adopt_waiting()
                store = self._open()
                now = time.monotonic()
                if now - last_renew >= p.lease_seconds / 3:
                    store.renew_leases(p.lease_seconds)
                    last_renew = now
                # look back 2 s past the newest write seen: a slow writer may commit late
                # a small look-back covers clock jitter between processes
                changed, newest = store.changed_by_others(self._since_ns - 200_000_000)
                self._since_ns = max(self._since_ns, newest)
                for fresh in changed:
                    self._apply_foreign(fresh)
                if self._foreign:
                    held = store.leased_by_others()
                    for job_id in list(self._foreign - held):
                        self._foreign.discard(job_id)
                        rec = self._jobs.get(job_id)
                        if rec is not None and rec.state in (
                            JobState.QUEUED,
                            JobState.CONNECTING,
                            JobState.TRANSFERRING,
                        ):
                            self._enqueue(rec)
                    self._pump()
                if now - last_scavenge >= p.scavenge_interval:
                    last_scavenge = now
                    await self._scavenge()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bitsnb housekeeping failed")

    def _apply_foreign(self, fresh: JobRecord) -> None:
        rec = self._jobs.get(fresh.id)
        if rec is None:
            if fresh.state.is_final:
                return
            self._jobs[fresh.id] = fresh
            self._emit(fresh, "created")
            self._adopt_active(fresh)
            self._pump()
            return
        if fresh.version <= rec.version:
            return
        self._adopt(rec, fresh)

    def _adopt(self, rec: JobRecord, fresh: JobRecord) -> None:
        """Take another process's newer version of a job, and act on its state here."""
        running_here = fresh.id in self._runs
        old_state = rec.state
        if running_here:
            self._merge_foreign(rec, fresh)
        else:
            _copy_record(rec, fresh)
            self._requeue_if_moved(rec)
        if rec.state.is_final:
            self._forget(rec)
        elif not running_here:
            if rec.state in (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING):
                self._enqueue(rec)
                self._pump()
            elif rec.state is JobState.TRANSIENT_ERROR and rec.id not in self._timers:
                self._arm_retry(rec, (rec.retry_at or time.time()) - time.time())
            elif rec.state is not JobState.TRANSIENT_ERROR:
                self._dequeue(rec)
                self._cancel_timer(rec)
        self._emit(rec, "state" if rec.state != old_state else "progress")

    async def _scavenge(self) -> None:
        store = self._open()
        cutoff = time.time() - self.policy.job_lifetime
        for rec in [r for r in self._jobs.values() if r.modified < cutoff]:
            if rec.id in self._runs:
                continue
            self._delete_temps(rec)
            self._set_state(rec, Event.SCAVENGE)
            self._forget(rec)
        store.prune_finished(time.time() - self.policy.history_retention)

    def _forget(self, rec: JobRecord) -> None:
        self._jobs.pop(rec.id, None)
        self._dequeue(rec)
        self._cancel_timer(rec)
        self._foreign.discard(rec.id)
        self._notify.pop(rec.id, None)
        self._secrets.pop(rec.id, None)
        self._last_progress_event.pop(rec.id, None)
        self._last_modification_notify.pop(rec.id, None)
        self._emit(rec, "removed")

    # -- notifications -----------------------------------------------------------------------
    def _flags(self, rec: JobRecord) -> NotifyFlags:
        return NotifyFlags(rec.settings.notify_flags)

    def _deliver(self, rec: JobRecord, method: str, *args: Any) -> None:
        target = self._notify.get(rec.id)
        fn = getattr(target, method, None) if target is not None else None
        if fn is None:
            return
        job = self._handle(rec)

        async def call() -> None:
            try:
                result = fn(job, *args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("bitsnb notification %s failed", method)

        self._spawn(call())

    def _notify_modification(self, rec: JobRecord) -> None:
        flags = self._flags(rec)
        if NotifyFlags.DISABLE in flags or NotifyFlags.JOB_MODIFICATION not in flags:
            return
        if rec.id not in self._notify or rec.state in (JobState.TRANSFERRED, JobState.ERROR):
            return  # BITS sends no modification for the moves into TRANSFERRED or ERROR
        now = time.monotonic()
        if now - self._last_modification_notify.get(rec.id, 0.0) < 0.5:
            return
        self._last_modification_notify[rec.id] = now
        self._deliver(rec, "job_modification")

    def _notify_file(self, rec: JobRecord, f: FileRecord) -> None:
        self._emit(rec, "progress")
        flags = self._flags(rec)
        if NotifyFlags.DISABLE not in flags and NotifyFlags.FILE_TRANSFERRED in flags:
            self._deliver(rec, "file_transferred", _file_info(f))

    def _notify_final(self, rec: JobRecord) -> None:
        flags = self._flags(rec)
        if NotifyFlags.DISABLE in flags:
            return
        if rec.state is JobState.TRANSFERRED and NotifyFlags.JOB_TRANSFERRED in flags:
            self._deliver(rec, "job_transferred")
        elif rec.state is JobState.ERROR and NotifyFlags.JOB_ERROR in flags:
            self._deliver(rec, "job_error", _error_info(rec))
        else:
            return
        cmd = rec.settings.notify_cmd_line
        if cmd is not None and rec.owner == self.policy.owner:
            self._spawn(_run_command(*cmd))

    # -- job operations (called by AsyncJob) ----------------------------------------------
    def _add_files(
        self,
        job: AsyncJob,
        pairs: Sequence[tuple[str, str | os.PathLike[str]]],
        ranges: list[tuple[int, int | None]] | None = None,
    ) -> None:
        rec = self._live(job)
        checked: list[tuple[str, str]] = []
        seen = {f.local_name for f in rec.files}
        upload = rec.type is not JobType.DOWNLOAD
        if upload and len(rec.files) + len(pairs) > 1:
            raise BitsError(_codes.BG_E_TOO_MANY_FILES, "upload jobs hold exactly one file")
        for remote, local in pairs:
            url = check_url(remote)
            path = check_source_file(local) if upload else check_local_name(local)
            if path in seen:
                raise BitsError(
                    _codes.E_INVALIDARG, f"the job already has a file with local name {path!r}"
                )
            seen.add(path)
            checked.append((url, path))
        if not checked:
            raise BitsError(_codes.E_INVALIDARG, "no files given")
        limit = self.policy.max_files_per_job
        if limit is not None and len(rec.files) + len(checked) > limit:
            raise BitsError(
                _codes.BG_E_TOO_MANY_FILES_IN_JOB, f"a job may hold at most {limit} files"
            )
        first = len(rec.files)
        new = [
            FileRecord(
                index=first + i,
                remote_name=url,
                local_name=path,
                temp_name=path if upload or rec.settings.high_performance else _temp_name(path),
                ranges=list(ranges) if ranges is not None else None,
                bytes_total=(
                    sum(n for _, n in ranges if n is not None)
                    if ranges is not None and all(n is not None for _, n in ranges)
                    else None
                ),
            )
            for i, (url, path) in enumerate(checked)
        ]
        rec.files.extend(new)
        rec.touch()
        if not self._save(rec, new):
            del rec.files[first:]
            self._open().delete_files(rec.id, first)
            raise BitsError(_codes.BG_E_INVALID_STATE, "the job changed in another process")
        self._emit(rec, "modified")

    def _resume(self, job: AsyncJob) -> None:
        rec = self._live(job)
        if not rec.files:
            raise BitsError(_codes.BG_E_EMPTY, "the job has no files; add some before resume()")
        transition(rec.state, Event.RESUME, rec.type)
        if rec.state in (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING):
            return
        if rec.state is JobState.TRANSFERRED and all(f.transferred for f in rec.files):
            return
        self._cancel_timer(rec)
        if rec.type is JobType.UPLOAD_REPLY and rec.settings.reply_file_name is None:
            rec.settings.reply_file_name = _default_reply_name(rec)
        rec.resumed_once = True
        rec.active_seconds = 0.0
        rec.retry_at = None
        if rec.state is JobState.ERROR:
            rec.first_failure_at = None
        self._set_state(rec, Event.RESUME)
        self._enqueue(rec)
        self._pump()

    async def _suspend(self, job: AsyncJob) -> None:
        rec = self._live(job)
        transition(rec.state, Event.SUSPEND, rec.type)
        if rec.state is JobState.SUSPENDED:
            return
        await self._stop_run(rec.id)
        self._dequeue(rec)
        self._cancel_timer(rec)
        self._set_state(rec, Event.SUSPEND, rec.files)
        self._release_if_held(rec)

    async def _cancel(self, job: AsyncJob) -> int:
        rec = self._live(job)
        transition(rec.state, Event.CANCEL, rec.type)
        await self._stop_run(rec.id)
        self._dequeue(rec)
        self._cancel_timer(rec)
        if rec.type is not JobType.DOWNLOAD and rec.files:
            await self._cancel_upload(rec)
        ok = self._delete_temps(rec)
        self._set_state(rec, Event.CANCEL)
        self._release_if_held(rec)
        self._forget(rec)
        return _codes.S_OK if ok else _codes.BG_S_UNABLE_TO_DELETE_FILES

    async def _cancel_upload(self, rec: JobRecord) -> None:
        """Cancel-Session on the server, bounded: an unreachable server just expires it."""
        assert self._uploader is not None
        uctx = self._upload_context(rec, self._file_context(rec))
        with contextlib.suppress(TimeoutError, TransferFailure):
            async with asyncio.timeout(self.policy.connect_timeout):
                await self._uploader.cancel(rec.files[0], uctx)
        rec.settings.upload_session_id = None

    def _delete_temps(self, rec: JobRecord) -> bool:
        ok = True
        reply_temp = rec.settings.reply_temp_name
        if reply_temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(reply_temp)
        if rec.type is not JobType.DOWNLOAD:
            return ok  # an upload's local file is the user's, never ours to delete
        for f in rec.files:
            if f.completed or rec.settings.high_performance:
                continue
            try:
                os.unlink(f.temp_name)
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        return ok

    async def _complete(self, job: AsyncJob) -> int:
        rec = self._live(job)
        transition(rec.state, Event.COMPLETE, rec.type)
        await self._stop_run(rec.id)
        self._dequeue(rec)
        self._cancel_timer(rec)
        if rec.type is not JobType.DOWNLOAD:
            self._complete_upload(rec)
            self._set_state(rec, Event.COMPLETE, rec.files)
            self._release_if_held(rec)
            self._forget(rec)
            return _codes.S_OK
        done = self._complete_download(rec)
        assert self._folders is not None
        await self._folders.sync(done.folders)
        return done.result()

    def _complete_now(self, job: AsyncJob) -> Completion | None:
        """complete() of a download job that is not transferring, up to the folder sync, which
        the caller does; None when the call has to wait (a running job, an upload)."""
        rec = self._live(job)
        transition(rec.state, Event.COMPLETE, rec.type)
        if rec.id in self._runs or rec.type is not JobType.DOWNLOAD:
            return None
        return self._complete_download(rec)

    def _complete_download(self, rec: JobRecord) -> Completion:
        """Move the transferred files to their names and end the job (unless a move failed).

        The store records the end before the folders are synced; the call returns only after
        the sync (``Completion``), so what a returned complete() promises is unchanged, and a
        crash in between finds the files moved and the job ended, as just after the return.
        """
        self._dequeue(rec)
        self._cancel_timer(rec)
        partial = False
        failure: OSError | None = None
        failed_file: FileRecord | None = None
        folders: set[str] = set()
        for f in rec.files:
            if f.completed:
                continue
            if f.transferred:
                try:
                    if f.temp_name != f.local_name:
                        _move(f)
                    f.completed = True
                    folders.add(os.path.dirname(f.local_name))
                except OSError as exc:
                    failure, failed_file = exc, f
            else:
                partial = True
        if failure is not None and failed_file is not None:
            # BITS: the job stays in the queue (TRANSFERRED); renamed files stay renamed
            rec.touch()
            self._save(rec, rec.files)
            error = BitsError(
                _codes.hresult_from_win32(failure.errno or 5)
                if failure.errno not in (13, 1)
                else _codes.E_ACCESSDENIED,
                f"cannot move {failed_file.temp_name!r} to {failed_file.local_name!r}: "
                f"{failure.strerror}; fix it and call complete() again, or cancel()",
                context=ErrorContext.LOCAL_FILE,
            )
            return Completion(_E_FAIL, folders, error)
        for f in rec.files:
            if not f.transferred and not rec.settings.high_performance:
                with contextlib.suppress(OSError):
                    os.unlink(f.temp_name)
        self._set_state(rec, Event.COMPLETE, rec.files)
        self._release_if_held(rec)
        self._forget(rec)
        return Completion(_codes.BG_S_PARTIAL_COMPLETE if partial else _codes.S_OK, folders)

    def _complete_upload(self, rec: JobRecord) -> None:
        """Uploads are on the server already; upload-reply moves the reply into place."""
        s = rec.settings
        for f in rec.files:
            f.completed = True
        if rec.type is JobType.UPLOAD_REPLY and s.reply_temp_name and s.reply_file_name:
            try:
                if os.path.exists(s.reply_temp_name):
                    os.replace(s.reply_temp_name, s.reply_file_name)
                    _fsync_dir(os.path.dirname(s.reply_file_name))
            except OSError as exc:
                raise BitsError(
                    _codes.E_ACCESSDENIED,
                    f"cannot move the reply to {s.reply_file_name!r}: {exc.strerror}",
                    context=ErrorContext.LOCAL_FILE,
                ) from exc

    async def _wait(self, job: AsyncJob, timeout: float | None) -> JobState:
        assert self._loop is not None
        rec = job._rec
        deadline = None if timeout is None else self._loop.time() + timeout
        while rec.state not in _WAIT_DONE:
            fut: asyncio.Future[None] = self._loop.create_future()
            self._waiters.setdefault(rec.id, []).append(fut)
            remaining = None if deadline is None else deadline - self._loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {rec.id} is still {rec.state.name}")
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"job {rec.id} is still {rec.state.name} after {timeout} s"
                ) from None
        return rec.state

    def _update(self, job: AsyncJob, apply: Callable[[JobRecord], None]) -> None:
        rec = self._live(job)
        apply(rec)
        rec.touch()
        self._save(rec)
        self._requeue_if_moved(rec)
        self._emit(rec, "modified")


def _copy_record(rec: JobRecord, fresh: JobRecord) -> None:
    for name in rec.__dataclass_fields__:
        setattr(rec, name, getattr(fresh, name))


def _default_reply_name(rec: JobRecord) -> str:
    """BITS invents a reply name beside the uploaded file when none was set."""
    local = rec.files[0].local_name if rec.files else os.path.join(os.getcwd(), "upload")
    return f"{local}.{rec.id.hex[:8]}.reply"


def _already_moved(f: FileRecord) -> bool:
    """A crash between the rename and the store write left the file moved but not recorded."""
    return not os.path.exists(f.temp_name) and os.path.exists(f.local_name)


def _move(f: FileRecord) -> None:
    """Rename the temporary file to the local name (done already if a crash came between)."""
    try:
        os.replace(f.temp_name, f.local_name)
    except FileNotFoundError:
        if not _already_moved(f):
            raise


def _is_admin() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _temp_name(local: str) -> str:
    folder = os.path.dirname(local)
    return os.path.join(folder, f".BIT{secrets.token_hex(6).upper()}.tmp")


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dirs(folders: Iterable[str]) -> None:
    for folder in folders:
        _fsync_dir(folder)


@dataclass
class Completion:
    """What complete() did on the loop; ``finish()`` syncs the folders, then answers or raises."""

    code: int
    folders: set[str]
    error: BitsError | None = None

    def result(self) -> int:
        """The HRESULT, or the move failure raised (once the folders are synced)."""
        if self.error is not None:
            raise self.error
        return self.code

    def finish(self) -> int:
        """Sync the folders in the calling thread, then ``result()``."""
        _fsync_dirs(self.folders)
        return self.result()


class _FolderSync:
    """Folder fsyncs off the loop, shared between the complete() calls that need them.

    A rename is durable once an fsync of its folder *started after it* has finished. So at most
    one fsync per folder runs; callers arriving while it runs wait for the next one, which
    starts when it ends and serves all of them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._running: set[str] = set()
        self._next: dict[str, asyncio.Future[None]] = {}

    async def sync(self, folders: Iterable[str]) -> None:
        """Return once every folder in *folders* was synced after this call began."""
        waits = [self._ticket(folder) for folder in folders]
        for fut in waits:
            await asyncio.shield(fut)

    def _ticket(self, folder: str) -> asyncio.Future[None]:
        fut = self._next.get(folder)
        if fut is None:
            fut = self._next[folder] = self._loop.create_future()
            if folder not in self._running:
                self._start(folder)
        return fut

    def _start(self, folder: str) -> None:
        waiters = self._next.pop(folder)
        self._running.add(folder)
        job = self._loop.run_in_executor(None, _fsync_dir, folder)

        def done(_: asyncio.Future[None]) -> None:
            self._running.discard(folder)
            if not waiters.done():
                waiters.set_result(None)
            if folder in self._next:  # callers came while it ran: their own sync now
                self._start(folder)

        job.add_done_callback(done)


def _proxy_url(entry: str, auth: tuple[str | None, str | None] | None) -> str:
    """``[scheme=][scheme://]host[:port]`` (BITS proxy syntax) as a proxy URL."""
    if "=" in entry:
        entry = entry.split("=", 1)[1]
    if "://" not in entry:
        entry = "http://" + entry
    if auth is not None and auth[0]:
        from urllib.parse import quote

        scheme, rest = entry.split("://", 1)
        entry = f"{scheme}://{quote(auth[0], safe='')}:{quote(auth[1] or '', safe='')}@{rest}"
    return entry


def _bypassed(rec: JobRecord, bypass: str) -> bool:
    from fnmatch import fnmatch
    from urllib.parse import urlsplit

    host = urlsplit(rec.files[0].remote_name).hostname or ""
    for pattern in bypass.split():
        if pattern == "<local>" and "." not in host:
            return True
        if fnmatch(host, pattern):
            return True
    return False


async def _run_command(program: str, parameters: str) -> None:
    argv = shlex.split(parameters) if parameters else [program]
    try:
        proc = await asyncio.create_subprocess_exec(
            program,
            *argv[1:],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()
    except OSError:
        log.exception("bitsnb notify command line failed to start")


def _file_info(f: FileRecord) -> FileInfo:
    return FileInfo(
        index=f.index,
        remote_name=f.remote_name,
        local_name=f.local_name,
        temporary_name=f.temp_name,
        progress=FileProgress(f.bytes_total, f.bytes_transferred, f.completed),
        ranges=tuple(FileRange(o, n) for o, n in (f.ranges or ())),
        transferred=f.transferred,
    )


def _error_info(rec: JobRecord) -> ErrorInfo | None:
    err = rec.error
    if err is None:
        return None
    file = (
        _file_info(rec.files[err.file_index])
        if err.file_index is not None and err.file_index < len(rec.files)
        else None
    )
    return ErrorInfo(err.code, err.context, file, err.protocol, err.message)


from ._job import AsyncJob  # noqa: E402  (AsyncJob needs the helpers above)
