"""The ``bitsnb`` verbs that change or read one job without transferring (create .. get*)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ._cli_args import (
    JOB_TYPES,
    UsageError,
    ask_credential,
    is_secret_header,
    open_manager,
    read_file_set,
    resolve,
)
from ._cli_integrity import cli_entries, verify_job
from ._cli_output import EXIT_BITS_ERROR, EXIT_OK, Output, safe_text
from ._cli_render import error_lines, job_dict, jobs_csv, jobs_table, print_info, short_id
from ._codes import BG_S_PARTIAL_COMPLETE, S_OK
from ._enums import JobState, JobType, NotifyFlags, ProxyUsage
from ._errors import BitsError
from ._planning import local_path, make_folder, plan_downloads
from ._sync import Job

_ACTIVE = (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING)


def queued_note(out: Output, job: Job) -> None:
    out.note(
        f"job {short_id(job)} is {job.state.name}: it transfers while a bitsnb process has the "
        f"store open (a notebook, `bitsnb wait {short_id(job)}`, `bitsnb monitor`)"
    )


def complete_text(hr: int) -> str:
    if hr == BG_S_PARTIAL_COMPLETE:
        return (
            "BG_S_PARTIAL_COMPLETE: the transferred files were moved into place, the others dropped"
        )
    return "S_OK: files moved into place"


# -- verbs ------------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace, out: Output) -> int:
    """create NAME: a new empty job (SUSPENDED); prints its id."""
    job_type = JOB_TYPES[args.type]
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
                raise UsageError("addfile: --checksum is for download jobs")
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


def _on_job(
    args: argparse.Namespace,
    out: Output,
    call: Callable[[Job], str],
    after: Callable[[Job], object] | None = None,
) -> int:
    """A verb on one job: open the store, find the job, *call* it and print
    ``job ID 'NAME': <what call returned>`` (then *after*, still with the store open)."""
    with open_manager(args, active=False) as mgr:
        job = resolve(mgr, args.job)
        out.line(f"job {short_id(job)} {job.display_name!r}: {call(job)}")
        if after is not None:
            after(job)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, out: Output) -> int:
    """resume JOB: queue it."""

    def call(job: Job) -> str:
        job.resume()
        return job.state.name

    def note(job: Job) -> None:
        if job.state in _ACTIVE:
            queued_note(out, job)

    return _on_job(args, out, call, note)


def cmd_suspend(args: argparse.Namespace, out: Output) -> int:
    """suspend JOB: stop it; data on disk is kept."""

    def call(job: Job) -> str:
        job.suspend()
        return job.state.name

    return _on_job(args, out, call)


def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    """cancel JOB: delete its temporary files and end it."""

    def call(job: Job) -> str:
        hr = job.cancel()
        extra = "" if hr == S_OK else " (BG_S_UNABLE_TO_DELETE_FILES: some temporary files remain)"
        return f"{job.state.name}{extra}"

    return _on_job(args, out, call)


def cmd_complete(args: argparse.Namespace, out: Output) -> int:
    """complete JOB: move the transferred files into place and end it."""

    def call(job: Job) -> str:
        hr = job.complete()
        return f"{job.state.name} ({complete_text(hr)})"

    return _on_job(args, out, call)


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


def cmd_error(args: argparse.Namespace, out: Output) -> int:
    """error CODE: name, hex and description of an HRESULT (both readings where uploads differ)."""
    chosen = JOB_TYPES[args.type] if args.type else None
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
        secret = [h.split(":", 1)[0].strip() for h in args.header or [] if is_secret_header(h)]
        if secret:
            out.note(
                f"note: {', '.join(secret)} headers are kept in memory only, never in the store: "
                "they end with this process (pass them to `bitsnb transfer --header` instead)"
            )
    if hasattr(args, "max_bandwidth"):
        cap = args.max_bandwidth
        changes.append(("max bandwidth", lambda j: j.set_max_bandwidth(cap)))
    if args.proxy_usage is not None or args.proxy is not None or args.bypass is not None:
        usage = args.proxy_usage
        if usage is None:
            usage = ProxyUsage.OVERRIDE
        changes.append(("proxy", lambda j: j.set_proxy_settings(usage, args.proxy, args.bypass)))
    if not changes:
        raise UsageError("set: give at least one option to change (see `bitsnb set --help`)")

    def call(job: Job) -> str:
        for _, apply in changes:
            apply(job)
        return f"set {', '.join(name for name, _ in changes)}"

    return _on_job(args, out, call)


# -- bitsadmin parity: the remaining job calls ------------------------------------------------
def cmd_setnotifycmdline(args: argparse.Namespace, out: Output) -> int:
    """setnotifycmdline JOB PROGRAM [ARGS...] (or --clear): run PROGRAM when the job ends."""
    if args.clear == bool(args.program):
        raise UsageError("setnotifycmdline: give PROGRAM [ARGS...] or --clear")

    def call(job: Job) -> str:
        if args.clear:
            job.set_notify_cmd_line(None)
            return "notify command line removed"
        program = args.program[0]
        job.set_notify_cmd_line(program, " ".join(args.program))
        return f"notify command line set ({program})"

    return _on_job(args, out, call)


def cmd_setnotifyflags(args: argparse.Namespace, out: Output) -> int:
    """setnotifyflags JOB FLAGS: which events the job reports."""

    def call(job: Job) -> str:
        job.notify_flags = args.flags
        return f"notify flags {_flags_text(job.notify_flags)}"

    return _on_job(args, out, call)


def cmd_setcredentials(args: argparse.Namespace, out: Output) -> int:
    """setcredentials JOB TARGET SCHEME USER[:PASSWORD]."""
    user, password = ask_credential(args.credential)

    def call(job: Job) -> str:
        job.set_credentials(args.target, args.scheme, user, password)
        return f"{args.target.name.lower()} credentials set ({args.scheme.name})"

    status = _on_job(args, out, call)
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

    return _on_job(args, out, call)


def cmd_replaceremoteprefix(args: argparse.Namespace, out: Output) -> int:
    """replaceremoteprefix JOB OLD NEW: change the start of every remote URL that has OLD."""

    def call(job: Job) -> str:
        changed = job.replace_remote_prefix(args.old, args.new)
        return "remote names changed" if changed else "no remote name starts with that prefix"

    return _on_job(args, out, call)


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

    return _on_job(args, out, call)


def cmd_setreplyfilename(args: argparse.Namespace, out: Output) -> int:
    """setreplyfilename JOB PATH: where an upload-reply job puts the reply."""

    def call(job: Job) -> str:
        job.set_reply_file_name(local_path(args.path))
        return f"reply file {safe_text(job.reply_file_name or '-')}"

    return _on_job(args, out, call)


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
GETTERS: dict[str, tuple[str, Callable[[Job], object]]] = {
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
    _, read = GETTERS[args.getter]
    with open_manager(args, active=False) as mgr:
        value = read(resolve(mgr, args.job))
    text = str(value).lower() if isinstance(value, bool) else str(value)
    for line in text.split("\n"):
        out.line(safe_text(line))
    return EXIT_OK
