"""Live progress on the command line: one job's bar (or plain lines), the wait, the outcome.

Progress is polled from ``job.progress`` a few times a second, never per chunk; a state change
wakes the wait at once.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.align import AlignMethod
from rich.console import RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from ._cli_output import EXIT_OK, EXIT_TRANSFER_FAILED, Output, safe_text
from ._cli_render import error_text, short_id, state_text
from ._enums import JobState
from ._format import RateEstimator, format_progress, format_rate
from ._sync import Job, Manager

__all__ = ["DONE_STATES", "Watcher", "report_outcome", "watch_job"]

DONE_STATES = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.CANCELLED, JobState.ACKNOWLEDGED}
)


class _Field(ProgressColumn):
    """One of the task's fields, shown as it is (a ``Text`` keeps its colour; no markup)."""

    def __init__(
        self,
        name: str,
        *,
        justify: AlignMethod = "left",
        width: int | None = None,
        table_column: Column | None = None,
    ) -> None:
        super().__init__(table_column)
        self._name = name
        self._justify: AlignMethod = justify
        self._width = width

    def render(self, task: Task) -> Text:
        value = task.fields.get(self._name, "")
        text = value.copy() if isinstance(value, Text) else Text(str(value))
        if self._width is not None:
            text.align(self._justify, self._width)
        return text


class Watcher:
    """Shows one job's progress: a rich bar on a terminal, plain lines otherwise.

    ``refresh()`` is called by the polling loop; the bar itself redraws at most 4 times a second.
    """

    _BAR_UNITS = 1000

    def __init__(
        self, out: Output, job: Job, *, to_stderr: bool = False, explain_errors: bool = True
    ) -> None:
        self._console = out.err if to_stderr else out.out
        self._explain = explain_errors
        self._last_error: tuple[int, int] | None = None
        self._job = job
        self._live = self._console.is_terminal
        self._speed = RateEstimator(window=3.0)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_key: tuple[object, ...] | None = None
        self._last_line = 0.0
        self._last_bytes = -1

    def __enter__(self) -> Watcher:
        if self._live:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=30),
                _Field("pct", justify="right", width=4),
                _Field("files"),
                _Field("bytes"),
                _Field("speed"),
                _Field("state", table_column=Column(no_wrap=True, overflow="ellipsis")),
                console=self._console,
                refresh_per_second=4,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self._label(), total=self._BAR_UNITS, pct="", files="", bytes="", speed="", state=""
            )
        self.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh(force=True)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _label(self) -> str:
        name = safe_text(self._job.display_name)
        return name if len(name) <= 24 else name[:23] + "…"

    def print(self, renderable: RenderableType, *, style: str | None = None) -> None:
        """Print above the bar (or as a plain line)."""
        self._console.print(renderable, style=style)

    def refresh(self, *, force: bool = False) -> None:
        """Read the job's progress and show it."""
        job = self._job
        p = job.progress
        state = job.state
        now = time.monotonic()
        speed = self._speed.update(p.bytes_transferred, now)
        speed_text = format_rate(speed) if speed else ""
        files = f"{p.files_transferred}/{p.files_total} files"
        size = format_progress(p.bytes_transferred, p.bytes_total)
        err = job.error
        if state is JobState.TRANSIENT_ERROR and err is not None:
            status = f"{state.name}, retrying"
            if self._live and self._explain and self._last_error != (err.code, job.error_count):
                self._last_error = (err.code, job.error_count)
                detail = f": {safe_text(err.message)}" if err.message else ""
                self.print(f"retrying after {err.name} (0x{err.code:08X}){detail}", style="yellow")
            if not self._live:
                status = f"{state.name}: {err.name}, retrying"
        elif state is JobState.ERROR and err is not None:
            status = f"{state.name}: {err.name}"
        else:
            status = state.name
        if p.percent is not None:
            fraction = p.percent / 100.0
            pct = f"{p.percent:.0f}%"
        else:  # a size is still unknown: measure by files
            fraction = p.files_transferred / p.files_total if p.files_total else 0.0
            pct = "?"
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                completed=round(fraction * self._BAR_UNITS),
                pct=pct,
                files=files,
                bytes=size,
                speed=speed_text,
                state=state_text(state, status),
            )
            return
        # plain lines: on every change of state or file count, else every 2 s while bytes move
        key = (state, p.files_transferred, status)
        moved = p.bytes_transferred != self._last_bytes
        if key == self._last_key and not (moved and (force or now - self._last_line >= 2.0)):
            return
        self._last_key = key
        self._last_line = now
        self._last_bytes = p.bytes_transferred
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        parts = [stamp, self._label(), status, files, size]
        if p.percent is not None:
            parts.append(pct)
        if speed_text:
            parts.append(speed_text)
        self._console.print("  ".join(parts))


def watch_job(
    mgr: Manager,
    job: Job,
    watcher: Watcher,
    *,
    timeout: float | None = None,
    until: frozenset[JobState] = DONE_STATES,
    on_tick: Callable[[], None] | None = None,
    tick: float = 0.25,
) -> JobState:
    """Poll *job* until its state is in *until*; wakes at once on a state change.

    Raises ``TimeoutError`` after *timeout* seconds. *on_tick* runs every poll (the demo uses it
    to suspend the job once).
    """
    changed = threading.Event()
    job_id = job.id

    def listener(event: Any) -> None:  # runs on the manager's loop thread
        if event.job_id == job_id and event.kind in ("state", "removed"):
            changed.set()

    unsubscribe = mgr.subscribe(listener)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            changed.clear()
            state = job.state
            watcher.refresh()
            if state in until:
                return state
            if on_tick is not None:
                on_tick()
            wait = tick
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"job {short_id(job)} is still {job.state.name} after {timeout:g} s"
                    )
                wait = min(wait, remaining)
            changed.wait(wait)
    finally:
        unsubscribe()


def report_outcome(out: Output, job: Job, state: JobState) -> int:
    """Exit status for a job that stopped waiting: 0 transferred, 1 error or cancelled."""
    if state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED):
        return EXIT_OK
    if state is JobState.ERROR:
        err = job.error
        if err is None:
            out.error(f"job {short_id(job)} {job.display_name!r} ended in ERROR")
            return EXIT_TRANSFER_FAILED
        out.error(
            f"job {short_id(job)} {job.display_name!r} ended in ERROR: "
            f"{err.name} (0x{err.code:08X}): {error_text(err, job.type)}"
        )
        if err.message:
            out.note(f"  {safe_text(err.message)}")
        if err.file is not None:
            out.note(f"  file: {safe_text(err.file.remote_name)}")
        out.note(f"  context: {err.context.name}: {err.context_description}")
        return EXIT_TRANSFER_FAILED
    out.error(f"job {short_id(job)} {job.display_name!r} is {state.name}")
    return EXIT_TRANSFER_FAILED
