"""What the panels say and in which colour, as plain rules shared by the widgets, their saved
HTML and their text fallback (no ipywidgets here).

- **Colours**: one per state (``STATE_COLOUR``), each a JupyterLab theme variable with a light
  fallback, so a panel follows the light and the dark theme and a colour never means two things.
  ERROR is red at any percentage.
- **Progress**: ``estimate`` gives a percentage for every job. The byte total is exact once every
  file's size is known; before that, a multi-file job's total is estimated from the files whose
  size is known (their mean for the others), and until the first size is known by file count.
  Estimated totals read ``~``.
- **Errors**: ``error_summary`` says what failed once: name and code, the table's description
  (without the upload-only remark on a download), the server's message with the URL shortened in
  the middle, and for TRANSIENT_ERROR when it retries by itself.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .._enums import JobState, JobType
from .._format import (
    format_bytes,
    format_duration,
    format_eta,
    format_rate,
    shorten_middle,
)
from .._models import ErrorInfo, FileProgress, JobProgress, JobTimes

if TYPE_CHECKING:
    import uuid

__all__ = [
    "ACTIVE_STATES",
    "BAR_STYLE",
    "FILTERS",
    "STATE_COLOUR",
    "TRACK_COLOUR",
    "Estimate",
    "JobLike",
    "bar_style",
    "error_summary",
    "error_text",
    "escape",
    "estimate",
    "finished_text",
    "format_bytes",
    "format_eta",
    "format_rate",
    "job_line",
    "progress_text",
    "queue_text",
    "state_counts",
    "text_bar",
]

BAR_STYLE: dict[JobState, str] = {
    JobState.QUEUED: "",
    JobState.CONNECTING: "",
    JobState.TRANSFERRING: "",
    JobState.SUSPENDED: "info",
    JobState.ERROR: "danger",
    JobState.TRANSIENT_ERROR: "warning",
    JobState.TRANSFERRED: "success",
    JobState.ACKNOWLEDGED: "success",
    JobState.CANCELLED: "danger",
}
"""ipywidgets ``bar_style`` per state (tqdm's convention: red for errors, green when done).
The bar's own colour is ``STATE_COLOUR``; the style is kept for front ends without CSS variables."""

STATE_COLOUR: dict[JobState, str] = {
    JobState.QUEUED: "var(--jp-brand-color3, #bbdefb)",
    JobState.CONNECTING: "var(--jp-brand-color2, #64b5f6)",
    JobState.TRANSFERRING: "var(--jp-brand-color1, #1976d2)",
    JobState.SUSPENDED: "var(--jp-info-color1, #0097a7)",
    JobState.ERROR: "var(--jp-error-color1, #d32f2f)",
    JobState.TRANSIENT_ERROR: "var(--jp-warn-color1, #f57c00)",
    JobState.TRANSFERRED: "var(--jp-success-color2, #81c784)",
    JobState.ACKNOWLEDGED: "var(--jp-success-color1, #388e3c)",
    JobState.CANCELLED: "var(--jp-layout-color4, #757575)",
}
"""One colour per state, from JupyterLab's theme variables (light-theme values as fallback):
blues while queued → connecting → transferring, cyan only for SUSPENDED, orange while retrying,
red for ERROR, light green when transferred (waiting for Complete), green when acknowledged,
grey when cancelled."""

TRACK_COLOUR = "var(--jp-layout-color3, #bdbdbd)"
"""The empty part of a bar: the theme's third layout colour (a mid grey in both themes, so it
shows on the table's striped rows too; never a fixed light grey that glows in the dark theme)."""

ACTIVE_STATES = frozenset(
    {JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING, JobState.TRANSIENT_ERROR}
)

FILTERS: dict[str, frozenset[JobState] | None] = {
    "all": None,
    "active": frozenset({JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING}),
    "suspended": frozenset({JobState.SUSPENDED}),
    "transferred": frozenset({JobState.TRANSFERRED}),
    "error": frozenset({JobState.ERROR, JobState.TRANSIENT_ERROR}),
    "finished": frozenset({JobState.ACKNOWLEDGED, JobState.CANCELLED}),
}
"""Queue panel filters: name → the states shown (None = every state). The groups other than
"all" do not overlap, so the totals count each job once."""

_GROUPS = ("active", "suspended", "transferred", "error", "finished")
_GROUP_OF: dict[JobState, str] = {
    state: group for group in _GROUPS for state in (FILTERS[group] or ())
}
_UPLOAD_REMARK = re.compile(r"\s*\(IIS7 upload:[^)]*\)")


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


def state_counts(states: Sequence[JobState]) -> dict[str, int]:
    """How many jobs fall in each filter group (active, suspended, transferred, error,
    finished): every job is counted exactly once, by its state."""
    counts = dict.fromkeys(_GROUPS, 0)
    for state in states:
        counts[_GROUP_OF[state]] += 1
    return counts


# -- progress ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A job's progress as a share: exact when every size is known, else estimated.

    ``total`` is the byte total (estimated when ``estimated``; None when no size is known at
    all), ``fraction`` in 0…1 (None when there is nothing to measure: no files yet).
    """

    fraction: float | None
    total: int | None
    estimated: bool

    @property
    def percent_text(self) -> str:
        """``'35%'``, ``'~35%'`` for an estimate, ``'?'`` when nothing is known."""
        if self.fraction is None:
            return "?"
        pct = f"{100.0 * self.fraction:.0f}%"
        return f"~{pct}" if self.estimated else pct

    @property
    def total_text(self) -> str:
        """The total as text: ``'70.0 MB'``, ``'~70.0 MB'`` or ``'?'``."""
        if self.total is None:
            return "?"
        return ("~" if self.estimated else "") + format_bytes(self.total)


def estimate(p: JobProgress, files: Sequence[FileProgress] | None = None) -> Estimate:
    """How far *p* is, given the files' own progress when some size is still unknown.

    Sizes become known as files start; until every one is, the unknown ones are counted at the
    mean of the known ones. With no size known (or no *files*), the share of files done.
    """
    if p.bytes_total is not None:
        pct = p.percent
        return Estimate(
            None if pct is None else max(0.0, min(1.0, pct / 100.0)), p.bytes_total, False
        )
    if files:
        known = [f.bytes_total for f in files if f.bytes_total is not None]
        if known:
            unknown = len(files) - len(known)
            total = sum(known) + round(unknown * sum(known) / len(known))
            done = sum(f.bytes_transferred for f in files)
            total = max(total, done)
            return Estimate(done / total if total else 1.0, total, True)
    if p.files_total:
        return Estimate(p.files_transferred / p.files_total, None, True)
    return Estimate(None, None, True)


def progress_text(p: JobProgress, est: Estimate | None = None) -> str:
    """``'45% 1.2 MB / 3.0 MB'``; with an estimate ``'~45% 1.2 MB / ~3.0 MB'``."""
    e = est if est is not None else estimate(p)
    return f"{e.percent_text} {format_bytes(p.bytes_transferred)} / {e.total_text}"


def files_text(p: JobProgress) -> str:
    """``'7/20 files'``."""
    return f"{p.files_transferred}/{p.files_total} file{'s' if p.files_total != 1 else ''}"


def finished_text(p: JobProgress, times: JobTimes | None) -> str:
    """What a transferred job took: ``'476.8 MB in 25 s (19.1 MB/s)'`` (from creation to
    transfer completion, as the store keeps them); ``''`` without a completion time."""
    if times is None or times.transfer_completion is None:
        return ""
    took = (times.transfer_completion - times.creation).total_seconds()
    rate = f" ({format_rate(p.bytes_transferred / took)})" if took > 0 else ""
    return f"{format_bytes(p.bytes_transferred)} in {format_duration(took)}{rate}"


def elapsed_text(times: JobTimes | None, now: _dt.datetime | None = None) -> str:
    """Time since the job was created, as a clock (``'0:25'``)."""
    if times is None:
        return ""
    now = now if now is not None else _dt.datetime.now(_dt.UTC)
    return format_eta((now - times.creation).total_seconds())


def text_bar(fraction: float | None, width: int = 20) -> str:
    """A bar of *width* characters: ``'█████···············'``; empty when unknown (never full)."""
    filled = 0 if fraction is None else round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "·" * (width - filled)


# -- errors -----------------------------------------------------------------------------------
def error_text(err: ErrorInfo | None) -> str:
    """``'0x80190194 BG_E_HTTP_ERROR_404: description'`` or ``''``."""
    if err is None:
        return ""
    return f"0x{err.code:08X} {err.name}: {err.description}"


def _description(err: ErrorInfo, job_type: JobType | None) -> str:
    text = err.description.strip()
    if job_type is not JobType.UPLOAD and job_type is not JobType.UPLOAD_REPLY:
        text = _UPLOAD_REMARK.sub("", text)  # "(IIS7 upload: …)" says nothing about a download
    return text.rstrip(".")


def error_summary(
    err: ErrorInfo,
    *,
    job_type: JobType | None = JobType.DOWNLOAD,
    retry_in: float | None = None,
    attempts: int | None = None,
    transient: bool = False,
    url_width: int = 60,
) -> str:
    """The error said once: ``'BG_E_HTTP_ERROR_404 (0x80190194): Not found — HTTP 404 for
    http://host/…/file.csv'``; a TRANSIENT_ERROR adds when it retries (``'retrying in 12 s,
    attempt 3'``). The file's URL appears once, shortened in the middle."""
    head = f"{err.name} (0x{err.code:08X}): {_description(err, job_type)}"
    url = err.file.remote_name if err.file is not None else None
    message = err.message.strip()
    short = shorten_middle(url, url_width) if url else None
    if url and short and url in message:
        message = message.replace(url, short)
        url = None  # said in the message already
    parts = [head]
    if message:
        parts.append(message)
    if url and short:
        parts.append(short)
    text = " — ".join(parts)
    if transient:
        when = "now" if retry_in is None or retry_in <= 0.5 else f"in {format_duration(retry_in)}"
        attempt = f", attempt {attempts + 1}" if attempts else ""
        text += f"; retrying by itself {when}{attempt}"
    return text


def escape(text: str) -> str:
    """HTML-escape user text (display names, error messages)."""
    return html.escape(text, quote=True)


# -- whole lines ------------------------------------------------------------------------------
def job_line(
    job: JobLike,
    *,
    est: Estimate | None = None,
    times: JobTimes | None = None,
    extra: str = "",
) -> str:
    """One readable line for a job: name, state, percent, bytes, files (and the error).

    ``'data  ACKNOWLEDGED  100% 20.0 MB / 20.0 MB  20/20 files  20.0 MB in 3 s (6.7 MB/s)'``.
    """
    p = job.progress
    state = job.state
    parts = [job.display_name, state.name, progress_text(p, est), files_text(p)]
    if state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED):
        took = finished_text(p, times)
        if took:
            parts.append(took)
    if extra:
        parts.append(extra)
    line = "  ".join(parts)
    if state in (JobState.ERROR, JobState.TRANSIENT_ERROR):
        err = job.error
        if err is not None:
            line += "\n" + textwrap.fill(
                error_summary(err, transient=state is JobState.TRANSIENT_ERROR),
                width=100,
                initial_indent="  ",
                subsequent_indent="  ",
                break_long_words=False,
                break_on_hyphens=False,
            )
    return line


def queue_text(
    jobs: Sequence[JobLike],
    totals: str,
    width: int = 100,
    estimates: Sequence[Estimate] | None = None,
) -> str:
    """The queue as plain text for front ends without widgets, drawn by rich (as the CLI is):
    totals first, then one row per job."""
    import io

    from rich.console import Console
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
    for name in ("ID", "JOB", "STATE", "PROGRESS"):
        table.add_column(name, justify="left", no_wrap=name != "JOB")
    table.add_column("BYTES", justify="right", no_wrap=True)
    table.add_column("FILES", justify="right", no_wrap=True)
    for i, job in enumerate(jobs):
        p = job.progress
        est = estimates[i] if estimates is not None else estimate(p)
        # an unknown share draws an empty bar (rich's pulse would look like a full one)
        done = 100.0 * est.fraction if est.fraction is not None else 0.0
        bar = ProgressBar(total=100.0, completed=done, width=16)
        table.add_row(
            str(job.id)[:8],
            job.display_name,
            job.state.name,
            bar,
            progress_text(p, est),
            f"{p.files_transferred}/{p.files_total}",
        )
    if not jobs:
        table.caption = "(no jobs)"
    buf = io.StringIO()
    console = Console(
        file=buf, width=width, color_system=None, force_terminal=False, force_jupyter=False
    )  # in a kernel rich would otherwise display HTML instead of writing to buf
    console.print(table)
    return totals + "\n" + buf.getvalue().rstrip()
