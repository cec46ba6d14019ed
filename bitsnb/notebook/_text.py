"""Plain-text and colour rules shared by the widgets and their text fallback (no ipywidgets here)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .._enums import JobState
from .._format import format_bytes, format_eta, format_progress, format_rate
from .._models import ErrorInfo, JobProgress

if TYPE_CHECKING:
    import uuid

__all__ = [
    "ACTIVE_STATES",
    "BAR_STYLE",
    "FILTERS",
    "STYLE_COLOUR",
    "JobLike",
    "bar_style",
    "error_text",
    "escape",
    "format_bytes",
    "format_eta",
    "format_rate",
    "job_line",
    "progress_text",
]

BAR_STYLE: dict[JobState, str] = {
    JobState.QUEUED: "info",
    JobState.CONNECTING: "",
    JobState.TRANSFERRING: "",
    JobState.SUSPENDED: "info",
    JobState.ERROR: "danger",
    JobState.TRANSIENT_ERROR: "warning",
    JobState.TRANSFERRED: "success",
    JobState.ACKNOWLEDGED: "success",
    JobState.CANCELLED: "danger",
}
"""ipywidgets ``bar_style`` per state (tqdm's convention: red for errors, green when done)."""

STYLE_COLOUR: dict[str, str] = {
    "": "#2196f3",
    "info": "#00bcd4",
    "success": "#4caf50",
    "warning": "#ff9800",
    "danger": "#f44336",
}
"""The colours the Jupyter widget CSS uses for each bar style, for HTML rows and labels."""

ACTIVE_STATES = frozenset(
    {JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING, JobState.TRANSIENT_ERROR}
)

FILTERS: dict[str, frozenset[JobState] | None] = {
    "all": None,
    "active": ACTIVE_STATES,
    "suspended": frozenset({JobState.SUSPENDED}),
    "transferred": frozenset({JobState.TRANSFERRED}),
    "error": frozenset({JobState.ERROR, JobState.TRANSIENT_ERROR}),
    "finished": frozenset({JobState.ACKNOWLEDGED, JobState.CANCELLED}),
}
"""Queue panel filters: name → the states shown (None = every state)."""


class JobLike(Protocol):
    """What the panels read from a job: ``bitsnb.Job`` and ``bitsnb.AsyncJob`` both fit."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def display_name(self) -> str: ...
    @property
    def state(self) -> JobState: ...
    @property
    def progress(self) -> JobProgress: ...
    @property
    def error(self) -> ErrorInfo | None: ...


def bar_style(state: JobState, previous: str | None = None) -> str:
    """The bar style for *state*, given the style shown before.

    It follows the state, never the percentage (a job cancelled at 100 % stays red), and
    'success' never overwrites 'danger': a job completed straight from ERROR (a partial
    complete) stays red. A job that was resumed after an error passes through QUEUED first.
    """
    style = BAR_STYLE.get(state, "")
    if previous == "danger" and style == "success" and state is JobState.ACKNOWLEDGED:
        return "danger"
    return style


def progress_text(p: JobProgress) -> str:
    """``'45% 1.2 MB / 3.0 MB'``, or ``'? 1.2 MB / ?'`` while the total is unknown."""
    pct = p.percent
    head = "?" if pct is None else f"{pct:.0f}%"
    return f"{head} {format_progress(p.bytes_transferred, p.bytes_total)}"


def error_text(err: ErrorInfo | None) -> str:
    """``'0x80190194 BG_E_HTTP_ERROR_404: description'`` or ``''``."""
    if err is None:
        return ""
    return f"0x{err.code:08X} {err.name}: {err.description}"


def job_line(job: JobLike) -> str:
    """One readable line for a job: name, state, percent, bytes, files (and the error)."""
    p = job.progress
    line = (
        f"{job.display_name}  {job.state.name}  {progress_text(p)}  "
        f"files {p.files_transferred}/{p.files_total}"
    )
    if job.state in (JobState.ERROR, JobState.TRANSIENT_ERROR):
        err = error_text(job.error)
        if err:
            line += f"  [{err}]"
    return line


def escape(text: str) -> str:
    """HTML-escape user text (display names, error messages)."""
    return html.escape(text, quote=True)


def queue_text(jobs: Sequence[JobLike], totals: str, width: int = 100) -> str:
    """The queue as plain text for front ends without widgets, drawn by rich (as the CLI is)."""
    import io

    from rich.console import Console
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
    for name, justify in (("JOB", "left"), ("STATE", "left"), ("PROGRESS", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "JOB")  # type: ignore[arg-type]
    table.add_column("BYTES", justify="right", no_wrap=True)
    table.add_column("FILES", justify="right", no_wrap=True)
    for job in jobs:
        p = job.progress
        pct = p.percent
        bar = ProgressBar(total=100.0, completed=pct or 0.0, width=16, pulse=pct is None)
        table.add_row(
            job.display_name,
            job.state.name,
            bar,
            progress_text(p),
            f"{p.files_transferred}/{p.files_total}",
        )
    if not jobs:
        table.caption = "(no jobs)"
    buf = io.StringIO()
    console = Console(
        file=buf, width=width, color_system=None, force_terminal=False, force_jupyter=False
    )  # in a kernel rich would otherwise display HTML instead of writing to buf
    console.print(table)
    return buf.getvalue().rstrip() + "\n" + totals
