"""``bitsnb``: the command line over the same job store as the notebooks (bitsadmin-style verbs).

Verbs: ``demo``, ``transfer``, ``create``, ``addfile``, ``addfileset``, ``addfilewithranges``,
``resume``, ``suspend``, ``cancel``, ``complete``, ``reset``, ``list``, ``info``, ``monitor``,
``wait``, ``set``, ``setnotifycmdline``, ``setnotifyflags``, ``setcredentials``,
``removecredentials``, ``replaceremoteprefix``, ``takeownership``, ``setreplyfilename``,
``getreplydata``, the ``get*`` verbs that print one value (``getstate``, ``getbytestotal``, ...),
``error``, ``serve``, ``verify``.
Jobs are named by full id, a unique id prefix or a unique display name.

Jobs run while a bitsnb process has the store open: a notebook, ``bitsnb wait``, ``bitsnb monitor``
or ``bitsnb transfer``. The other verbs open the store without transferring (their manager runs
with ``max_active_jobs=0``), so ``create``/``addfile``/``resume`` only queue work for later.

Exit codes::

    0    success
    1    a job ended in ERROR or was cancelled: the transfer failed (verify: a file differs)
    2    usage error (argparse)
    3    a BITS call failed: BitsError (bad input, invalid state, job not found, ...)
    4    timed out (--timeout)
    5    not implemented (any call the core answers with E_NOTIMPL; ``serve`` without uvicorn)
    70   internal error (a bug in bitsnb: the traceback is printed)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import enum
import getpass
import os
import re
import stat
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

from rich.console import Group
from rich.live import Live
from rich.text import Text

from ._cli_integrity import add_checksum_options, cli_entries, verify_job
from ._cli_render import (
    DONE_STATES,
    EXIT_BITS_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_IMPLEMENTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_TRANSFER_FAILED,
    EXIT_USAGE,
    Output,
    Watcher,
    error_lines,
    job_dict,
    jobs_csv,
    jobs_table,
    print_info,
    report_outcome,
    safe_text,
    short_id,
    watch_job,
)
from ._codes import (
    BG_S_PARTIAL_COMPLETE,
    E_INVALIDARG,
    E_NOTIMPL,
    S_OK,
    from_user,
    hresult_from_errno,
    http_error,
)
from ._enums import AuthScheme, AuthTarget, JobPriority, JobState, JobType, NotifyFlags, ProxyUsage
from ._errors import BitsError, JobNotFoundError, all_errors
from ._format import format_bytes
from ._manager import default_store_path
from ._models import Policy
from ._planning import default_display_name, local_path, make_folder, plan_downloads
from ._sync import Job, Manager

__all__ = [
    "EXIT_BITS_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_IMPLEMENTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_TRANSFER_FAILED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]


_EPILOG = """\
exit codes:
  0    success
  1    a job ended in ERROR or was cancelled (the transfer failed); verify: a file differs
  2    usage error
  3    a BITS call failed (bad input, invalid state, job not found, ...)
  4    timed out (--timeout)
  5    not implemented (any call answered with E_NOTIMPL; serve without uvicorn)
  70   internal error (a bug in bitsnb)
  130  interrupted (Ctrl-C)

Jobs run while a bitsnb process (a notebook, `bitsnb wait`/`monitor`/`transfer`) has the store
open; `create`, `addfile` and `resume` only queue work, and the next such process transfers it.
Name a job by its full id, a unique prefix of its id, or a unique display name.
The store is $BITSNB_HOME/jobs.db (else jobs.db in the user data folder); --store overrides it.

first command:  bitsnb demo
"""

_ACTIVE = (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING)
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_HEXISH = re.compile(r"^[0-9a-fA-F-]+$")
Handler = Callable[[argparse.Namespace, Output], int]
_E = TypeVar("_E", bound=enum.Enum)


# -- argument types ---------------------------------------------------------------------------
def parse_priority(text: str) -> JobPriority:
    """``foreground``/``high``/``normal``/``low`` (any case) or 0-3."""
    value = text.strip().upper()
    if value.isdigit() and int(value) in {p.value for p in JobPriority}:
        return JobPriority(int(value))
    try:
        return JobPriority[value]
    except KeyError:
        names = ", ".join(p.name.lower() for p in JobPriority)
        raise argparse.ArgumentTypeError(f"{text!r} is not a priority ({names})") from None


def parse_code(text: str) -> int:
    """An HRESULT as hex (``0x80190194``), decimal (signed or not) or a name (``BG_E_NOT_FOUND``);
    a bare HTTP status (``404``) means that status's ``BG_E_HTTP_ERROR_nnn``."""
    value = text.strip()
    number: int | None = None
    with contextlib.suppress(ValueError):
        number = int(value, 0)
    if number is None:
        with contextlib.suppress(ValueError):
            number = int(value, 10)  # "010": int(x, 0) refuses leading zeros
    if number is None and re.fullmatch(r"[0-9a-fA-F]{8}", value):
        number = int(value, 16)  # bare hex as Windows prints it: 80190194
    if number is not None:
        if not -(2**31) <= number <= 0xFFFFFFFF:
            raise argparse.ArgumentTypeError(f"{text!r} does not fit in 32 bits")
        return from_user(number)
    upper = value.upper()
    match = re.fullmatch(r"BG_E_HTTP_ERROR_(\d{3})", upper)
    if match:
        return http_error(int(match.group(1)))
    for row in all_errors():
        if row.name == upper:
            return row.code
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a number (0x80190194, 2149122452) nor a known error name"
    )


def parse_seconds(text: str) -> float:
    """A non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more seconds")
    return value


def parse_proxy_usage(text: str) -> ProxyUsage:
    """``preconfig``, ``no_proxy`` (or ``no-proxy``), ``override`` or ``autodetect``."""
    try:
        return ProxyUsage[text.strip().upper().replace("-", "_")]
    except KeyError:
        names = ", ".join(u.name.lower() for u in ProxyUsage)
        raise argparse.ArgumentTypeError(f"{text!r} is not a proxy usage ({names})") from None


def parse_states(text: str) -> frozenset[JobState]:
    """Comma-separated state names (``queued,transferring``)."""
    states: set[JobState] = set()
    for part in text.split(","):
        name = part.strip().upper().replace("-", "_")
        if not name:
            continue
        try:
            states.add(JobState[name])
        except KeyError:
            names = ", ".join(s.name.lower() for s in JobState)
            raise argparse.ArgumentTypeError(f"{part!r} is not a job state ({names})") from None
    return frozenset(states)


def _enum_arg(kind: type[_E]) -> Callable[[str], _E]:
    """An enum member by name (any case, ``-`` for ``_``) or number."""

    def parse(text: str) -> _E:
        value = text.strip().upper().replace("-", "_")
        try:
            return kind(int(value)) if value.isdigit() else kind[value]
        except (KeyError, ValueError):
            names = ", ".join(m.name.lower() for m in kind)
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {names}") from None

    return parse


def parse_notify_flags(text: str) -> NotifyFlags:
    """A number (``0x3``, ``3``) or names joined by ``,`` or ``|``: ``job_transferred,job_error``."""
    value = text.strip()
    with contextlib.suppress(ValueError):
        number = int(value, 0)
        if 0 <= number <= sum(NotifyFlags):
            return NotifyFlags(number)
        raise argparse.ArgumentTypeError(f"{text!r} has bits no notify flag uses")
    flags = NotifyFlags(0)
    for part in re.split(r"[,|]", value):
        name = part.strip().upper().replace("-", "_")
        if not name:
            continue
        try:
            flags |= NotifyFlags[name]
        except KeyError:
            names = ", ".join(f.name.lower() for f in NotifyFlags if f.name)
            raise argparse.ArgumentTypeError(f"{part!r} is not a notify flag ({names})") from None
    return flags


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


# -- helpers ----------------------------------------------------------------------------------
def open_manager(args: argparse.Namespace, *, active: bool) -> Manager:
    """The store named by ``--store`` (else the default); *active* managers transfer jobs."""
    store = args.store if args.store else default_store_path()
    policy = Policy() if active else Policy(max_active_jobs=0)
    return Manager(store, policy=policy)


def resolve(mgr: Manager, name: str) -> Job:
    """A job by full id, unique id prefix or unique display name (active jobs win over finished)."""
    text = name.strip()
    if not text:
        raise BitsError(E_INVALIDARG, "the job name is empty")
    try:
        full: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        full = None
    if full is not None:
        try:
            return mgr.get_job(full)
        except JobNotFoundError:
            for job in mgr.enum_jobs(include_finished=True):
                if job.id == full:
                    return job  # finished: readable, and calls on it say it is final
            raise
    prefix = text.lower() if _HEXISH.match(text) else None
    for finished in (False, True):
        jobs = list(mgr.enum_jobs(include_finished=finished))
        if finished:
            jobs = [j for j in jobs if j.state.is_final]
        matches = [
            j
            for j in jobs
            if j.display_name == text or (prefix is not None and str(j.id).startswith(prefix))
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(
                f"{short_id(j)} ({safe_text(j.display_name)}, {j.state.name})" for j in matches[:5]
            )
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            raise BitsError(
                E_INVALIDARG,
                f"{text!r} names {len(matches)} jobs: {shown}{more}; give more of the id",
            )
    raise JobNotFoundError(
        f"no job {text!r} (by id, id prefix or display name); `bitsnb list --all` lists them"
    )


def plan_destinations(urls: Sequence[str], dest: str) -> list[tuple[str, str]]:
    """(URL, local path) pairs by the one rule of ``bitsnb._planning`` (``bitsnb.download``
    follows it too); the folder they land in is created when missing."""
    plan = plan_downloads(urls, dest)
    make_folder(plan)
    return plan.pairs


MAX_FILE_SET_BYTES = 16 * 1024 * 1024
"""The largest file list ``addfileset`` reads (a few hundred thousand lines)."""


def _read_list_file(path: str) -> bytes:
    """The bytes of a regular file of at most ``MAX_FILE_SET_BYTES``: a FIFO, a device
    (``/dev/zero``) or a folder is refused without reading (opened non-blocking, so a FIFO
    with no writer cannot hang), and so is a bigger file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BitsError(
            hresult_from_errno(exc.errno), f"cannot read the file list {path!r}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BitsError(E_INVALIDARG, f"the file list {path!r} is not a regular file")
        if info.st_size > MAX_FILE_SET_BYTES:
            raise BitsError(
                E_INVALIDARG,
                f"the file list {path!r} is larger than {MAX_FILE_SET_BYTES} bytes",
            )
        data = fh.read(MAX_FILE_SET_BYTES + 1)  # it may have grown since the fstat
    if len(data) > MAX_FILE_SET_BYTES:
        raise BitsError(
            E_INVALIDARG, f"the file list {path!r} is larger than {MAX_FILE_SET_BYTES} bytes"
        )
    return data


def read_file_set(path: str) -> list[tuple[str, str]]:
    """``URL PATH`` lines (``#`` comments, blank lines skipped) or a CSV with url,path columns;
    *path* must be a regular file of at most ``MAX_FILE_SET_BYTES``."""
    try:
        text = _read_list_file(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BitsError(E_INVALIDARG, f"{path!r} is not UTF-8 text ({exc})") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    header = [c.strip().lower() for c in first.split(",")]
    pairs: list[tuple[str, str]] = []
    if "url" in header and "path" in header:
        body = [ln for ln in lines if not ln.lstrip().startswith("#")]
        for row in csv.DictReader(body, skipinitialspace=True):
            fields = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            if not any(fields.values()):
                continue
            if not fields.get("url") or not fields.get("path"):
                raise BitsError(E_INVALIDARG, f"{path!r}: a row lacks url or path: {row}")
            pairs.append((fields["url"], local_path(fields["path"])))
    else:
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.split(None, 1)
            if len(parts) != 2:
                raise BitsError(
                    E_INVALIDARG,
                    f"{path!r} line {number}: expected 'URL PATH', got {stripped!r}",
                )
            pairs.append((parts[0], local_path(parts[1])))
    if not pairs:
        raise BitsError(E_INVALIDARG, f"{path!r} lists no files")
    return pairs


def _is_secret_header(line: str) -> bool:
    return line.split(":", 1)[0].strip().lower() in _SECRET_HEADERS


def _queued_note(out: Output, job: Job) -> None:
    out.note(
        f"job {short_id(job)} is {job.state.name}: it transfers while a bitsnb process has the "
        f"store open (a notebook, `bitsnb wait {short_id(job)}`, `bitsnb monitor`)"
    )


def _complete_text(hr: int) -> str:
    if hr == BG_S_PARTIAL_COMPLETE:
        return (
            "BG_S_PARTIAL_COMPLETE: the transferred files were moved into place, the others dropped"
        )
    return "S_OK: files moved into place"


# -- verbs ------------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace, out: Output) -> int:
    """create NAME: a new empty job (SUSPENDED); prints its id."""
    job_type = _JOB_TYPES[args.type]
    with open_manager(args, active=False) as mgr:
        job = mgr.create_job(
            args.name, job_type, priority=args.priority, description=args.description
        )
        if args.json:
            out.json(job_dict(job))
        else:
            out.line(str(job.id))
    return EXIT_OK


def cmd_addfile(args: argparse.Namespace, out: Output) -> int:
    """addfile JOB URL PATH (PATH may be an existing folder: the name comes from the URL)."""
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        known = None
        if job.type is JobType.DOWNLOAD:
            plan = plan_downloads([args.url], args.path)
            [(url, path, known)] = cli_entries(args, plan.pairs, None)  # checked first
            make_folder(plan)
        else:  # uploads: PATH is the local file to send, URL where it goes
            if args.checksum or args.checksum_file:
                raise _UsageError("addfile: --checksum is for download jobs")
            url, path = args.url, local_path(args.path)
        job.add_file(url, path, known_hash=known)
        out.line(f"added {url} -> {path} to job {short_id(job)} ({len(job.files)} files)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    """verify JOB: hash its files again against what the store recorded (1 on a mismatch)."""
    with open_manager(args, active=False) as mgr:
        return verify_job(resolve(mgr, args.job), out)


def cmd_addfileset(args: argparse.Namespace, out: Output) -> int:
    """addfileset JOB FILE: all the listed files, or none."""
    pairs = read_file_set(args.file)
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        job.add_file_set(pairs)
        out.line(f"added {len(pairs)} files to job {short_id(job)} ({len(job.files)} files)")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, out: Output) -> int:
    """resume JOB: queue it."""
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        job.resume()
        out.line(f"job {short_id(job)} {job.display_name!r}: {job.state.name}")
        if job.state in _ACTIVE:
            _queued_note(out, job)
    return EXIT_OK


def cmd_suspend(args: argparse.Namespace, out: Output) -> int:
    """suspend JOB: stop it; data on disk is kept."""
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        job.suspend()
        out.line(f"job {short_id(job)} {job.display_name!r}: {job.state.name}")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    """cancel JOB: delete its temporary files and end it."""
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        hr = job.cancel()
        extra = "" if hr == S_OK else " (BG_S_UNABLE_TO_DELETE_FILES: some temporary files remain)"
        out.line(f"job {short_id(job)} {job.display_name!r}: {job.state.name}{extra}")
    return EXIT_OK


def cmd_complete(args: argparse.Namespace, out: Output) -> int:
    """complete JOB: move the transferred files into place and end it."""
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        hr = job.complete()
        out.line(
            f"job {short_id(job)} {job.display_name!r}: {job.state.name} ({_complete_text(hr)})"
        )
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace, out: Output) -> int:
    """cleanup [FOLDER...]: remove temporary files no live job owns (--dry-run lists them)."""
    from .helpers import cleanup

    with open_manager(args, active=False) as mgr:
        report = cleanup(args.folders or None, manager=mgr, dry_run=args.dry_run)
    out.line(safe_text(str(report)))
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    """list: the queue as a table, JSON or CSV."""
    with open_manager(args, active=False) as mgr:
        jobs = list(mgr.enum_jobs(args.all_users, include_finished=args.all))
        if args.state:
            wanted = frozenset().union(*args.state)
            jobs = [j for j in jobs if j.state in wanted]
        if args.json:
            out.json([job_dict(j) for j in jobs])
        elif args.csv:
            out.out.file.write(jobs_csv(jobs))
            out.out.file.flush()
        else:
            out.out.print(jobs_table(jobs, tty=out.tty, owners=args.all_users))
        for job_id, why in sorted(mgr.damaged_jobs().items()):  # rows the store cannot read
            out.note(f"job {job_id} is damaged in the store: {safe_text(why)}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace, out: Output) -> int:
    """info JOB: properties, progress, times, error and files."""
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        if args.json:
            out.json(job_dict(job, files=True))
        else:
            print_info(out, job)
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace, out: Output) -> int:
    """monitor: a live table of the queue (this process also transfers the queued jobs)."""
    with open_manager(args, active=True) as mgr:
        store = str(mgr.store_path)

        def view() -> Group:
            jobs = list(mgr.enum_jobs(args.all_users))
            stamp = time.strftime("%H:%M:%S")
            head = Text(f"bitsnb monitor  {store}  {stamp}  {len(jobs)} jobs  (Ctrl-C stops)")
            return Group(head, jobs_table(jobs, tty=out.tty, owners=args.all_users))

        shown = 0
        if out.tty:
            with Live(view(), console=out.out, auto_refresh=False) as live:
                while True:
                    live.update(view(), refresh=True)
                    shown += 1
                    if args.count is not None and shown >= args.count:
                        break
                    time.sleep(args.interval)
        else:
            while True:
                out.out.print(view())
                out.out.file.flush()
                shown += 1
                if args.count is not None and shown >= args.count:
                    break
                time.sleep(args.interval)
    return EXIT_OK


_JOB_TYPES = {
    "download": JobType.DOWNLOAD,
    "upload": JobType.UPLOAD,
    "upload-reply": JobType.UPLOAD_REPLY,
}


def cmd_error(args: argparse.Namespace, out: Output) -> int:
    """error CODE: name, hex and description of an HRESULT (both readings where uploads differ)."""
    chosen = _JOB_TYPES[args.type] if args.type else None
    head, description = error_lines(args.code, chosen)
    _, upload = error_lines(args.code, JobType.UPLOAD)
    name, hexcode = head.split(" (")
    if args.json:
        out.json(
            {
                "name": name,
                "code": args.code,
                "hex": hexcode.rstrip(")"),
                "description": description,
                "upload_description": upload,
            }
        )
        return EXIT_OK
    out.line(head)
    out.line(description)
    if chosen is None and upload != description:
        out.line(f"for upload jobs: {upload}")
    return EXIT_OK


def cmd_set(args: argparse.Namespace, out: Output) -> int:
    """set JOB --option ...: change job properties."""
    changes: list[tuple[str, Callable[[Job], None]]] = []
    if args.display_name is not None:
        changes.append(("display name", lambda j: setattr(j, "display_name", args.display_name)))
    if args.description is not None:
        changes.append(("description", lambda j: setattr(j, "description", args.description)))
    if args.priority is not None:
        changes.append(("priority", lambda j: j.set_priority(args.priority)))
    if args.retry_delay is not None:
        changes.append(
            ("retry delay", lambda j: setattr(j, "minimum_retry_delay", args.retry_delay))
        )
    if args.no_progress_timeout is not None:
        changes.append(
            (
                "no-progress timeout",
                lambda j: setattr(j, "no_progress_timeout", args.no_progress_timeout),
            )
        )
    if args.max_download_time is not None:
        changes.append(
            (
                "max download time",
                lambda j: setattr(j, "maximum_download_time", args.max_download_time),
            )
        )
    if args.header or args.clear_headers:
        text = "\r\n".join(args.header or [])
        changes.append(("headers", lambda j: j.set_custom_headers(text or None)))
        secret = [h.split(":", 1)[0].strip() for h in args.header or [] if _is_secret_header(h)]
        if secret:
            out.note(
                f"note: {', '.join(secret)} headers are kept in memory only, never in the store: "
                "they end with this process (pass them to `bitsnb transfer --header` instead)"
            )
    if args.proxy_usage is not None or args.proxy is not None or args.bypass is not None:
        usage = args.proxy_usage
        if usage is None:
            usage = ProxyUsage.OVERRIDE
        changes.append(("proxy", lambda j: j.set_proxy_settings(usage, args.proxy, args.bypass)))
    if not changes:
        raise _UsageError("set: give at least one option to change (see `bitsnb set --help`)")
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        for _, apply in changes:
            apply(job)
        names = ", ".join(name for name, _ in changes)
        out.line(f"job {short_id(job)} {job.display_name!r}: set {names}")
    return EXIT_OK


def cmd_wait(args: argparse.Namespace, out: Output) -> int:
    """wait JOB: transfer it (this process runs the queue) until it ends; --complete finishes it."""
    with open_manager(args, active=True) as mgr:
        job = resolve(mgr, args.job)
        if job.state is JobState.SUSPENDED:
            if not args.resume:
                out.error(_suspended_text(job))
                return EXIT_TRANSFER_FAILED
            job.resume()
        with Watcher(out, job) as watcher:
            state = watch_job(
                mgr, job, watcher, timeout=args.timeout, until=DONE_STATES | {JobState.SUSPENDED}
            )
        if state is JobState.SUSPENDED:  # suspended by someone else while we waited
            out.error(_suspended_text(job))
            return EXIT_TRANSFER_FAILED
        status = report_outcome(out, job, state)
        if state is JobState.TRANSFERRED:
            if args.complete:
                hr = job.complete()
                out.line(f"job {short_id(job)}: {job.state.name} ({_complete_text(hr)})")
            else:
                out.note(f"files are moved into place by `bitsnb complete {short_id(job)}`")
        return status


def _suspended_text(job: Job) -> str:
    sid = short_id(job)
    return (
        f"job {sid} is SUSPENDED: it never finishes unless resumed "
        f"(`bitsnb resume {sid}`, or `bitsnb wait {sid} --resume`)"
    )


def cmd_transfer(args: argparse.Namespace, out: Output) -> int:
    """transfer URL... DEST: create, add, resume, show progress, complete (bitsadmin /transfer);
    with --upload, URL is where the one local file DEST goes."""
    urls: list[str] = args.urls
    if args.upload:
        if len(urls) != 1:
            raise _UsageError("transfer --upload: give one URL and one local file")
        if args.checksum or args.checksum_file:
            raise _UsageError("transfer --upload: --checksum is for downloads")
        pairs = [(urls[0], local_path(args.dest))]
        job_type = JobType.UPLOAD
    else:
        plan = plan_downloads(urls, args.dest)
        pairs = plan.pairs
        job_type = JobType.DOWNLOAD
    name = args.name if args.name is not None else default_display_name(pairs)
    credential = _credential(args.credential) if args.credential else None
    with open_manager(args, active=not args.no_wait) as mgr:
        entries: Sequence[tuple[str, str] | tuple[str, str, str | None]] = pairs
        if job_type is JobType.DOWNLOAD:
            entries = cli_entries(args, pairs, mgr, skip_in_place=True, fetch=not args.no_wait)
            make_folder(plan)
            if not entries:  # no job: every file is there with its known hash
                if args.json:
                    out.json({"state": "IN_PLACE", "files": [p for _, p in pairs]})
                else:
                    out.line(f"{len(pairs)} files already in place with their known hashes")
                return EXIT_OK
        job = mgr.create_job(name, job_type, priority=args.priority)
        try:
            if args.header:
                job.set_custom_headers("\r\n".join(args.header))
            if credential is not None:
                job.set_credentials(args.auth_target, args.auth_scheme, *credential)
            if args.proxy is not None:
                job.set_proxy_settings(ProxyUsage.OVERRIDE, args.proxy, args.bypass)
            if args.retry_interval is not None:
                job.minimum_retry_delay = args.retry_interval
            if args.dynamic:
                job.dynamic_content = True
            if args.notify_cmd is not None:
                job.set_notify_cmd_line(*_split_command(args.notify_cmd))
            job.add_file_set(entries)
            job.resume()
        except BaseException:
            with contextlib.suppress(BitsError):
                job.cancel()
            raise
        if args.no_wait:
            if args.json:
                out.json(job_dict(job))
            else:
                out.line(str(job.id))
            _queued_note(out, job)
            if credential is not None or any(_is_secret_header(h) for h in args.header or []):
                out.note(
                    "note: credentials and secret headers (Authorization, Cookie) are kept in "
                    "memory only, never in the store: a later process sends none of them"
                )
            return EXIT_OK
        started = time.monotonic()
        try:
            with Watcher(out, job, to_stderr=args.json) as watcher:
                state = watch_job(mgr, job, watcher, timeout=args.timeout)
        except (KeyboardInterrupt, TimeoutError):
            out.note(
                f"job {short_id(job)} stays in the queue: `bitsnb wait {short_id(job)}` "
                f"continues it, `bitsnb cancel {short_id(job)}` drops it"
            )
            raise
        elapsed = time.monotonic() - started
        status = report_outcome(out, job, state)
        if state is JobState.TRANSFERRED:
            job.complete()
        elif state is JobState.ERROR:
            job.cancel()  # as bitsadmin /transfer: a fatal error cancels the job
            out.note(f"job {short_id(job)} was cancelled")
        if args.json:
            data = job_dict(job, files=True)
            data["elapsed_seconds"] = round(elapsed, 3)
            out.json(data)
        elif status == EXIT_OK:
            p = job.progress
            rate = p.bytes_transferred / elapsed if elapsed > 0 else 0.0
            out.line(
                f"{p.files_total} files, {format_bytes(p.bytes_transferred)}, transferred in "
                f"{elapsed:.1f} s ({format_bytes(int(rate))}/s), {job.state.name}"
            )
            for f in job.files[:10]:
                out.line(f"  {safe_text(f.local_name)}")
            if len(job.files) > 10:
                out.line(f"  ... and {len(job.files) - 10} more")
        return status


# -- bitsadmin parity: the remaining job calls ------------------------------------------------
def _on_job(args: argparse.Namespace, call: Callable[[Job], str]) -> Callable[[Output], int]:
    def run(out: Output) -> int:
        with open_manager(args, active=False) as mgr:
            job = resolve(mgr, args.job)
            out.line(f"job {short_id(job)} {safe_text(job.display_name)!r}: {call(job)}")
        return EXIT_OK

    return run


def cmd_setnotifycmdline(args: argparse.Namespace, out: Output) -> int:
    """setnotifycmdline JOB PROGRAM [ARGS...] (or --clear): run PROGRAM when the job ends."""
    if args.clear == bool(args.program):
        raise _UsageError("setnotifycmdline: give PROGRAM [ARGS...] or --clear")

    def call(job: Job) -> str:
        if args.clear:
            job.set_notify_cmd_line(None)
            return "notify command line removed"
        program = args.program[0]
        job.set_notify_cmd_line(program, " ".join(args.program))
        return f"notify command line set ({program})"

    return _on_job(args, call)(out)


def cmd_setnotifyflags(args: argparse.Namespace, out: Output) -> int:
    """setnotifyflags JOB FLAGS: which events the job reports."""

    def call(job: Job) -> str:
        job.notify_flags = args.flags
        return f"notify flags {_flags_text(job.notify_flags)}"

    return _on_job(args, call)(out)


def cmd_setcredentials(args: argparse.Namespace, out: Output) -> int:
    """setcredentials JOB TARGET SCHEME USER[:PASSWORD]."""
    user, password = _credential(args.credential)

    def call(job: Job) -> str:
        job.set_credentials(args.target, args.scheme, user, password)
        return f"{args.target.name.lower()} credentials set ({args.scheme.name})"

    status = _on_job(args, call)(out)
    out.note(
        "note: credentials are kept in memory only, never in the store: they end with this "
        "process (give them to `bitsnb transfer --credential` to use them)"
    )
    return status


def cmd_removecredentials(args: argparse.Namespace, out: Output) -> int:
    """removecredentials JOB TARGET SCHEME."""

    def call(job: Job) -> str:
        had = job.remove_credentials(args.target, args.scheme)
        what = f"{args.target.name.lower()} {args.scheme.name} credentials"
        return f"{what} removed" if had else f"no {what} to remove"

    return _on_job(args, call)(out)


def cmd_replaceremoteprefix(args: argparse.Namespace, out: Output) -> int:
    """replaceremoteprefix JOB OLD NEW: change the start of every remote URL that has OLD."""

    def call(job: Job) -> str:
        changed = job.replace_remote_prefix(args.old, args.new)
        return "remote names changed" if changed else "no remote name starts with that prefix"

    return _on_job(args, call)(out)


def parse_ranges(text: str) -> list[tuple[int, int | None]]:
    """``OFFSET:LENGTH`` pairs joined by ``,``; LENGTH ``eof`` means to the end of the file."""
    ranges: list[tuple[int, int | None]] = []
    for part in text.split(","):
        offset, sep, length = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            ranges.append((int(offset), None if length.strip().lower() == "eof" else int(length)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not OFFSET:LENGTH (LENGTH may be eof)"
            ) from None
    return ranges


def cmd_addfilewithranges(args: argparse.Namespace, out: Output) -> int:
    """addfilewithranges JOB URL PATH RANGES: only these byte ranges, back to back in PATH."""
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        path = local_path(args.path)
        job.add_file_with_ranges(args.url, path, args.ranges)
        out.line(
            f"added {len(args.ranges)} ranges of {safe_text(args.url)} -> {safe_text(path)} to "
            f"job {short_id(job)} ({len(job.files)} files)"
        )
    return EXIT_OK


def cmd_takeownership(args: argparse.Namespace, out: Output) -> int:
    """takeownership JOB: make the job yours (root only)."""

    def call(job: Job) -> str:
        job.take_ownership()
        return f"owner {safe_text(job.owner)}"

    return _on_job(args, call)(out)


def cmd_setreplyfilename(args: argparse.Namespace, out: Output) -> int:
    """setreplyfilename JOB PATH: where an upload-reply job puts the reply."""

    def call(job: Job) -> str:
        job.set_reply_file_name(local_path(args.path))
        return f"reply file {safe_text(job.reply_file_name or '-')}"

    return _on_job(args, call)(out)


def cmd_getreplydata(args: argparse.Namespace, out: Output) -> int:
    """getreplydata JOB: the reply's bytes on stdout (as they are; --hex for a hex dump)."""
    with open_manager(args, active=False) as mgr:
        data = resolve(mgr, args.job).get_reply_data()
    if args.hex:
        out.line(data.hex())
    else:
        out.out.file.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_reset(args: argparse.Namespace, out: Output) -> int:
    """reset: cancel every job of yours (every user's with --all-users, root only)."""
    with open_manager(args, active=False) as mgr:
        jobs = [j for j in mgr.enum_jobs(args.all_users) if not j.state.is_final]
        failed = 0
        for job in jobs:
            try:
                job.cancel()
            except BitsError as exc:
                failed += 1
                out.error(f"job {short_id(job)}: {exc}")
        out.line(f"{len(jobs) - failed} of {len(jobs)} jobs cancelled")
    return EXIT_OK if not failed else EXIT_BITS_ERROR


def _flags_text(flags: NotifyFlags) -> str:
    names = [f.name.lower() for f in NotifyFlags if f.name and f in flags]
    return f"0x{int(flags):X}" + (f" ({', '.join(names)})" if names else "")


def _when(value: object) -> str:
    return (
        "-" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
    )


# name → (what it prints, how it reads the job); each prints one value, for scripts
_GETTERS: dict[str, tuple[str, Callable[[Job], object]]] = {
    "getstate": ("the job's state", lambda j: j.state.name),
    "gettype": ("the job's type", lambda j: j.type.name),
    "getpriority": ("the job's priority", lambda j: j.priority.name),
    "getdisplayname": ("the display name", lambda j: j.display_name),
    "getdescription": ("the description", lambda j: j.description),
    "getowner": ("the owner", lambda j: j.owner),
    "getbytestotal": (
        "bytes to transfer (-1 while unknown)",
        lambda j: -1 if j.progress.bytes_total is None else j.progress.bytes_total,
    ),
    "getbytestransferred": ("bytes transferred", lambda j: j.progress.bytes_transferred),
    "getfilestotal": ("number of files", lambda j: j.progress.files_total),
    "getfilestransferred": ("files transferred", lambda j: j.progress.files_transferred),
    "geterror": (
        "the error: NAME 0xCODE (or nothing)",
        lambda j: "" if j.error is None else f"{j.error.name} 0x{j.error.code:08X}",
    ),
    "geterrorcount": ("transient errors so far", lambda j: j.error_count),
    "getminretry": ("the minimum retry delay, seconds", lambda j: j.minimum_retry_delay),
    "getnoprogresstimeout": ("the no-progress timeout, seconds", lambda j: j.no_progress_timeout),
    "getmaxdownloadtime": ("the maximum download time, seconds", lambda j: j.maximum_download_time),
    "getcreationtime": ("when the job was created", lambda j: _when(j.times.creation)),
    "getmodificationtime": ("when the job last changed", lambda j: _when(j.times.modification)),
    "getcompletiontime": (
        "when the transfer finished (- before)",
        lambda j: _when(j.times.transfer_completion),
    ),
    "getnotifyflags": ("the notify flags", lambda j: f"0x{int(j.notify_flags):X}"),
    "getnotifycmdline": (
        "the notify command line (or nothing)",
        lambda j: "" if j.notify_cmd_line is None else j.notify_cmd_line[1] or j.notify_cmd_line[0],
    ),
    "getproxyusage": ("the proxy usage", lambda j: j.proxy_settings[0].name),
    "getproxylist": ("the proxy list", lambda j: j.proxy_settings[1] or ""),
    "getproxybypasslist": ("the proxy bypass list", lambda j: j.proxy_settings[2] or ""),
    "getcustomheaders": (
        "the custom headers, one a line",
        lambda j: (j.custom_headers or "").replace("\r\n", "\n"),
    ),
    "getdynamic": ("whether the content is dynamic", lambda j: j.dynamic_content),
    "getreplyfilename": ("the reply file (upload-reply)", lambda j: j.reply_file_name or ""),
    "getreplyprogress": (
        "reply bytes: TRANSFERRED TOTAL (-1 while unknown)",
        lambda j: (
            f"{j.reply_progress[1]} {-1 if j.reply_progress[0] is None else j.reply_progress[0]}"
        ),
    ),
}


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    """get*: print one value of a job (bitsadmin's /get* verbs)."""
    _, read = _GETTERS[args.getter]
    with open_manager(args, active=False) as mgr:
        value = read(resolve(mgr, args.job))
    text = str(value).lower() if isinstance(value, bool) else str(value)
    for line in text.split("\n"):
        out.line(safe_text(line))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    """serve: the BITS upload server (``python -m bitsnb.server``), on 127.0.0.1 by default."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        out.error("`bitsnb serve` needs uvicorn: pip install 'bitsnb[server]'")
        return EXIT_NOT_IMPLEMENTED
    from .server.__main__ import main as serve_main

    return serve_main(list(getattr(args, "server_args", [])))


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """demo: a whole BITS job against a loopback server (see ``_cli_demo``)."""
    from ._cli_demo import run_demo

    return run_demo(args, out)


class _UsageError(Exception):
    """A usage mistake found after parsing (exit 2)."""


def _credential(text: str) -> tuple[str, str]:
    """``USER:PASSWORD``, or ``USER`` alone: the password is then asked on the terminal (or
    read from stdin's first line), so it does not show in the process list."""
    user, sep, password = text.partition(":")
    if not user:
        raise _UsageError("--credential: give USER or USER:PASSWORD")
    if not sep:
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {user}: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    return user, password


def _split_command(text: str) -> tuple[str, str | None]:
    """``PROGRAM [ARGS...]``: the program (a full path) and the whole command line as BITS's
    parameters (which, as in bitsadmin, start with the program itself)."""
    program = text.strip().split(None, 1)[0] if text.strip() else ""
    if not program:
        raise BitsError(E_INVALIDARG, "the notify command is empty")
    return program, text.strip()


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``bitsnb`` argument parser (``--store`` works before or after the verb)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the job store (default: $BITSNB_HOME/jobs.db)",
    )
    parser = argparse.ArgumentParser(
        prog="bitsnb",
        description="bitsnb: a BITS-style background transfer queue, from the command line.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store",
        metavar="PATH",
        default=None,
        help="the job store (default: $BITSNB_HOME/jobs.db)",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"bitsnb {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=handler)
        return p

    p = verb("demo", cmd_demo, "run one job against a built-in loopback server (first command)")
    p.add_argument("--files", type=_int_range(1, 100), default=5, help="files (default 5)")
    p.add_argument(
        "--size",
        type=_int_range(1, 1 << 30),
        default=4_000_000,
        metavar="BYTES",
        help="bytes per file (default 4000000)",
    )
    p.add_argument("--keep", metavar="DIR", help="keep the files and the demo's store in DIR")
    p.add_argument(
        "--no-faults",
        action="store_true",
        help="skip the dropped connection and the suspend/resume (just transfer)",
    )

    p = verb(
        "transfer",
        cmd_transfer,
        "download URLs (or --upload a file) now, with progress, then complete",
    )
    p.add_argument("urls", nargs="+", metavar="URL")
    p.add_argument(
        "dest",
        metavar="DEST",
        help="a folder (names from the URLs) or, for one URL, a file; with --upload, the local "
        "file to send",
    )
    p.add_argument("--name", help="the job's display name")
    p.add_argument(
        "--priority",
        type=parse_priority,
        default=JobPriority.NORMAL,
        help="default normal, as bitsadmin /transfer and bitsnb.download(): foreground would "
        "pre-empt every other job in the queue",
    )
    p.add_argument("--upload", action="store_true", help="upload DEST to URL (an UPLOAD job)")
    p.add_argument(
        "--credential",
        metavar="USER[:PASSWORD]",
        help="server credentials (kept in memory only; without :PASSWORD it is asked for)",
    )
    p.add_argument(
        "--auth-scheme",
        type=_enum_arg(AuthScheme),
        default=AuthScheme.BASIC,
        metavar="{basic,digest}",
        help="for --credential (default basic)",
    )
    p.add_argument(
        "--auth-target",
        type=_enum_arg(AuthTarget),
        default=AuthTarget.SERVER,
        metavar="{server,proxy}",
        help="for --credential (default server)",
    )
    p.add_argument("--proxy", metavar="LIST", help="use these proxies (override)")
    p.add_argument("--bypass", metavar="LIST", help="with --proxy: hosts reached directly")
    p.add_argument(
        "--retry-interval",
        type=parse_seconds,
        metavar="S",
        help="wait S seconds between retries (the minimum retry delay)",
    )
    p.add_argument(
        "--dynamic", action="store_true", help="the content is generated: no size, no ranges"
    )
    p.add_argument(
        "--notify-cmd",
        metavar="'PROGRAM ARGS'",
        help="run PROGRAM (a full path) when the job is transferred or fails",
    )
    p.add_argument(
        "--timeout", type=parse_seconds, metavar="S", help="give up after S seconds (exit 4)"
    )
    p.add_argument(
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="a request header (repeatable; Authorization stays in memory only)",
    )
    p.add_argument("--no-wait", action="store_true", help="queue the job, print its id and exit")
    p.add_argument("--json", action="store_true", help="print the finished job as JSON")
    add_checksum_options(p, remote_file=True)

    p = verb("create", cmd_create, "create an empty job (SUSPENDED) and print its id")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--type", choices=("download", "upload", "upload-reply"), default="download")
    p.add_argument("--priority", type=parse_priority, default=JobPriority.NORMAL)
    p.add_argument("--description", default="")
    p.add_argument("--json", action="store_true")

    p = verb("addfile", cmd_addfile, "add one file (URL -> local PATH or folder) to a job")
    p.add_argument("job", metavar="JOB")
    p.add_argument("url", metavar="URL")
    p.add_argument("path", metavar="PATH")
    add_checksum_options(p, remote_file=False)

    p = verb("verify", cmd_verify, "hash a finished job's files again against the store (exit 1)")
    p.add_argument("job", metavar="JOB")

    p = verb(
        "addfileset",
        cmd_addfileset,
        "add files listed in FILE ('URL PATH' lines, or a CSV with url,path columns)",
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("file", metavar="FILE")

    for name, handler, text in (
        ("resume", cmd_resume, "queue a job (it runs while a bitsnb process has the store open)"),
        ("suspend", cmd_suspend, "suspend a job (data on disk is kept)"),
        ("cancel", cmd_cancel, "cancel a job and delete its temporary files"),
        ("complete", cmd_complete, "move a job's transferred files into place and end it"),
    ):
        verb(name, handler, text).add_argument("job", metavar="JOB")

    p = verb("cleanup", cmd_cleanup, "remove temporary files of jobs that no longer exist")
    p.add_argument(
        "folders",
        nargs="*",
        metavar="FOLDER",
        help="where to look (default: every folder the store names)",
    )
    p.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    p = verb("list", cmd_list, "list the jobs in the queue")
    p.add_argument("--all-users", action="store_true", help="every user's jobs (root only)")
    p.add_argument("--all", action="store_true", help="include finished jobs")
    p.add_argument(
        "--state",
        type=parse_states,
        action="append",
        metavar="STATE[,STATE]",
        help="only these states",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")

    p = verb("info", cmd_info, "show a job: files, progress, times, error")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--json", action="store_true")

    p = verb("monitor", cmd_monitor, "live table of the queue until Ctrl-C (also runs the jobs)")
    p.add_argument("--interval", type=parse_seconds, default=1.0, metavar="S")
    p.add_argument(
        "--count", type=_int_range(1, 1 << 30), metavar="N", help="stop after N refreshes"
    )
    p.add_argument("--all-users", action="store_true")

    p = verb(
        "error",
        cmd_error,
        "explain an error code (0x80190194, decimal, a name, or a bare HTTP status: 404)",
    )
    p.add_argument("code", type=parse_code, metavar="CODE")
    p.add_argument(
        "--type",
        choices=tuple(_JOB_TYPES),
        help="the reading for this job type (default: the general one, plus the upload one "
        "where it differs)",
    )
    p.add_argument("--json", action="store_true")

    p = verb("set", cmd_set, "change a job's properties")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--priority", type=parse_priority)
    p.add_argument("--retry-delay", type=parse_seconds, metavar="S")
    p.add_argument("--no-progress-timeout", type=parse_seconds, metavar="S")
    p.add_argument("--max-download-time", type=parse_seconds, metavar="S")
    p.add_argument(
        "--header", action="append", metavar="'NAME: VALUE'", help="a custom header (repeatable)"
    )
    p.add_argument("--clear-headers", action="store_true")
    p.add_argument(
        "--proxy-usage",
        type=parse_proxy_usage,
        metavar="{preconfig,no_proxy,override,autodetect}",
    )
    p.add_argument("--proxy", metavar="LIST", help="proxy list (implies --proxy-usage override)")
    p.add_argument("--bypass", metavar="LIST", help="proxy bypass list")
    p.add_argument("--display-name")
    p.add_argument("--description")

    p = verb("wait", cmd_wait, "run and watch a job until it is transferred or fails")
    p.add_argument("job", metavar="JOB")
    p.add_argument(
        "--timeout", type=parse_seconds, metavar="S", help="give up after S seconds (exit 4)"
    )
    p.add_argument("--complete", action="store_true", help="complete the job once transferred")
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume a SUSPENDED job first (without it, waiting on one exits at once)",
    )

    p = verb("reset", cmd_reset, "cancel every job of yours (bitsadmin /reset)")
    p.add_argument("--all-users", action="store_true", help="every user's jobs (root only)")

    p = verb(
        "addfilewithranges",
        cmd_addfilewithranges,
        "add a file of which only some byte ranges are wanted",
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("url", metavar="URL")
    p.add_argument("path", metavar="PATH")
    p.add_argument("ranges", type=parse_ranges, metavar="OFFSET:LENGTH[,OFFSET:LENGTH...]")

    p = verb("setnotifycmdline", cmd_setnotifycmdline, "run a program when the job ends")
    p.add_argument("job", metavar="JOB")
    p.add_argument("program", nargs="*", metavar="PROGRAM [ARGS]", help="a full path, then args")
    p.add_argument("--clear", action="store_true", help="remove the command line")

    p = verb("setnotifyflags", cmd_setnotifyflags, "choose the events a job reports")
    p.add_argument("job", metavar="JOB")
    p.add_argument(
        "flags",
        type=parse_notify_flags,
        metavar="FLAGS",
        help="a number (3) or names: job_transferred,job_error,disable,job_modification,...",
    )

    for name, handler, text in (
        ("setcredentials", cmd_setcredentials, "give a job credentials (memory only)"),
        ("removecredentials", cmd_removecredentials, "remove a job's credentials"),
    ):
        p = verb(name, handler, text)
        p.add_argument("job", metavar="JOB")
        p.add_argument("target", type=_enum_arg(AuthTarget), metavar="{server,proxy}")
        p.add_argument("scheme", type=_enum_arg(AuthScheme), metavar="{basic,digest,...}")
        if handler is cmd_setcredentials:
            p.add_argument(
                "credential",
                metavar="USER[:PASSWORD]",
                help="without :PASSWORD it is asked for (or read from stdin)",
            )

    p = verb("replaceremoteprefix", cmd_replaceremoteprefix, "change the start of remote URLs")
    p.add_argument("job", metavar="JOB")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")

    verb("takeownership", cmd_takeownership, "make a job yours (root only)").add_argument(
        "job", metavar="JOB"
    )

    p = verb("setreplyfilename", cmd_setreplyfilename, "where an upload-reply job puts the reply")
    p.add_argument("job", metavar="JOB")
    p.add_argument("path", metavar="PATH")

    p = verb("getreplydata", cmd_getreplydata, "print an upload-reply job's reply")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--hex", action="store_true", help="as hex text")

    for name, (text, _) in _GETTERS.items():
        p = verb(name, cmd_get, f"print {text}")
        p.add_argument("job", metavar="JOB")
        p.set_defaults(getter=name)

    p = verb(
        "serve",
        cmd_serve,
        "run the BITS upload server: serve --root DIR [--port N] [--max-size BYTES]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bitsnb`` command line; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.verb != "serve":  # serve hands its options to bitsnb.server
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.server_args = extra
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    out = Output()
    handler: Handler = args.func
    try:
        return handler(args, out)
    except BitsError as exc:
        out.error(str(exc))
        return EXIT_NOT_IMPLEMENTED if exc.code == E_NOTIMPL else EXIT_BITS_ERROR
    except UnicodeEncodeError as exc:  # an argument that is not UTF-8 (surrogate escapes)
        bad = BitsError(
            E_INVALIDARG,
            f"an argument is not valid UTF-8 text ({exc.object[exc.start : exc.end]!r}): "
            "names and paths must be UTF-8",
        )
        out.error(str(bad))
        return EXIT_BITS_ERROR
    except TimeoutError as exc:
        out.error(f"timed out: {exc}")
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        out.error(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:  # `bitsnb list | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # keep interpreter exit quiet
        return EXIT_OK
    except Exception:
        out.error("internal error (a bug in bitsnb; please report it with this traceback):")
        traceback.print_exc()
        return EXIT_INTERNAL
