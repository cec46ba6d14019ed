"""What the command line shows of jobs: tables, details, JSON/CSV rows and error texts.

Kept apart from ``_cli.py`` (argument parsing and verbs) so that the same views serve ``list``,
``info``, ``monitor``, ``transfer``, ``wait`` and ``demo``; the live progress is in ``_cli_watch``.
Everything reads jobs through the public blocking API.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ._cli_output import Output, safe_text
from ._enums import JobState, JobType
from ._errors import lookup_error
from ._format import format_progress
from ._models import ErrorInfo
from ._sync import Job

__all__ = [
    "error_dict",
    "error_lines",
    "error_text",
    "job_dict",
    "jobs_csv",
    "jobs_table",
    "print_info",
    "short_id",
    "state_text",
]

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


def state_text(state: JobState, label: str | None = None) -> Text:
    """The state's name (or *label*), coloured by what the state means."""
    return Text(state.name if label is None else label, style=_STATE_STYLE.get(state, ""))


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
                "connections": f.connections,
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
        done += f" ({f.connections} connections)" if f.connections > 1 else ""
        files.add_row(
            str(f.index),
            safe_text(f.remote_name),
            safe_text(f.local_name),
            format_progress(f.progress.bytes_transferred, f.progress.bytes_total),
            done,
        )
    out.line()
    out.out.print(files if job.files else "no files yet: `bitsnb addfile JOB URL PATH`")


def error_lines(code: int, job_type: JobType | None = None) -> tuple[str, str]:
    """``NAME (0xHEX)`` and the description for an HRESULT (as read for *job_type*)."""
    row = lookup_error(code)
    return f"{row.name} (0x{row.code:08X})", row.for_job(job_type)
