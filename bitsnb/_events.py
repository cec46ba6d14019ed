"""Events and notifications: listeners, waiters, the notify interface and the notify command.

A job's changes reach three audiences: listeners (``subscribe``: panels, tests), coroutines
waiting for a final state (``wait``), and the job's BITS notifications (its notify interface
and command line, filtered by its notify flags). Nothing here touches the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import shlex
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from ._enums import JobState, NotifyFlags
from ._records import FileRecord, JobRecord, error_info, file_info

__all__ = ["WAIT_DONE", "Events", "JobEvent"]

log = logging.getLogger("bitsnb")

WAIT_DONE = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.CANCELLED, JobState.ACKNOWLEDGED}
)
_PROGRESS_EVERY = 0.1  # seconds between "progress" events of one job
_MODIFICATION_EVERY = 0.5  # seconds between job_modification notifications of one job


@dataclass(frozen=True)
class JobEvent:
    """Something happened to a job: ``kind`` is created, state, progress, modified or removed."""

    job_id: uuid.UUID
    kind: str
    state: JobState


class Events:
    """Delivers a job's events; *handle* gives the ``AsyncJob`` a notification is about, and
    *spawn* runs a coroutine in the background (tracked and cancelled by the manager)."""

    def __init__(
        self,
        owner: str,
        handle: Callable[[JobRecord], Any],
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._owner = owner
        self._handle = handle
        self._spawn = spawn
        self._listeners: list[Callable[[JobEvent], None]] = []
        self._waiters: dict[uuid.UUID, list[asyncio.Future[None]]] = {}
        self._targets: dict[uuid.UUID, Any] = {}
        self._last_progress: dict[uuid.UUID, float] = {}
        self._last_modification: dict[uuid.UUID, float] = {}

    # -- listeners and waiters ----------------------------------------------------------------
    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call *listener* for every job event; returns an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, rec: JobRecord, kind: str) -> None:
        """Tell listeners (and, for a state change, waiters) about *rec*."""
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

    def progressed(self, rec: JobRecord) -> None:
        """Bytes arrived: a "progress" event, at most every 0.1 s per job."""
        now = time.monotonic()
        if now - self._last_progress.get(rec.id, 0.0) >= _PROGRESS_EVERY:
            self._last_progress[rec.id] = now
            self.emit(rec, "progress")

    async def wait(self, rec: JobRecord, timeout: float | None) -> JobState:
        """Return once *rec* is TRANSFERRED, ERROR, CANCELLED or ACKNOWLEDGED."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while rec.state not in WAIT_DONE:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {rec.id} is still {rec.state.name}")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(rec.id, []).append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"job {rec.id} is still {rec.state.name} after {timeout} s"
                ) from None
        return rec.state

    def cancel_waiters(self) -> None:
        """The manager closes: every pending wait ends with CancelledError."""
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    def forget(self, job_id: uuid.UUID) -> None:
        """The job left the queue: drop its notify target and throttling state."""
        self._targets.pop(job_id, None)
        self._last_progress.pop(job_id, None)
        self._last_modification.pop(job_id, None)

    # -- BITS notifications ---------------------------------------------------------------------
    def set_target(self, rec: JobRecord, target: Any) -> None:
        """SetNotifyInterface (None removes); an event that already happened is delivered now."""
        if target is None:
            self._targets.pop(rec.id, None)
            return
        self._targets[rec.id] = target
        if rec.state in (JobState.TRANSFERRED, JobState.ERROR):
            self.notify_final(rec)

    def _deliver(
        self,
        rec: JobRecord,
        method: str,
        *args: Any,
        fallback: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Call the notify interface's *method* in the background; False when it has none.
        *fallback* runs when the callback raises (BITS then falls back to the command line)."""
        target = self._targets.get(rec.id)
        fn = getattr(target, method, None) if target is not None else None
        if fn is None:
            return False
        job = self._handle(rec)

        async def call() -> None:
            try:
                result = fn(job, *args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("bitsnb notification %s failed", method)
                if fallback is not None:
                    await fallback()

        self._spawn(call())
        return True

    def _notify_modification(self, rec: JobRecord) -> None:
        if rec.id not in self._targets:
            return  # the usual case: no notify interface, nothing to deliver
        flags = NotifyFlags(rec.settings.notify_flags)
        if NotifyFlags.DISABLE in flags or NotifyFlags.JOB_MODIFICATION not in flags:
            return
        if rec.id not in self._targets or rec.state in (JobState.TRANSFERRED, JobState.ERROR):
            return  # BITS sends no modification for the moves into TRANSFERRED or ERROR
        now = time.monotonic()
        if now - self._last_modification.get(rec.id, 0.0) < _MODIFICATION_EVERY:
            return
        self._last_modification[rec.id] = now
        self._deliver(rec, "job_modification")

    def notify_file(self, rec: JobRecord, f: FileRecord) -> None:
        """A file is transferred: a progress event and FILE_TRANSFERRED."""
        self.emit(rec, "progress")
        flags = NotifyFlags(rec.settings.notify_flags)
        if NotifyFlags.DISABLE not in flags and NotifyFlags.FILE_TRANSFERRED in flags:
            self._deliver(rec, "file_transferred", file_info(f))

    def notify_final(self, rec: JobRecord) -> None:
        """TRANSFERRED or ERROR: JOB_TRANSFERRED / JOB_ERROR to the callback; the notify command
        line runs instead when no callback handles the event, or when the callback raises (as
        BITS does), and runs again after the retry delay while it exits non-zero."""
        flags = NotifyFlags(rec.settings.notify_flags)
        if NotifyFlags.DISABLE in flags:
            return
        state = rec.state
        if state is JobState.TRANSFERRED and NotifyFlags.JOB_TRANSFERRED in flags:
            method, args = "job_transferred", cast("tuple[Any, ...]", ())
        elif state is JobState.ERROR and NotifyFlags.JOB_ERROR in flags:
            method, args = "job_error", (error_info(rec),)
        else:
            return
        cmd = rec.settings.notify_cmd_line if rec.owner == self._owner else None

        async def run_command() -> None:
            if cmd is not None:
                await _run_until_done(rec, state, cmd)

        if not self._deliver(rec, method, *args, fallback=run_command) and cmd is not None:
            self._spawn(run_command())


_MAX_COMMAND_RUNS = 100


async def _run_until_done(rec: JobRecord, state: JobState, cmd: tuple[str, str]) -> None:
    """Run the notify command line; while it exits non-zero and the job is still in *state*,
    run it again after the job's retry delay (at most ``_MAX_COMMAND_RUNS`` times)."""
    for _ in range(_MAX_COMMAND_RUNS):
        if await _run_command(*cmd) == 0:
            return
        await asyncio.sleep(rec.settings.minimum_retry_delay)
        if rec.state is not state:
            return  # the application completed, cancelled or resumed it meanwhile


async def _run_command(program: str, parameters: str) -> int:
    """The notify program's exit status (-1 when it could not start)."""
    argv = shlex.split(parameters) if parameters else [program]
    try:
        proc = await asyncio.create_subprocess_exec(
            program,
            *argv[1:],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait()
    except OSError:
        log.exception("bitsnb notify command line failed to start")
        return -1
