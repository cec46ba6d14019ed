"""``bitsnb demo``: one BITS job from start to finish against a loopback server, in a few seconds.

It needs no network and no setup: a ``bitsnb.testing.FileServer`` on 127.0.0.1 serves generated
files, a throwaway store and folder hold the job and the downloads. Two injected faults show what
BITS is for: a dropped connection (TRANSIENT_ERROR, retried, resumed with a Range request) and a
server that stalls (the demo suspends the job there and resumes it). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import tempfile
import time
from pathlib import Path

from ._cli_output import Output
from ._cli_render import jobs_table, short_id
from ._cli_watch import Watcher, report_outcome, watch_job
from ._enums import JobPriority, JobState
from ._format import format_bytes
from ._models import Policy
from ._planning import local_path
from ._sync import Job, Manager
from .testing import Fault, FileServer

__all__ = ["run_demo"]

_STALL = 5.0  # the slow server stalls this long (the demo suspends during it)
_PAUSE = 1.0  # how long the job stays suspended
_RETRY_DELAY = 1.0  # the job's minimum retry delay after the dropped connection
_TIMEOUT = 60.0  # bound on the whole transfer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Script:
    """The demo's fault script: report the drop, suspend while the server stalls, resume.

    Files overlap in flight, so the order of events is not fixed: the stall is re-armed if a
    retry threw its first stalled request away, and the job is suspended only when the stalled
    file is the last one left (nothing else in flight).
    """

    def __init__(
        self, out: Output, job: Job, server: FileServer, watcher: Watcher, stall_name: str
    ) -> None:
        self.out = out
        self.job = job
        self.server = server
        self.watcher = watcher
        self.stall_name = stall_name
        self.stalls_armed = 1
        self.saw_transient = False
        self.suspended_at: float | None = None
        self.resumed = False
        self.paused = 0.0

    def tick(self) -> None:
        job, w = self.job, self.watcher
        state = job.state
        if state is JobState.TRANSIENT_ERROR and not self.saw_transient:
            self.saw_transient = True
            err = job.error
            what = err.name if err is not None else "an error"
            where = err.file.remote_name.rsplit("/", 1)[-1] if err and err.file else "a file"
            w.print(
                f"   {where}: connection dropped -> TRANSIENT_ERROR ({what}), "
                f"retried after {_RETRY_DELAY:g} s"
            )
            if self._stall_requests() >= self.stalls_armed:  # the retry drops that request
                self.server.inject(self.stall_name, Fault.stall(_STALL))
                self.stalls_armed += 1
        p = job.progress
        if (
            self.suspended_at is None
            and not self.resumed
            and state in (JobState.CONNECTING, JobState.TRANSFERRING)
            and p.files_transferred >= p.files_total - 1
            and self._server_stalling()
        ):
            job.suspend()
            self.suspended_at = time.monotonic()
            w.refresh()
            w.print("   the server stalls -> suspend(): the job stops, data on disk is kept")
            w.print(jobs_table([job], tty=self.out.tty))
        elif self.suspended_at is not None and time.monotonic() - self.suspended_at >= _PAUSE:
            self.paused += time.monotonic() - self.suspended_at
            self.suspended_at = None
            self.resumed = True
            job.resume()
            w.print("   resume(): the job is queued again and carries on where it stopped")

    def _stall_requests(self) -> int:
        return sum(r.fault == "stall" for r in self.server.requests)

    def _server_stalling(self) -> bool:
        return any(r.fault == "stall" and not r.finished for r in self.server.requests)


def run_demo(args: argparse.Namespace, out: Output) -> int:
    """Run the demo; 0 when the files arrived intact and the job is ACKNOWLEDGED."""
    count: int = args.files
    size: int = args.size
    faults = not args.no_faults
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = Path(local_path(args.keep))
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(
                stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="bitsnb-demo-", ignore_cleanup_errors=True)
                )
            )
        dest = root / "downloads"
        dest.mkdir(exist_ok=True)
        store = Path(args.store) if args.store else root / "jobs.db"
        server = stack.enter_context(FileServer(host="127.0.0.1"))
        names = [f"file-{i}.bin" for i in range(1, count + 1)]
        urls = [server.add_random_file(name, size, seed=i) for i, name in enumerate(names, 1)]
        drop_name = names[min(1, count - 1)]
        stall_name = names[-1]
        out.line("bitsnb demo: one BITS job, start to finish, against a loopback HTTP server")
        out.line(
            f"  server  {server.base_url}  ({count} files of {format_bytes(size)}, Range + ETag)"
        )
        out.line(f"  store   {store}" + ("" if args.keep or args.store else "  (thrown away)"))
        out.line(f"  folder  {dest}")
        if faults:
            server.inject(drop_name, Fault.drop_after(max(1, size // 3)))
            server.inject(stall_name, Fault.stall(_STALL))
            out.line(
                f"  faults  {drop_name}: the connection drops after {format_bytes(max(1, size // 3))};"
                f" {stall_name}: the server stalls"
            )
        out.line()

        policy = Policy(min_retry_delay_floor=0.5)
        mgr = stack.enter_context(Manager(store, policy=policy))
        job = mgr.create_job(
            "bitsnb demo",
            priority=JobPriority.FOREGROUND,
            description=f"{count} files from {server.base_url}",
        )
        try:
            return _run(args, out, mgr, job, server, names, urls, dest, faults, size)
        except BaseException:
            with contextlib.suppress(Exception):
                if not job.state.is_final:
                    job.cancel()
            raise


def _run(
    args: argparse.Namespace,
    out: Output,
    mgr: Manager,
    job: Job,
    server: FileServer,
    names: list[str],
    urls: list[str],
    dest: Path,
    faults: bool,
    size: int,
) -> int:
    job.minimum_retry_delay = _RETRY_DELAY
    job.add_file_set([(url, dest / name) for url, name in zip(urls, names, strict=True)])
    out.line(
        f"1. create_job() + add_file_set(): job {short_id(job)} {job.display_name!r} holds "
        f"{len(names)} files, {job.state.name}"
    )
    out.out.print(jobs_table([job], tty=out.tty))

    out.line("2. resume(): the job is queued and transfers in the background")
    job.resume()
    started = time.monotonic()
    with Watcher(out, job, explain_errors=False) as watcher:
        script = _Script(out, job, server, watcher, names[-1]) if faults else None
        state = watch_job(
            mgr,
            job,
            watcher,
            timeout=_TIMEOUT,
            on_tick=script.tick if script is not None else None,
            tick=0.1,
        )
    active = time.monotonic() - started - (script.paused if script is not None else 0.0)
    if state is not JobState.TRANSFERRED:
        return report_outcome(out, job, state)

    out.line(f"3. {state.name}: every byte is on disk, in temporary files")
    out.out.print(jobs_table([job], tty=out.tty))
    job.complete()
    out.line(f"4. complete(): files renamed into place, job {job.state.name}")

    out.line("5. check: size and sha256 against the server's files")
    bad = 0
    for name in names:
        got, want = dest / name, server.path(name)
        ok = got.is_file() and got.stat().st_size == want.stat().st_size
        digest = _sha256(got) if ok else ""
        ok = ok and digest == _sha256(want)
        bad += not ok
        mark = "ok " if ok else "BAD"
        out.line(f"   {mark} {name}  {format_bytes(want.stat().st_size)}  sha256 {digest[:16]}")
    if faults:
        ranges = [
            r.range for r in server.requests if r.path == names[min(1, len(names) - 1)] and r.range
        ]
        if ranges:
            out.line(
                f"   the dropped file was resumed with 'Range: {ranges[0]}', not fetched again"
            )
    total = size * len(names)
    if bad:
        out.error(f"{bad} of {len(names)} files do not match the server's")
        return 1
    out.line()
    out.line(
        f"{len(names)} files, {format_bytes(total)}, transferred in {active:.1f} s, {job.state.name}",
        style="bold green",
    )
    if args.keep:
        out.line(
            f"kept: {dest} and the queue {mgr.store_path} "
            f"(`bitsnb --store {mgr.store_path} list --all`)"
        )
    else:
        out.line("next: `bitsnb transfer URL... DEST`, `bitsnb list`, `bitsnb --help`")
    return 0
