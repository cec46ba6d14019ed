"""The ``bitsnb`` verbs that run work in this process: monitor, wait, transfer, serve, demo."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Sequence

from rich.console import Group
from rich.live import Live
from rich.text import Text

from ._cli_args import (
    UsageError,
    ask_credential,
    is_secret_header,
    open_manager,
    resolve,
    split_command,
)
from ._cli_integrity import cli_entries
from ._cli_jobs import complete_text, queued_note
from ._cli_output import EXIT_NOT_IMPLEMENTED, EXIT_OK, EXIT_TRANSFER_FAILED, Output, safe_text
from ._cli_render import job_dict, jobs_table, short_id
from ._cli_watch import DONE_STATES, Watcher, report_outcome, watch_job
from ._enums import JobState, JobType, ProxyUsage
from ._errors import BitsError
from ._format import format_bytes
from ._planning import default_display_name, local_path, make_folder, plan_downloads
from ._sync import Job


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
                out.line(f"job {short_id(job)}: {job.state.name} ({complete_text(hr)})")
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
            raise UsageError("transfer --upload: give one URL and one local file")
        if args.checksum or args.checksum_file:
            raise UsageError("transfer --upload: --checksum is for downloads")
        pairs = [(urls[0], local_path(args.dest))]
        job_type = JobType.UPLOAD
    else:
        plan = plan_downloads(urls, args.dest)
        pairs = plan.pairs
        job_type = JobType.DOWNLOAD
    name = args.name if args.name is not None else default_display_name(pairs)
    credential = ask_credential(args.credential) if args.credential else None
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
            if hasattr(args, "max_bandwidth"):
                job.set_max_bandwidth(args.max_bandwidth)
            if args.notify_cmd is not None:
                job.set_notify_cmd_line(*split_command(args.notify_cmd))
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
            queued_note(out, job)
            if credential is not None or any(is_secret_header(h) for h in args.header or []):
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
