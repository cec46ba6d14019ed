"""Running jobs: starting queued ones while slots are free, their files (``_downloadrun``) or
upload sessions and replies (``_uploadrun``), failures, retry timers and the transfer's end.

Each running job is one task. Its state changes go through ``Records`` (memory follows the
store); when the store refuses to record the run's end — locked by another process for longer
than the busy timeout, say — the job stays as the store has it and runs again a little later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from . import _codes
from ._bandwidth import BandwidthSchedule, BandwidthStatus
from ._buckets import Budgets
from ._client_options import request_options
from ._downloadrun import DownloadRun
from ._engine import (
    Engine,
    FileContext,
    TransferFailure,
    YieldSlice,
    discard_file,
    validation_failure,
)
from ._enums import ErrorContext, JobPriority, JobState, JobType, ProxyUsage
from ._errors import BitsError, JobNotFoundError, StoreBusyError
from ._events import Events
from ._models import Policy
from ._pacing import Pacer
from ._persist import STARTABLE, Records, copy_record
from ._records import ErrorRecord, FileRecord, JobRecord, JobSecrets
from ._scheduler import Scheduler
from ._states import Event
from ._uploadrun import UploadRun
from ._validate import check_proxy_list

__all__ = ["RUNNING", "Runner"]

log = logging.getLogger("bitsnb")

RUNNING = frozenset({JobState.CONNECTING, JobState.TRANSFERRING})
_RERUN_DELAY = 1.0  # seconds before a run whose end the store refused runs again


class Runner:
    """Starts and runs jobs; one task per running job."""

    def __init__(
        self,
        policy: Policy,
        records: Records,
        events: Events,
        scheduler: Scheduler,
        engine: Engine,
        secrets: dict[uuid.UUID, JobSecrets],
    ) -> None:
        self._policy = policy
        self._records = records
        self._events = events
        self._scheduler = scheduler
        self._engine = engine
        self.uploads = UploadRun(policy, records, events, engine, self._file_context)
        self.downloads = DownloadRun(policy, records, events, scheduler, engine)
        self._secrets = secrets
        self._loop = asyncio.get_running_loop()
        self._runs: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._timers: dict[uuid.UUID, asyncio.TimerHandle] = {}
        self.foreign: set[uuid.UUID] = set()  # queued jobs another process holds the lease of
        self.accepting = True  # False once the manager closes: nothing new starts
        self.forget: Callable[[JobRecord], None] = lambda rec: None  # set by the manager
        self.budgets = Budgets(policy.max_bandwidth)
        self.pacer = Pacer(policy, self.budgets)  # yield controller, receive buffers, job rates
        self._blocked = False  # a limit of 0 is in force: background jobs wait
        self._schedule_key: tuple[object, ...] | None = None
        self._schedule: BandwidthSchedule | None = None

    # -- what runs ------------------------------------------------------------------------------
    def is_running(self, job_id: uuid.UUID) -> bool:
        """True while the job's task runs here."""
        return job_id in self._runs

    @property
    def running(self) -> list[uuid.UUID]:
        """Ids of the jobs running here."""
        return list(self._runs)

    def admit(self, rec: JobRecord) -> None:
        """A job that joined the queue (loaded, created elsewhere): queue it, or arm its retry."""
        if rec.state in STARTABLE:
            self._scheduler.enqueue(rec.id, rec.priority)
        elif rec.state is JobState.TRANSIENT_ERROR and rec.id not in self._timers:
            self.arm_retry(rec, (rec.retry_at or time.time()) - time.time())

    def queue(self, rec: JobRecord) -> None:
        """Queue a startable job and start what fits."""
        self._scheduler.enqueue(rec.id, rec.priority)
        self.pump()

    def pump(self) -> None:
        """Start queued jobs, highest priority first, while slots are free."""
        if not self.accepting:
            return
        store = self._records.store
        for job_id in self._scheduler.next_to_start():
            rec = self._records.jobs.get(job_id)
            if rec is None or rec.state not in STARTABLE:
                continue
            if self._blocked and rec.priority is not JobPriority.FOREGROUND:
                self._block(rec)
                continue
            try:
                if self._records.start(rec, self._policy.lease_seconds):
                    self._launch(rec, started=True)  # the usual case: state and lease, one write
                    continue
                version = store.claim(job_id, self._policy.lease_seconds)
            except BitsError:  # the store is busy: try again shortly
                self._later(_RERUN_DELAY / 4, rec)
                continue
            if version is None:
                self.foreign.add(job_id)
                continue
            # another process may have moved it on: the claim says the row's version
            fresh = rec if version == rec.version else store.load_job(job_id)
            if fresh is not None and fresh is not rec:
                copy_record(rec, fresh)
            if fresh is None or rec.state not in STARTABLE:
                with contextlib.suppress(BitsError):
                    store.release(job_id)
                if rec.state is JobState.TRANSIENT_ERROR and rec.id not in self._timers:
                    self.arm_retry(rec, (rec.retry_at or time.time()) - time.time())
                continue
            self._launch(rec, started=False)

    def _launch(self, rec: JobRecord, *, started: bool) -> None:
        self.foreign.discard(rec.id)
        self._scheduler.started(rec.id)
        task = asyncio.create_task(self._run(rec, started=started), name=f"bitsnb-{rec.id}")
        self._runs[rec.id] = task
        task.add_done_callback(lambda t: self._never_ran(rec, t))

    def _never_ran(self, rec: JobRecord, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never enters ``_run``'s ``finally``: give
        its slot back here (a suspend between a retry's start and that step left the job
        QUEUED for good, its slot held, so the next resume() queued nothing)."""
        if self._runs.get(rec.id) is task:
            self._runs.pop(rec.id)
            self._scheduler.stopped(rec.id)
            self._after_run(rec, stopped=True)

    def _later(self, delay: float, rec: JobRecord) -> None:
        """Queue *rec* again after *delay* (the store was busy, or refused the run's end)."""

        def again() -> None:
            if self._records.jobs.get(rec.id) is rec and rec.state in STARTABLE:
                self.queue(rec)

        self._loop.call_later(delay, again)

    async def ended(self, job_id: uuid.UUID) -> None:
        """Wait, without cancelling it, until the job's task (if any) has ended."""
        task = self._runs.get(job_id)
        if task is not None:
            await asyncio.wait([task])

    async def stop(self, job_id: uuid.UUID) -> None:
        """Cancel the job's task and wait until it has stopped (its data stays on disk)."""
        task = self._runs.get(job_id)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- bandwidth policy -----------------------------------------------------------------------
    def apply_schedule(self) -> None:
        """Follow the bandwidth schedule (each housekeeping round, and when the cap changes):
        the manager-wide cap in force now; a limit of 0 stops background jobs
        (BG_E_BLOCKED_BY_POLICY, not counted as an error) until it ends, then they continue."""
        p = self._policy
        key = (p.bandwidth_schedule, p.max_bandwidth)
        if self._schedule is None or key != self._schedule_key:
            self._schedule, self._schedule_key = p.schedule(), key
        limit = self._schedule.limit_at(p.local_time())
        if limit != self.budgets.cap:  # each housekeeping round: re-time only on change
            self.budgets.set_max_bandwidth(limit)
            self.pacer.retune()
        blocked = limit == 0
        if blocked == self._blocked:
            return
        self._blocked = blocked
        if blocked:
            for job_id in self.running:
                rec = self._records.jobs.get(job_id)
                if rec is not None and rec.priority is not JobPriority.FOREGROUND:
                    task = asyncio.ensure_future(self._stop_and_block(rec))
                    task.add_done_callback(_retrieve)
            return
        for rec in list(self._records.jobs.values()):
            if rec.state is JobState.TRANSIENT_ERROR and _blocked_by_policy(rec):
                self.cancel_retry(rec.id)
                with contextlib.suppress(BitsError):  # busy: its retry timer picks it up
                    self._records.set_state(rec, Event.RETRY, also=_clear_retry(rec))
                    self.queue(rec)

    def bandwidth(self, rec: JobRecord) -> BandwidthStatus:
        """What limits the job's transfer now, its cap and its current rate (for panels)."""
        foreground = rec.priority is JobPriority.FOREGROUND
        cap = rec.settings.max_bandwidth
        if not foreground and self.budgets.cap is not None:
            cap = self.budgets.cap if cap is None else min(cap, self.budgets.cap)
        rate = self.pacer.job_rate(rec.id) if rec.state in RUNNING else None
        state: str | None = None
        if rec.state is JobState.TRANSIENT_ERROR and _blocked_by_policy(rec):
            state = "blocked by policy"
        elif rec.state in RUNNING and not foreground and self.pacer.yielding:
            state = "yielding"
        elif rec.state in RUNNING and cap is not None and rate is not None and rate >= 0.8 * cap:
            state = "throttled"
        return BandwidthStatus(state, cap, rate)

    def _block(self, rec: JobRecord) -> None:
        """TRANSIENT_ERROR with BG_E_BLOCKED_BY_POLICY, not counted in ``error_count``."""

        def record() -> None:
            rec.error = ErrorRecord(
                _codes.BG_E_BLOCKED_BY_POLICY,
                ErrorContext.GENERAL_QUEUE_MANAGER,
                None,
                None,
                "a bandwidth limit of 0 is in force for background jobs; the job continues "
                "by itself when it ends",
            )
            rec.retry_at = None

        try:
            self._records.set_state(rec, Event.TRANSIENT_FAILURE, also=record)
        except BitsError:
            self._later(_RERUN_DELAY, rec)

    async def _stop_and_block(self, rec: JobRecord) -> None:
        await self.stop(rec.id)
        if rec.state in RUNNING and self._blocked:
            with contextlib.suppress(BitsError):
                await self._records.set_state_patiently(rec, Event.STOP)
            self._block(rec)

    async def invalidate(self, rec: JobRecord, f: FileRecord) -> None:
        """SetValidationState(FALSE) on a transferred file: the job stops and goes to ERROR
        with BG_E_VALIDATION_FAILED, the file back to 0 bytes (resume() fetches it again).

        One write: the table's INVALIDATED move (any live state → ERROR) with the file's reset.
        """
        await self.stop(rec.id)
        self._scheduler.dequeue(rec.id)
        self.cancel_retry(rec.id)
        failure = validation_failure(f, "the application declared it invalid")

        def reset() -> None:
            f.bytes_transferred = 0
            f.transferred = False
            f.hash = None
            f.validation_state = False
            f.etag = f.last_modified = None
            if f.ranges is None:
                f.bytes_total = None
            rec.transfer_completed = None

        def record() -> None:
            reset()
            rec.error = ErrorRecord(
                failure.code, failure.context, f.index, failure.protocol, failure.message
            )
            rec.error_count += 1
            rec.retry_at = None

        await self._records.set_state_patiently(rec, Event.INVALIDATED, [f], also=record)
        with contextlib.suppress(TransferFailure):  # it restarts from 0 when it runs anyway
            discard_file(f)  # after the store says so: a crash in between restarts it too
        self._events.notify_final(rec)

    # -- retry timers ---------------------------------------------------------------------------
    def arm_retry(self, rec: JobRecord, delay: float) -> None:
        """Move a TRANSIENT_ERROR job back to QUEUED after *delay* seconds."""
        self.cancel_retry(rec.id)
        self._timers[rec.id] = self._loop.call_later(max(0.0, delay), self._retry_due, rec.id)

    def cancel_retry(self, job_id: uuid.UUID) -> None:
        """Disarm the job's retry timer, if any."""
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def cancel_all_retries(self) -> None:
        """The manager closes: no timer fires any more."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _retry_due(self, job_id: uuid.UUID) -> None:
        self._timers.pop(job_id, None)
        rec = self._records.jobs.get(job_id)
        if rec is None:
            return
        try:
            if not self._records.refresh(rec):  # another process may have ended it
                self.forget(rec)
                return
            if rec.state is not JobState.TRANSIENT_ERROR:
                return
            s = rec.settings
            if (
                rec.first_failure_at is not None
                and time.time() >= rec.first_failure_at + s.no_progress_timeout
            ):
                self._records.set_state(rec, Event.FATAL_FAILURE, also=_clear_retry(rec))
                self._events.notify_final(rec)  # no progress for too long
                return
            self._records.set_state(rec, Event.RETRY, also=_clear_retry(rec))
        except JobNotFoundError:
            self.forget(rec)
            return
        except BitsError:  # the store is busy: look again shortly
            self.arm_retry(rec, _RERUN_DELAY)
            return
        self.queue(rec)

    # -- one job's run --------------------------------------------------------------------------
    def _file_context(self, rec: JobRecord) -> FileContext:
        s = rec.settings
        if s.proxy_usage == ProxyUsage.OVERRIDE and s.proxy_list:
            try:  # set_proxy_settings checks it; a store written by an older bitsnb may not
                check_proxy_list(s.proxy_list)
            except BitsError as exc:
                raise TransferFailure(
                    exc.code, ErrorContext.GENERAL_TRANSPORT, transient=False, message=str(exc)
                ) from exc
        opts = request_options(
            rec.settings, self._secrets.get(rec.id), rec.files[0].remote_name if rec.files else None
        )
        records, events = self._records, self._events

        def on_progress(f: FileRecord) -> None:
            if rec.first_failure_at is not None:
                rec.first_failure_at = None  # progress resets the no-progress timer
            events.progressed(rec)

        def on_connected() -> None:
            if rec.state is JobState.CONNECTING:
                rec.error = None  # BITS keeps the error until the job transfers again
                records.move_in_memory(rec, Event.CONNECTED)  # recorded by the next write

        def on_checkpoint(f: FileRecord, durable: int) -> None:
            rec.touch()
            records.try_save(rec, [dataclasses.replace(f, bytes_transferred=durable)])

        def on_validators(f: FileRecord) -> None:
            if f.bytes_total is None or f.bytes_total > 4 * 1024 * 1024:
                records.try_save(rec, [f])  # so a crash before the first checkpoint can resume

        def on_restart(f: FileRecord) -> None:
            records.try_save(rec, [f])
            events.emit(rec, "progress")

        self.budgets.set_job_rate(rec.id, s.max_bandwidth)  # kept in the store: survives restarts
        host = urlsplit(rec.files[0].remote_name).netloc if rec.files else ""
        foreground = rec.priority is JobPriority.FOREGROUND
        return FileContext(
            headers=opts.headers,
            auth=opts.auth,
            proxy=opts.proxy,
            trust_env=opts.trust_env,
            dynamic_content=rec.settings.dynamic_content,
            on_connected=on_connected,
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
            on_restart=on_restart,
            on_validators=on_validators,
            save_segments=lambda f: records.try_save(rec, [f]),
            should_yield=lambda: self._scheduler.should_yield(rec.id, rec.priority),
            foreground=foreground,
            throttle=self.budgets.throttle(rec.id, host, foreground=foreground),
            watch=functools.partial(self.pacer.watch, rec.id, foreground),
            may_add_connection=functools.partial(self.pacer.may_add_connection, foreground, rec.id),
            admit=functools.partial(self.pacer.admit, rec.id, foreground),
            on_received=self.pacer.received,
        )

    async def _run(self, rec: JobRecord, *, started: bool) -> None:
        """Transfer a job's files until done, failed, pre-empted or stopped (*started*: it is
        CONNECTING already, with its lease)."""
        began = time.monotonic()
        stopped = False
        try:
            if not started:
                if rec.state in RUNNING:  # taken over from a process stopped mid-transfer
                    await self._records.set_state_patiently(rec, Event.TAKE_OVER)
                await self._records.set_state_patiently(rec, Event.START)
            ctx = self._file_context(rec)
            self.pacer.size_new_connections(rec.id, rec.priority is JobPriority.FOREGROUND)
            remaining = rec.settings.maximum_download_time - rec.active_seconds
            async with asyncio.timeout(max(0.0, remaining)):
                if rec.type is JobType.DOWNLOAD:
                    await self.downloads.transfer(rec, ctx)
                else:
                    await self.uploads.transfer(rec, ctx)
            if rec.state is not JobState.TRANSFERRED:  # (downloads: the last file did it)
                await self._end_transfer(rec)
        except YieldSlice:
            with contextlib.suppress(BitsError):  # the store refused: it runs again later
                await self._records.set_state_patiently(rec, Event.SLICE_END)
        except TimeoutError:
            if rec.state is not JobState.TRANSFERRED:  # (time ran out just after the end)
                await self._fail(
                    rec,
                    TransferFailure(
                        _codes.BG_E_MAXDOWNLOAD_TIMEOUT,
                        ErrorContext.GENERAL_QUEUE_MANAGER,
                        transient=False,
                        message="the job exceeded its maximum download time",
                        protocol=None,
                    ),
                )
        except TransferFailure as failure:
            await self._fail(rec, failure, failure.file)
        except StoreBusyError:
            log.warning("bitsnb: the store stayed locked; job %s runs again shortly", rec.id)
        except asyncio.CancelledError:
            stopped = True
            raise
        except Exception as exc:  # a bug must not kill the queue: the job says what happened
            if not isinstance(exc, BitsError):
                log.exception("bitsnb transfer failed unexpectedly")
            await self._fail(
                rec,
                TransferFailure(
                    exc.code if isinstance(exc, BitsError) else _codes.E_FAIL,
                    ErrorContext.GENERAL_QUEUE_MANAGER,
                    transient=False,
                    message=str(exc)
                    if isinstance(exc, BitsError)
                    else f"unexpected {type(exc).__name__}: {exc}",
                    protocol=None,
                ),
            )
        finally:
            rec.active_seconds += time.monotonic() - began
            self._runs.pop(rec.id, None)
            self._scheduler.stopped(rec.id)
            self._after_run(rec, stopped)

    def _after_run(self, rec: JobRecord, stopped: bool) -> None:
        if not self.accepting or self._records.jobs.get(rec.id) is not rec:
            return
        if rec.state is JobState.QUEUED:
            self._scheduler.enqueue(rec.id, rec.priority)  # its slice ended: its queue's tail
        elif rec.state in RUNNING and not stopped:
            self._later(_RERUN_DELAY, rec)  # its end could not be recorded: again, later
        elif rec.state not in STARTABLE:
            with contextlib.suppress(BitsError):
                if self._records.store.holds(rec.id):
                    self._records.store.release(rec.id)  # stopped from outside
        self._loop.call_soon(self.pump)

    async def _fail(
        self, rec: JobRecord, failure: TransferFailure, f: FileRecord | None = None
    ) -> None:
        """TRANSIENT_ERROR (with a retry timer) or ERROR, as the failure and the job's
        no-progress timeout say; if the store refuses, the job stays as it is."""
        now = time.time()
        s = rec.settings
        error = ErrorRecord(
            failure.code,
            failure.context,
            f.index if f is not None else None,
            failure.protocol,
            failure.message,
        )
        first_failure = rec.first_failure_at if rec.first_failure_at is not None else now
        retry_at: float | None = None
        if failure.transient and s.no_progress_timeout > 0:
            delay = max(s.minimum_retry_delay, failure.retry_after or 0.0)
            deadline = first_failure + s.no_progress_timeout
            if s.minimum_retry_delay <= s.no_progress_timeout and now < deadline:
                retry_at = min(now + delay, deadline)

        def record() -> None:
            rec.error = error
            rec.error_count += 1
            rec.retry_at = retry_at
            if retry_at is not None:
                rec.first_failure_at = first_failure

        files = [f] if f is not None else []
        event = Event.TRANSIENT_FAILURE if retry_at is not None else Event.FATAL_FAILURE
        try:
            await self._records.set_state_patiently(rec, event, files, also=record)
        except BitsError:
            log.warning("bitsnb could not record the failure of job %s; it runs again", rec.id)
            return
        if retry_at is not None:
            self.arm_retry(rec, retry_at - now)
        else:
            self._events.notify_final(rec)

    async def _end_transfer(self, rec: JobRecord) -> None:
        """Every file is durable (an upload, or files transferred before): TRANSFERRED."""

        def record() -> None:
            rec.transfer_completed = time.time()
            rec.first_failure_at = None
            rec.retry_at = None

        await self._records.set_state_patiently(rec, Event.ALL_TRANSFERRED, also=record)
        self._events.notify_final(rec)


def _blocked_by_policy(rec: JobRecord) -> bool:
    return rec.error is not None and rec.error.code == _codes.BG_E_BLOCKED_BY_POLICY


def _retrieve(task: asyncio.Future[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


def _clear_retry(rec: JobRecord) -> Callable[[], None]:
    def clear() -> None:
        rec.retry_at = None

    return clear
