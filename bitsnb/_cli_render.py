"""What the command line shows: job tables, job details, JSON/CSV rows and live progress.

Kept apart from ``_cli.py`` (argument parsing and verbs) so that the same views serve ``list``,
``monitor``, ``transfer``, ``wait`` and ``demo``. Everything reads jobs through the public blocking
API; progress is polled from ``job.progress`` a few times a second, never per chunk.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, cast

from rich.align import AlignMethod
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column, Table
from rich.text import Text

from ._enums import JobState, JobType
from ._errors import lookup_error
from ._format import RateEstimator, format_progress, format_rate
from ._models import ErrorInfo
from ._sync import Job, Manager

__all__ = [
    "DONE_STATES",
    "EXIT_BITS_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_IMPLEMENTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_TRANSFER_FAILED",
    "EXIT_USAGE",
    "Output",
    "Watcher",
    "error_dict",
    "error_text",
    "job_dict",
    "jobs_csv",
    "jobs_table",
    "print_info",
    "report_outcome",
    "safe_text",
    "watch_job",
]

EXIT_OK = 0
EXIT_TRANSFER_FAILED = 1
EXIT_USAGE = 2
EXIT_BITS_ERROR = 3
EXIT_TIMEOUT = 4
EXIT_NOT_IMPLEMENTED = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
"""Exit statuses of ``bitsnb`` (the table is in ``bitsnb._cli``'s docstring)."""

DONE_STATES = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.CANCELLED, JobState.ACKNOWLEDGED}
)

_STATE_STYLE = {
    JobState.QUEUED: "cyan",
    JobState.CONNECTING: "cyan",
    JobState.TRANSFERRING: "bold cyan",
    JobState.SUSPENDED: "yellow",
    JobState.ERROR: "bold red",
    JobState.TRANSIENT_ERROR: "yellow",
    JobState.TRANSFERRED: "green",
    JobState.ACKNOWLEDGED: "bold green",
    JobState.CANCELLED: "dim",
}


class Output:
    """The process's stdout/stderr as rich consoles; plain text when they are not terminals."""

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        out = stdout if stdout is not None else sys.stdout
        err = stderr if stderr is not None else sys.stderr
        self.out = _console(out)
        self.err = _console(err)

    @property
    def tty(self) -> bool:
        """True when stdout is a terminal (live bars, colours); else plain lines."""
        return self.out.is_terminal

    def line(self, text: str | Text = "", *, style: str | None = None) -> None:
        """One line on stdout (no markup: job names and URLs are shown as they are)."""
        self.out.print(text, style=style)

    def note(self, text: str) -> None:
        """A hint or status line on stderr."""
        self.err.print(text, style="dim")

    def error(self, text: str) -> None:
        """``bitsnb: error: ...`` on stderr (control characters escaped: messages quote input)."""
        self.err.print(f"bitsnb: error: {safe_text(text)}", style="red")

    def json(self, data: object) -> None:
        """*data* as indented JSON on stdout."""
        self.out.file.write(json.dumps(data, indent=2, default=str) + "\n")
        self.out.file.flush()


def _console(file: IO[str]) -> Console:
    try:
        tty = file.isatty()
    except (AttributeError, ValueError):
        tty = False
    # Not a terminal: no colours, no wrapping of long rows (ids and URLs stay greppable),
    # and no padding at the ends of table rows.
    return Console(
        file=file if tty else cast(IO[str], _Trimmed(file)),
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=not tty,
        width=None if tty else 200,
    )


class _Trimmed(io.TextIOBase):
    """A text stream that drops the spaces rich pads table rows with, line by line."""

    def __init__(self, raw: IO[str]) -> None:
        self._raw = raw
        self._pending = ""

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._raw.write(line.rstrip(" ") + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._raw.write(self._pending)
            self._pending = ""
        self._raw.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._raw.fileno()


# -- formatting -------------------------------------------------------------------------------
# C0 and C1 controls, DEL, line/paragraph separators and the bidirectional overrides: a name
# holding them could move the cursor, recolour or hide text, or fake lines of output
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def safe_text(text: str) -> str:
    """*text* with control characters shown as escapes (``\\n``, ``\\x1b``), never sent raw to
    the terminal: job names, URLs and messages come from other people and other programs."""

    def escape(m: re.Match[str]) -> str:
        return m.group().encode("unicode_escape").decode("ascii")

    return _UNSAFE.sub(escape, text)


def fmt_time(when: _dt.datetime | None) -> str:
    """Local time to the second, or ``-``."""
    if when is None:
        return "-"
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float) -> str:
    """``600 s`` / ``10 min`` / ``14 days``, with the exact seconds when rounded."""
    exact = f"{seconds:,.0f} s" if seconds == int(seconds) else f"{seconds:,.3f} s"
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.4g} {unit} ({exact})"
    return exact


def fmt_progress(job: Job) -> str:
    """``8.0 MB / 20.0 MB (40%)`` or ``8.0 MB / ?`` (``-`` for a job without files)."""
    p = job.progress
    if p.files_total == 0:
        return "-"
    pct = p.percent
    tail = f" ({pct:.0f}%)" if pct is not None else ""
    return f"{format_progress(p.bytes_transferred, p.bytes_total)}{tail}"


def short_id(job: Job) -> str:
    """The first 8 characters of the id: enough to name a job on the command line."""
    return str(job.id)[:8]


def state_text(state: JobState) -> Text:
    """The state's name, coloured by what it means."""
    return Text(state.name, style=_STATE_STYLE.get(state, ""))


def error_text(err: ErrorInfo, job_type: JobType | None) -> str:
    """The error's sentence as it reads for a job of *job_type* (uploads read some codes
    differently: an HTTP 404 from an upload server means "no upload endpoint there")."""
    return lookup_error(err.code).for_job(job_type)


def error_dict(err: ErrorInfo, job_type: JobType | None = None) -> dict[str, Any]:
    """An error for JSON: name, code (int and hex), description, context, message and file."""
    return {
        "name": err.name,
        "code": err.code,
        "hex": f"0x{err.code:08X}",
        "description": error_text(err, job_type),
        "context": err.context.name,
        "context_description": err.context_description,
        "message": err.message,
        "protocol": err.protocol,
        "file": err.file.remote_name if err.file is not None else None,
    }


def job_dict(job: Job, *, files: bool = False) -> dict[str, Any]:
    """A job for ``--json`` (``files=True`` adds files, settings and the allowed calls)."""
    p = job.progress
    t = job.times
    err = job.error
    data: dict[str, Any] = {
        "id": str(job.id),
        "display_name": job.display_name,
        "description": job.description,
        "type": job.type.name,
        "state": job.state.name,
        "priority": job.priority.name,
        "owner": job.owner,
        "progress": {
            "bytes_total": p.bytes_total,
            "bytes_transferred": p.bytes_transferred,
            "files_total": p.files_total,
            "files_transferred": p.files_transferred,
            "percent": None if p.percent is None else round(p.percent, 2),
        },
        "times": {
            "creation": t.creation.isoformat(),
            "modification": t.modification.isoformat(),
            "transfer_completion": (
                t.transfer_completion.isoformat() if t.transfer_completion else None
            ),
        },
        "error_count": job.error_count,
        "error": error_dict(err, job.type) if err is not None else None,
    }
    if files:
        usage, proxies, bypass = job.proxy_settings
        data["allowed_calls"] = sorted(job.allowed_calls)
        data["settings"] = {
            "minimum_retry_delay": job.minimum_retry_delay,
            "no_progress_timeout": job.no_progress_timeout,
            "maximum_download_time": job.maximum_download_time,
            "custom_headers": job.custom_headers,
            "proxy_usage": usage.name,
            "proxy_list": proxies,
            "proxy_bypass_list": bypass,
        }
        data["files"] = [
            {
                "index": f.index,
                "remote_name": f.remote_name,
                "local_name": f.local_name,
                "temporary_name": f.temporary_name,
                "bytes_total": f.progress.bytes_total,
                "bytes_transferred": f.progress.bytes_transferred,
                "transferred": f.transferred,
                "completed": f.progress.completed,
                "known_hash": f.known_hash,
                "hash": f.hash,
                "validation_state": f.validation_state,
            }
            for f in job.files
        ]
    return data


_CSV_FIELDS = (
    "id",
    "display_name",
    "type",
    "state",
    "priority",
    "owner",
    "files_total",
    "files_transferred",
    "bytes_total",
    "bytes_transferred",
    "percent",
    "creation",
    "modification",
    "transfer_completion",
    "error_name",
    "error_code",
)


def jobs_csv(jobs: Iterable[Job]) -> str:
    """One CSV row per job, with a header row (``bytes_total`` empty while unknown)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for job in jobs:
        d = job_dict(job)
        p, t, err = d["progress"], d["times"], d["error"]
        writer.writerow(
            {
                "id": d["id"],
                "display_name": d["display_name"],
                "type": d["type"],
                "state": d["state"],
                "priority": d["priority"],
                "owner": d["owner"],
                "files_total": p["files_total"],
                "files_transferred": p["files_transferred"],
                "bytes_total": "" if p["bytes_total"] is None else p["bytes_total"],
                "bytes_transferred": p["bytes_transferred"],
                "percent": "" if p["percent"] is None else p["percent"],
                "creation": t["creation"],
                "modification": t["modification"],
                "transfer_completion": t["transfer_completion"] or "",
                "error_name": err["name"] if err else "",
                "error_code": err["hex"] if err else "",
            }
        )
    return buf.getvalue()


def jobs_table(jobs: Sequence[Job], *, tty: bool, owners: bool = False) -> RenderableType:
    """The queue as a table: id prefix, name, state, priority, files, bytes, error."""
    table = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        header_style="bold underline" if tty else "",
    )
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME", overflow="fold", max_width=40)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PRIORITY", no_wrap=True)
    table.add_column("FILES", justify="right", no_wrap=True)
    table.add_column("BYTES", justify="right", no_wrap=True)
    if owners:
        table.add_column("OWNER", no_wrap=True)
    table.add_column("ERROR", overflow="fold")
    for job in jobs:
        p = job.progress
        err = job.error
        row: list[RenderableType] = [
            short_id(job),
            safe_text(job.display_name),
            state_text(job.state),
            job.priority.name,
            f"{p.files_transferred}/{p.files_total}",
            fmt_progress(job),
        ]
        if owners:
            row.append(safe_text(job.owner))
        row.append(Text(err.name, style="red") if err is not None else "")
        table.add_row(*row)
    if not jobs:
        table.caption = "no jobs"
    return table


def print_info(out: Output, job: Job) -> None:
    """``bitsnb info``: the job's properties, its error and its files."""
    p = job.progress
    t = job.times
    usage, proxies, bypass = job.proxy_settings
    rows: list[tuple[str, str | Text]] = [
        ("id", str(job.id)),
        ("name", safe_text(job.display_name)),
        ("description", safe_text(job.description) or "-"),
        ("type", job.type.name),
        ("state", state_text(job.state)),
        ("priority", job.priority.name),
        ("owner", safe_text(job.owner)),
        ("files", f"{p.files_transferred}/{p.files_total} transferred"),
        ("bytes", fmt_progress(job)),
        ("created", fmt_time(t.creation)),
        ("modified", fmt_time(t.modification)),
        ("transferred", fmt_time(t.transfer_completion)),
        ("error count", str(job.error_count)),
        ("retry delay", fmt_duration(job.minimum_retry_delay)),
        ("no-progress timeout", fmt_duration(job.no_progress_timeout)),
        ("max download time", fmt_duration(job.maximum_download_time)),
        ("proxy", safe_text(" ".join(x for x in (usage.name, proxies, bypass) if x))),
        ("headers", safe_text((job.custom_headers or "-").replace("\r\n", "; "))),
        ("allowed calls", ", ".join(sorted(job.allowed_calls)) or "-"),
    ]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold" if out.tty else "", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value)
    err = job.error
    if err is not None:
        grid.add_row("error", Text(f"{err.name} (0x{err.code:08X})", style="red"))
        grid.add_row("", error_text(err, job.type))
        grid.add_row("", f"context: {err.context.name}: {err.context_description}")
        if err.message:
            grid.add_row("", f"message: {safe_text(err.message)}")
        if err.file is not None:
            grid.add_row("", f"file: {safe_text(err.file.remote_name)}")
    out.out.print(grid)
    files = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        header_style="bold underline" if out.tty else "",
    )
    files.add_column("#", justify="right", no_wrap=True)
    files.add_column("REMOTE", overflow="fold")
    files.add_column("LOCAL", overflow="fold")
    files.add_column("BYTES", justify="right", no_wrap=True)
    files.add_column("DONE", no_wrap=True)
    for f in job.files:
        done = "completed" if f.progress.completed else "yes" if f.transferred else "no"
        if not f.validation_state:
            done += ", invalid"  # a failed hash check (or the application's verdict)
        elif f.hash is not None:
            done += ", verified"
        files.add_row(
            str(f.index),
            safe_text(f.remote_name),
            safe_text(f.local_name),
            format_progress(f.progress.bytes_transferred, f.progress.bytes_total),
            done,
        )
    out.line()
    out.out.print(files if job.files else "no files yet: `bitsnb addfile JOB URL PATH`")


# -- live progress ----------------------------------------------------------------------------
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
                state=Text(status, style=_STATE_STYLE.get(state, "")),
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


def error_lines(code: int, job_type: JobType | None = None) -> tuple[str, str]:
    """``NAME (0xHEX)`` and the description for an HRESULT (as read for *job_type*)."""
    row = lookup_error(code)
    return f"{row.name} (0x{row.code:08X})", row.for_job(job_type)
