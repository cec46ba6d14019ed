"""The queue's operations, as plain functions on the loop: create, look up, enumerate, and what
an application does to a job (add files, resume, suspend, cancel, complete, change settings).

``AsyncJob`` and ``AsyncManager`` are thin: they check arguments and call these. The blocking
API calls the ones that never wait straight through the loop (one trip, no task).
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import _codes
from ._bandwidth import BandwidthStatus
from ._completion import (
    Completion,
    FolderSync,
    default_reply_name,
    delete_temps,
    delete_untransferred,
    move_reply,
    move_transferred,
    temp_name,
)
from ._enumerator import Enumerator
from ._enums import JobPriority, JobState, JobType
from ._errors import BitsError, InvalidStateError, JobNotFoundError
from ._events import Events
from ._integrity import parse_known_hash
from ._job import AsyncJob
from ._jobrun import RUNNING, Runner
from ._jobstats import job_progress
from ._jobtable import JobTable
from ._models import Policy
from ._persist import STARTABLE, Records
from ._records import FileRecord, JobRecord, JobSecrets
from ._replication import Replication
from ._scheduler import Scheduler
from ._states import Event, transition
from ._validate import (
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    check_local_name,
    check_source_file,
    check_string,
    check_url,
    is_admin,
)

__all__ = ["FileSpec", "JobControl"]

FileSpec = tuple[str, str | os.PathLike[str]] | tuple[str, str | os.PathLike[str], str | None]
"""A file to add: (url, path) or (url, path, known_hash)."""


def _known_hash(value: object) -> str | None:
    """A known hash checked and written as ``alg:hex`` (None stays None)."""
    if value is None:
        return None
    try:
        return parse_known_hash(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise BitsError(_codes.E_INVALIDARG, f"bad known hash: {exc}") from None


class JobControl:
    """What applications do to the queue and its jobs; the parts underneath do the work."""

    def __init__(
        self,
        manager: Any,
        policy: Policy,
        records: Records,
        events: Events,
        scheduler: Scheduler,
        runner: Runner,
        replication: Replication,
        folders: FolderSync,
        secrets: dict[uuid.UUID, JobSecrets],
    ) -> None:
        self.manager = manager  # the AsyncManager, for ``AsyncJob.manager``
        self.policy = policy
        self.records = records
        self._events = events
        self._scheduler = scheduler
        self._runner = runner
        self._replication = replication
        self._folders = folders
        self._handles: dict[uuid.UUID, tuple[AsyncJob, JobRecord]] = {}
        self._secrets = secrets  # shared with the runner, which reads it for each request
        self._posted: deque[JobRecord] = deque()  # stored by another thread, not yet admitted
        runner.forget = self.forget
        replication.forget = self.forget

    # -- handles, visibility ----------------------------------------------------------------------
    def handle(self, rec: JobRecord) -> AsyncJob:
        """The ``AsyncJob`` for *rec* (one per record)."""
        known = self._handles.get(rec.id)
        if known is not None and known[1] is rec:
            return known[0]
        handle = AsyncJob(self, rec)
        self._handles[rec.id] = (handle, rec)
        return handle

    def _may_see(self, rec: JobRecord) -> bool:
        return rec.owner == self.policy.owner or is_admin()

    @staticmethod
    def check_priority(priority: object) -> JobPriority:
        """A BG_JOB_PRIORITY, or E_NOTIMPL."""
        try:
            return JobPriority(priority)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            raise BitsError(
                _codes.E_NOTIMPL, f"priority {priority!r} is not a BITS priority"
            ) from None

    def secrets(self, job_id: uuid.UUID) -> JobSecrets | None:
        """The job's in-memory credentials and secret headers, if any were set."""
        return self._secrets.get(job_id)

    def secrets_for(self, rec: JobRecord) -> JobSecrets:
        """The job's secrets, created empty on first use."""
        return self._secrets.setdefault(rec.id, JobSecrets())

    def drop_secrets(self, job_id: uuid.UUID) -> None:
        """Forget the job's credentials and secret headers (TakeOwnership)."""
        self._secrets.pop(job_id, None)

    def count(self) -> int:
        """Jobs in the queue (not final)."""
        return len(self.records.jobs)

    # -- the queue --------------------------------------------------------------------------------
    def create(
        self,
        display_name: str,
        type: JobType,
        priority: JobPriority,
        description: str,
        *,
        on_loop: bool,
    ) -> AsyncJob:
        """CreateJob: checks, the store insert, and the job joins the queue.

        *on_loop* False: called from another thread (the blocking API), which does the insert
        itself — waiting for another process's write lock as long as the busy timeout allows —
        and leaves the job for the loop to admit before its next look at the queue (nothing
        wakes the loop: a SUSPENDED job without files needs no scheduling, and every look at
        the queue admits what is waiting first, so listeners hear "created" before anything
        else about it). On the loop the insert never waits on another process.
        """
        if not isinstance(display_name, str):
            raise BitsError(_codes.E_INVALIDARG, "the display name must be a string")
        check_string(display_name, "display name", MAX_DISPLAY_NAME)
        check_string(description, "description", MAX_DESCRIPTION)
        try:
            job_type = JobType(type)
        except ValueError:
            raise BitsError(_codes.E_INVALIDARG, f"unknown job type {type!r}") from None
        prio = self.check_priority(priority)
        p = self.policy
        owner = p.owner
        rec = JobRecord(
            id=uuid.uuid4(), display_name=display_name, type=job_type, owner=owner, priority=prio
        )
        rec.settings.description = description
        store = self.records.store
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
            if on_loop:
                store.insert_job(rec)
            else:
                store.patiently(store.insert_job, rec)
        job = AsyncJob(self, rec)
        if on_loop:
            self._admit_new(job, rec)
        else:
            self._handles[rec.id] = (job, rec)
            self._posted.append(rec)
        return job

    def housekeeping_tick(self) -> None:
        """Each housekeeping round: admit other threads' new jobs, follow the bandwidth schedule."""
        self.admit_posted()
        self._runner.apply_schedule()

    def bandwidth_changed(self, rec: JobRecord) -> None:
        """The job's own cap changed: its connections take the new rate at once."""
        self._runner.budgets.set_job_rate(rec.id, rec.settings.max_bandwidth)
        self._runner.pacer.retune()

    def bandwidth(self, rec: JobRecord) -> BandwidthStatus:
        """What limits the job's transfer now (the runner knows)."""
        return self._runner.bandwidth(rec)

    def bandwidth_policy_changed(self) -> None:
        """``Policy.max_bandwidth`` changed: the manager-wide cap follows at once."""
        self._runner.apply_schedule()

    def admit_posted(self) -> None:
        """On the loop: the jobs other threads created join the queue, and listeners hear."""
        while self._posted:
            rec = self._posted.popleft()
            self.records.jobs.setdefault(rec.id, rec)
            self._events.emit(rec, "created")

    def _admit_new(self, job: AsyncJob, rec: JobRecord) -> None:
        self.records.jobs.setdefault(rec.id, rec)
        self._handles.setdefault(rec.id, (job, rec))
        self._events.emit(rec, "created")

    def get_job(self, job_id: uuid.UUID | str) -> AsyncJob:
        """GetJob: the job with that id (BG_E_NOT_FOUND if unknown or finished)."""
        self.admit_posted()
        try:
            key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        except ValueError:
            raise JobNotFoundError(f"{job_id!r} is not a job id") from None
        rec = self.records.jobs.get(key)
        if rec is None:
            rec = self._load(key)
        if rec is None or rec.state.is_final:
            raise JobNotFoundError(f"no job {key} in the queue")
        if not self._may_see(rec):
            raise BitsError(_codes.E_ACCESSDENIED, f"job {key} belongs to another user")
        return self.handle(rec)

    def _load(self, job_id: uuid.UUID) -> JobRecord | None:
        """A job another process created that this one has not seen yet."""
        rec = self.records.store.load_job(job_id)
        if rec is not None and not rec.state.is_final:
            self.records.jobs[rec.id] = rec
            self._runner.admit(rec)
            self._runner.pump()
        return rec

    def enum_jobs(self, all_users: bool, include_finished: bool) -> Enumerator[AsyncJob]:
        """EnumJobs: a snapshot of the caller's jobs (or everybody's, for root), including jobs
        other processes created or changed a moment ago (the store's change marker is read
        first, as get_job reads the row)."""
        self.admit_posted()
        self._replication.poll_changes()
        if all_users and not is_admin():
            raise BitsError(_codes.E_ACCESSDENIED, "only root may list every user's jobs")
        recs: Iterable[JobRecord]
        jobs = self.records.jobs
        if include_finished:
            recs = [jobs.get(r.id, r) for r in self.records.store.load_jobs(include_finished=True)]
        else:
            recs = sorted(jobs.values(), key=lambda r: r.seq)
        owner = self.policy.owner
        return Enumerator([self.handle(r) for r in recs if all_users or r.owner == owner])

    def read_table(self, all_users: bool, include_finished: bool) -> JobTable:
        """The caller's jobs (or everybody's, for root) as columns, straight from the store
        (any thread: the store serialises its users); ``live_table`` then adds what only this
        manager knows."""
        if all_users and not is_admin():
            raise BitsError(_codes.E_ACCESSDENIED, "only root may list every user's jobs")
        store = self.records.store
        owner = None if all_users else self.policy.owner
        return store.patiently(store.job_table, include_finished, owner)

    def live_table(self, table: JobTable) -> JobTable:
        """On the loop: the jobs this manager runs take their live progress and rate (the
        store has their last save), and every job the cap in force over it."""
        running = [rec for rec in self.records.jobs.values() if rec.state in RUNNING]
        where = {job_id: i for i, job_id in enumerate(table.ids)} if running else {}
        for rec in running:
            i = where.get(str(rec.id))
            if i is None:
                continue
            p = job_progress(rec)
            table.states[i] = int(rec.state)
            table.files_total[i], table.files_done[i] = p.files_total, p.files_transferred
            table.bytes_total[i], table.bytes_done[i] = p.bytes_total, p.bytes_transferred
            table.rates[i] = self.bandwidth(rec).rate
        cap = self._runner.budgets.cap
        if cap is not None:  # BandwidthStatus.cap's rule: the manager's cap over background jobs
            fg = int(JobPriority.FOREGROUND)
            table.max_bandwidth = [
                c if p == fg else (cap if c is None else min(c, cap))
                for c, p in zip(table.max_bandwidth, table.priorities, strict=True)
            ]
        return table

    def file_workers(self, job_id: uuid.UUID | str) -> dict[int, str]:
        """Who holds which file of the job now (by file index), as the store says."""
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        store = self.records.store
        return store.patiently(store.file_workers, key)

    def job_workers(self) -> dict[str, str]:
        """Who holds which job now (job id's text → worker), as the store says."""
        store = self.records.store
        return store.patiently(store.job_workers)

    def damaged_jobs(self) -> dict[uuid.UUID, str]:
        """Rows the store could not read (seen so far), and why."""
        return dict(self.records.store.damaged)

    def forget(self, rec: JobRecord) -> None:
        """The job left the queue (final): drop everything kept about it here."""
        self.records.jobs.pop(rec.id, None)
        self._scheduler.dequeue(rec.id)
        self._runner.cancel_retry(rec.id)
        self._runner.foreign.discard(rec.id)
        self._runner.budgets.forget_job(rec.id)
        self._secrets.pop(rec.id, None)
        self._events.forget(rec.id)
        self._events.emit(rec, "removed")

    # -- job operations -----------------------------------------------------------------------------
    def live(self, rec: JobRecord) -> JobRecord:
        """*rec*, checked to be current and not final, before an application call changes it."""
        self.admit_posted()
        if not self.records.refresh(rec):
            raise JobNotFoundError(f"job {rec.id} is no longer in the store")
        if rec.state.is_final:
            raise InvalidStateError(f"the job is {rec.state.name}; it can no longer change")
        if not self._may_see(rec):
            raise BitsError(_codes.E_ACCESSDENIED, "the job belongs to another user")
        return rec

    def update(
        self,
        rec: JobRecord,
        apply: Callable[[JobRecord], object],
        files: Iterable[FileRecord] = (),
    ) -> None:
        """Change a job's settings (and *files*' rows): stored first, then listeners hear."""
        self.live(rec)

        def change() -> None:
            apply(rec)
            rec.touch()

        self.records.change(rec, change, files)
        if self._scheduler.reprioritise(rec.id, rec.priority):
            self._runner.pump()
        self._events.emit(rec, "modified")

    def set_notify_target(self, rec: JobRecord, target: Any) -> None:
        """SetNotifyInterface (kept in memory, as in BITS)."""
        self.live(rec)
        self._events.set_target(rec, target)

    def add_files(
        self,
        rec: JobRecord,
        pairs: Sequence[FileSpec],
        ranges: list[tuple[int, int | None]] | None = None,
    ) -> None:
        """AddFile / AddFileSet / AddFileWithRanges: all or none are added.

        Each entry is ``(url, path)`` or ``(url, path, known_hash)`` (``"alg:hex"``, or None).
        """
        self.live(rec)
        checked: list[tuple[str, str, str | None]] = []
        seen = {f.local_name for f in rec.files}
        upload = rec.type is not JobType.DOWNLOAD
        if upload and len(rec.files) + len(pairs) > 1:
            raise BitsError(_codes.BG_E_TOO_MANY_FILES, "upload jobs hold exactly one file")
        for entry in pairs:
            if not isinstance(entry, tuple | list) or len(entry) not in (2, 3):
                raise BitsError(
                    _codes.E_INVALIDARG, f"a file is (url, path[, known_hash]), not {entry!r}"
                )
            remote, local = entry[0], entry[1]
            url = check_url(remote)
            path = check_source_file(local) if upload else check_local_name(local)
            known = _known_hash(entry[2]) if len(entry) == 3 else None
            if known is not None and upload:
                raise BitsError(_codes.E_INVALIDARG, "known hashes are for download jobs")
            if path in seen:
                raise BitsError(
                    _codes.E_INVALIDARG, f"the job already has a file with local name {path!r}"
                )
            seen.add(path)
            checked.append((url, path, known))
        if not checked:
            raise BitsError(_codes.E_INVALIDARG, "no files given")
        limit = self.policy.max_files_per_job
        if limit is not None and len(rec.files) + len(checked) > limit:
            raise BitsError(
                _codes.BG_E_TOO_MANY_FILES_IN_JOB, f"a job may hold at most {limit} files"
            )
        first = len(rec.files)
        direct = upload or rec.settings.high_performance
        new = [
            FileRecord(
                index=first + i,
                remote_name=url,
                local_name=path,
                temp_name=path if direct else temp_name(path),
                ranges=list(ranges) if ranges is not None else None,
                bytes_total=(
                    sum(n for _, n in ranges if n is not None)
                    if ranges is not None and all(n is not None for _, n in ranges)
                    else None
                ),
                known_hash=known,
            )
            for i, (url, path, known) in enumerate(checked)
        ]

        def add() -> None:
            rec.files.extend(new)
            rec.touch()

        if not self.records.change(rec, add, new):
            raise BitsError(_codes.BG_E_INVALID_STATE, "the job changed in another process")
        self._events.emit(rec, "modified")

    def resume(self, rec: JobRecord) -> None:
        """Resume: queue the job (BG_E_EMPTY without files)."""
        self.live(rec)
        if not rec.files:
            raise BitsError(_codes.BG_E_EMPTY, "the job has no files; add some before resume()")
        transition(rec.state, Event.RESUME, rec.type)
        if rec.state in STARTABLE:
            return
        if rec.state is JobState.TRANSFERRED and all(f.transferred for f in rec.files):
            return
        was_error = rec.state is JobState.ERROR

        def reset() -> None:
            if rec.type is JobType.UPLOAD_REPLY and rec.settings.reply_file_name is None:
                rec.settings.reply_file_name = default_reply_name(rec)
            rec.resumed_once = True
            rec.active_seconds = 0.0
            rec.retry_at = None
            if was_error:
                rec.first_failure_at = None

        self.records.set_state(rec, Event.RESUME, also=reset)
        self._runner.cancel_retry(rec.id)
        self._runner.queue(rec)

    async def set_validation_state(self, rec: JobRecord, index: int, valid: bool) -> None:
        """IBackgroundCopyFile3::SetValidationState: the application's verdict on a transferred
        file. False puts the job in ERROR (BG_E_VALIDATION_FAILED), the file back to 0 bytes;
        True (the default) records the verdict and changes nothing else."""
        self.live(rec)
        if rec.type is not JobType.DOWNLOAD:
            raise BitsError(_codes.E_NOTIMPL, "validation states are for download jobs")
        if not 0 <= index < len(rec.files):
            raise BitsError(_codes.E_INVALIDARG, f"the job has no file {index}")
        f = rec.files[index]
        if not (f.transferred or f.completed):
            raise BitsError(_codes.E_PENDING, f"{f.local_name} has not finished transferring")
        if valid:
            if not f.validation_state:
                self.update(rec, lambda r: setattr(f, "validation_state", True), [f])
            return
        await self._runner.invalidate(rec, f)

    async def suspend(self, rec: JobRecord) -> None:
        """Suspend: stop transferring; data on disk is kept."""
        self.live(rec)
        transition(rec.state, Event.SUSPEND, rec.type)
        if rec.state is JobState.SUSPENDED:
            return
        await self._runner.stop(rec.id)
        self._scheduler.dequeue(rec.id)
        self._runner.cancel_retry(rec.id)
        await self.records.set_state_patiently(rec, Event.SUSPEND, rec.files)
        self._release_if_held(rec)

    async def cancel(self, rec: JobRecord) -> int:
        """Cancel: delete temporary files and end the job (S_OK or BG_S_UNABLE_TO_DELETE_FILES)."""
        self.live(rec)
        transition(rec.state, Event.CANCEL, rec.type)
        await self._runner.stop(rec.id)
        self._scheduler.dequeue(rec.id)
        self._runner.cancel_retry(rec.id)
        if rec.type is not JobType.DOWNLOAD and rec.files:
            await self._runner.uploads.cancel(rec)
        ok = delete_temps(rec)
        await self.records.set_state_patiently(rec, Event.CANCEL)
        self._release_if_held(rec)
        self.forget(rec)
        return _codes.S_OK if ok else _codes.BG_S_UNABLE_TO_DELETE_FILES

    async def complete(self, rec: JobRecord) -> int:
        """Complete: stop the job, move its files into place, sync their folders."""
        self.live(rec)
        transition(rec.state, Event.COMPLETE, rec.type)
        await self._runner.stop(rec.id)
        self._scheduler.dequeue(rec.id)
        self._runner.cancel_retry(rec.id)
        if rec.type is not JobType.DOWNLOAD:
            move_reply(rec)

            def mark() -> None:
                for f in rec.files:
                    f.completed = True

            await self.records.set_state_patiently(rec, Event.COMPLETE, rec.files, also=mark)
            self._release_if_held(rec)
            self.forget(rec)
            return _codes.S_OK
        done = self._complete_download(rec)
        await self._folders.sync(done.folders)
        return done.result()

    async def settle(self, rec: JobRecord) -> None:
        """Wait for the job's run to end by itself (one that reached TRANSFERRED is only
        finishing: its files are recorded, its task still unwinding)."""
        await self._runner.ended(rec.id)

    def complete_now(self, rec: JobRecord) -> Completion | None:
        """complete() of a download job that is not transferring, up to the folder sync, which
        the caller does; None when the call has to wait (a running job, an upload)."""
        self.live(rec)
        transition(rec.state, Event.COMPLETE, rec.type)
        if self._runner.is_running(rec.id) or rec.type is not JobType.DOWNLOAD:
            return None
        return self._complete_download(rec)

    def _complete_download(self, rec: JobRecord) -> Completion:
        """Move the transferred files to their names and end the job (unless a move failed).

        The store records the end before the folders are synced; the call returns only after
        the sync, so what a returned complete() promises is unchanged, and a crash in between
        finds the files moved and the job ended, as just after the return.
        """
        self._scheduler.dequeue(rec.id)
        self._runner.cancel_retry(rec.id)
        done = move_transferred(rec)  # renamed files are marked completed: that is on disk
        if done.error is not None:
            # BITS: the job stays in the queue (TRANSFERRED); renamed files stay renamed
            rec.touch()
            self.records.save(rec, rec.files)
            return done
        delete_untransferred(rec)
        self.records.set_state(rec, Event.COMPLETE, rec.files)
        self._release_if_held(rec)
        self.forget(rec)
        return done

    async def wait(self, rec: JobRecord, timeout: float | None) -> JobState:
        """Until TRANSFERRED, ERROR, CANCELLED or ACKNOWLEDGED (TimeoutError after *timeout*)."""
        return await self._events.wait(rec, timeout)

    def _release_if_held(self, rec: JobRecord) -> None:
        """Give up the lease if the state change did not (its save lost to another writer)."""
        store = self.records.store
        if store.holds(rec.id):
            store.release(rec.id)
