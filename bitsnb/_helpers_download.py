"""``download`` and ``download_many``: a job per call, shown, waited for and completed (known hashes skip files in place)."""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checksums import Entry, missing, read_checksums, with_hashes
from ._codes import E_INVALIDARG, E_NOTIMPL
from ._enums import JobPriority, JobState, JobType
from ._errors import BitsError
from ._helpers_manager import default_manager
from ._planning import default_display_name, make_folder, plan_downloads
from ._sync import Job, Manager
from ._validate import MAX_DISPLAY_NAME
from .notebook import in_kernel

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("bitsnb.helpers")


# -- download --------------------------------------------------------------------------------


def _invalid(message: str) -> BitsError:
    return BitsError(E_INVALIDARG, message)


def _url_list(urls: object) -> list[str]:
    """A list of URL strings from a str, any iterable, a pandas Series or a one-column frame."""
    if isinstance(urls, str):
        return [urls]
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(urls, pd.DataFrame):
        if urls.shape[1] != 1:
            raise _invalid(
                f"a DataFrame of URLs must have exactly one column, not {urls.shape[1]}; "
                "pass the column (df['url'])"
            )
        urls = urls.iloc[:, 0]
    if pd is not None and isinstance(urls, pd.Series | pd.Index):
        return list(urls.tolist())
    if not isinstance(urls, Iterable):
        raise _invalid(f"expected a URL or an iterable of URLs, not {type(urls).__name__}")
    return list(urls)


def _priority(priority: object) -> JobPriority:
    """A BITS priority, or ``BitsError(E_NOTIMPL)`` as ``SetPriority`` answers."""
    try:
        return JobPriority(priority)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise BitsError(E_NOTIMPL, f"priority {priority!r} is not a BITS priority") from None


def _display_name(name: str | None, pairs: Sequence[tuple[str, str]]) -> str:
    return default_display_name(pairs) if name is None else name[:MAX_DISPLAY_NAME]


def _show(
    jobs: Sequence[Job], manager: Manager, display: bool | None, completes: bool
) -> list[Any]:
    """Show the job's panel (a queue panel of just these jobs for several) in a notebook and
    return the panels; *display* True forces it (elsewhere: one text line per job), False turns
    it off. The panels carry display ids, so the saved notebook shows their final state."""
    if display is False or (display is None and not in_kernel()):
        return []
    try:
        notebook = importlib.import_module("bitsnb.notebook")
    except ImportError:  # no widgets layer (or no ipywidgets): no panel, still a download
        return []
    if len(jobs) > 1 and in_kernel():
        panel = notebook.queue_panel(manager, jobs=jobs)
        notebook.show_panel(panel)
        return [panel]
    shown = []
    for job in jobs:  # outside a kernel display_job prints a one-line summary
        panel = notebook.display_job(job, completes=completes)
        if panel is not None:
            shown.append(panel)
    return shown


def _create(
    manager: Manager,
    name: str,
    pairs: Sequence[tuple[str, str] | tuple[str, str, str | None]],
    priority: JobPriority,
) -> Job:
    """Create, fill and resume one job; on failure the job is cancelled (queue unchanged)."""
    job = manager.create_job(name, JobType.DOWNLOAD, priority=priority)
    try:
        job.add_file_set(pairs)
        job.resume()
    except BaseException:
        try:
            job.cancel()
        except Exception:  # the job's own failure matters more
            pass
        raise
    return job


_completer: concurrent.futures.ThreadPoolExecutor | None = None
_completer_lock = threading.Lock()


def _complete_soon(job: Job) -> None:
    """Complete *job* on the helpers' one worker thread (never on the manager's loop thread,
    which a listener runs on, and never twice)."""
    global _completer
    with _completer_lock:
        if _completer is None:
            _completer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="bitsnb-complete"
            )
        pool = _completer

    def run() -> None:
        try:
            if job.state is JobState.TRANSFERRED:
                job.complete()
        except (BitsError, RuntimeError):  # completed or cancelled meanwhile, or closed
            log.debug("auto-complete of %s skipped", job.id, exc_info=True)

    pool.submit(run)


def _auto_complete(manager: Manager, jobs: Sequence[Job]) -> None:
    """Complete each of *jobs* as soon as it is TRANSFERRED, while this process runs.

    A listener on the manager notes the state changes; the completing happens on a worker
    thread. It stops listening once every job is done (or the manager closes). A job that is
    TRANSFERRED when the process ends waits for ``job.complete()`` as any BITS job does.
    """
    pending = {j.id: j for j in jobs}
    lock = threading.Lock()
    unsubscribe: list[Any] = []

    def done(job_id: Any) -> None:
        with lock:
            pending.pop(job_id, None)
            last = not pending
        if last and unsubscribe:
            unsubscribe[0]()

    def listener(event: Any) -> None:  # on the manager's loop thread: note, never block
        job = pending.get(event.job_id)
        if job is None or event.kind not in ("state", "removed"):
            return
        state = event.state
        if event.kind == "removed" or state.is_final:
            done(event.job_id)
        elif state is JobState.TRANSFERRED:
            done(event.job_id)
            _complete_soon(job)

    try:
        unsubscribe.append(manager.subscribe(listener))
    except RuntimeError:  # the manager is closed: nothing will transfer here
        return
    for job in list(pending.values()):  # states reached before the listener was there
        if job.state is JobState.TRANSFERRED:
            done(job.id)
            _complete_soon(job)
        elif job.state.is_final:
            done(job.id)


def _failure(jobs: Sequence[Job]) -> BitsError | None:
    """A ``BitsError`` for the first job that ended in ERROR (None when none did)."""
    failed = [j for j in jobs if j.state is JobState.ERROR]
    if not failed:
        return None
    job = failed[0]
    err = job.error
    others = f" ({len(failed) - 1} more jobs failed too)" if len(failed) > 1 else ""
    if err is None:
        return BitsError(E_INVALIDARG, f"job {job.display_name!r} ended in ERROR{others}")
    where = f" for {err.file.remote_name}" if err.file is not None else ""
    detail = err.message or f"{err.description}{where}"
    return BitsError(
        err.code,
        f"job {job.display_name!r} ({str(job.id)[:8]}) ended in ERROR: {detail}{others}. "
        "It stays in the queue: job.resume() retries, job.cancel() removes it and its "
        "temporary files",
        context=err.context,
    )


def _wait_one(job: Job, remaining: float | None, progress: bool) -> JobState:
    """Wait for *job*; on a terminal (or in a log) show its progress as the CLI does."""
    if not progress:
        return job.wait(remaining)
    from ._cli_output import Output
    from ._cli_watch import Watcher, watch_job

    with Watcher(Output(), job, explain_errors=False) as watcher:
        return watch_job(job.manager, job, watcher, timeout=remaining)


def _finish(
    jobs: Sequence[Job],
    wait: bool,
    timeout: float | None,
    complete: bool,
    progress: bool,
    panels: Sequence[Any],
) -> None:
    """Wait for every job (one deadline for all), complete the TRANSFERRED ones if asked, and
    raise for a job that ended in ERROR. Without *wait*, completing happens in the background."""
    if not wait:
        if complete:
            _auto_complete(jobs[0].manager, jobs)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for i, job in enumerate(jobs):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                state = _wait_one(job, remaining, progress)
            except TimeoutError:
                if complete:  # the jobs go on; their files still land once transferred
                    _auto_complete(job.manager, jobs[i:])
                raise
            if complete and state is JobState.TRANSFERRED:
                job.complete()
                if progress:
                    n = job.progress.files_total
                    print(f"{job.display_name}: {n} file{'s' if n != 1 else ''} in place")
    finally:
        for panel in panels:  # the final state, published from this cell
            panel.sync_display()
    failure = _failure(jobs)
    if failure is not None:
        raise failure


# -- known hashes ------------------------------------------------------------------------------


def _hash_list(urls: Sequence[str], known_hashes: object) -> list[object]:
    """*known_hashes* as a list parallel to *urls*: from a mapping url → hash, a list, a
    pandas Series or a one-column DataFrame (by position)."""
    if known_hashes is None:
        return [None] * len(urls)
    if isinstance(known_hashes, Mapping):
        wanted = set(urls)
        unknown = [u for u in known_hashes if u not in wanted]
        if unknown:
            raise _invalid(f"known_hashes names a URL that is not downloaded: {unknown[0]!r}")
        return [known_hashes.get(u) for u in urls]
    if isinstance(known_hashes, str):
        raise _invalid("known_hashes wants one hash per URL (a mapping or a list), not a str")
    values = _url_list(known_hashes)  # the same shapes as the URLs: list, Series, frame column
    if len(values) != len(urls):
        raise _invalid(f"{len(values)} known hashes for {len(urls)} URLs; give one per URL")
    return list(values)


def _to_fetch(
    manager: Manager,
    pairs: Sequence[tuple[str, str]],
    given: Sequence[object],
    checksums: str | os.PathLike[str] | None,
    timeout: float | None,
) -> list[Entry]:
    """The (URL, path, known hash) entries still to download (all hashes checked first)."""
    sums = None if checksums is None else read_checksums(checksums, manager, timeout or 60.0)
    return missing(manager, with_hashes(pairs, given, sums))


def download(
    urls_or_url: str | Iterable[str],
    dest: str | os.PathLike[str],
    *,
    name: str | None = None,
    priority: JobPriority | int = JobPriority.NORMAL,
    wait: bool = False,
    timeout: float | None = None,
    complete: bool | None = None,
    manager: Manager | None = None,
    display: bool | None = None,
    known_hash: str | None = None,
    checksums: str | os.PathLike[str] | None = None,
) -> Job | Path:
    """Download one URL or several into *dest* as one BITS job; returns the ``Job``.

    *dest* is a folder (file names come from the URLs' last path segment, unquoted) or, for a
    single URL, a full file path; a missing folder is created (the rule of
    ``bitsnb._planning``, which ``bitsnb transfer`` follows too). Everything is checked first
    — URLs, names (empty, ``.``, ``..``, containing ``/``, or duplicates are
    ``BitsError(E_INVALIDARG)``) — so a refused call leaves the queue and the disk unchanged.
    The job is then resumed.

    *priority* defaults to NORMAL, as ``bitsadmin /transfer`` does (FOREGROUND would pre-empt
    every other job).

    By default the job is completed as soon as it is TRANSFERRED, so the files appear under
    their names (until then they are hidden ``.BIT*.tmp`` files): in the background while this
    process runs, or before returning with ``wait=True``. ``complete=True`` waits for that
    before returning (as ``wait=True``); ``complete=False`` keeps BITS's two steps (call
    ``job.complete()`` yourself).
    ``wait=True`` blocks until the files are in place (or the job is TRANSFERRED, with
    ``complete=False``); ``TimeoutError`` after *timeout* seconds (the job keeps going), and
    ``BitsError`` when the job ends in ERROR (it stays in the queue for ``resume``/``cancel``).
    ``paths(job)`` lists the files.

    In a Jupyter kernel the job's live panel is shown (``display=False`` turns it off), so
    assign the result (``job = bitsnb.download(...)``) rather than leaving it as the cell's
    last expression. In a script ``wait=True`` shows the progress as ``bitsnb transfer`` does:
    a live bar on a terminal, a line per change otherwise (``display=False``: silent).
    *manager* defaults to ``default_manager()``.

    *known_hash* (``"sha256:<hex>"``, pooch's format; one URL only) or *checksums* (the path or
    URL of a ``SHA256SUMS``-style file, matched by file name) make the job verify each file as
    it streams in (a mismatch: ``BG_E_VALIDATION_FAILED``). A destination that already holds
    the right file is not fetched again: when every file is in place no job is made and the
    ``Path`` comes back at once (the file's; the folder's for several URLs). A file a job of
    this store completed and that is unchanged since (size, mtime, inode) is trusted without
    reading it; any other file there is hashed once. A malformed hash: ``BitsError
    (E_INVALIDARG)``, nothing created.
    """
    prio = _priority(priority)
    url_list = _url_list(urls_or_url)
    plan = plan_downloads(url_list, dest)
    pairs = plan.pairs
    if known_hash is not None and len(pairs) != 1:
        raise _invalid("known_hash is for one URL; give download_many(known_hashes=...)")
    mgr = manager if manager is not None else default_manager()
    given = _hash_list(url_list, None if known_hash is None else [known_hash])
    entries = _to_fetch(mgr, pairs, given, checksums, timeout)
    if not entries:  # every file is in place already: no job (pooch's cache)
        return Path(pairs[0][1]) if len(pairs) == 1 else Path(plan.folder)
    make_folder(plan)
    job = _create(mgr, _display_name(name, pairs), entries, prio)
    completes = complete is not False
    wait = wait or complete is True  # complete=True has always meant "wait, then complete"
    panels = _show([job], mgr, display, completes)
    _finish([job], wait, timeout, completes, _script_progress(wait, display, panels), panels)
    return job


def download_many(
    urls: Iterable[str] | pd.Series[str] | pd.DataFrame,
    dest: str | os.PathLike[str],
    *,
    per_job: int | None = None,
    name: str | None = None,
    priority: JobPriority | int = JobPriority.NORMAL,
    wait: bool = False,
    timeout: float | None = None,
    complete: bool | None = None,
    manager: Manager | None = None,
    display: bool | None = None,
    known_hashes: Mapping[str, str | None] | Sequence[str | None] | pd.Series[str] | None = None,
    checksums: str | os.PathLike[str] | None = None,
) -> list[Job]:
    """Download many URLs into the folder *dest* (created when missing): one job, or jobs of
    *per_job* files each.

    *urls* may be a list, any iterable, a pandas Series (a DataFrame column) or a one-column
    DataFrame. All URLs and names are checked before the first job is created (names must be
    unique across all the jobs, since they share *dest*); if creating a later job fails, the
    jobs already created are cancelled. Jobs are named *name* (default: from the first file)
    with `` (i/n)`` appended when there are several. Other arguments as in ``download``;
    *timeout* bounds the whole wait, and ``wait=True`` raises ``BitsError`` when any job ended
    in ERROR (after waiting for all). In a notebook the queue panel shows these jobs only.

    *known_hashes* gives a known hash per URL: a mapping url → hash, or a list, pandas Series
    or one-column DataFrame parallel to *urls* (None/NaN: no hash); *checksums* a
    ``SHA256SUMS``-style file (path or URL) for the rest. Files already in place with the
    right hash are left out of the jobs (``download``'s cache); when all are, no job is made
    and the list is empty.
    """
    prio = _priority(priority)
    url_list = _url_list(urls)
    if per_job is not None and (isinstance(per_job, bool) or per_job < 1):
        raise _invalid(f"per_job must be a positive number of files, not {per_job!r}")
    folder = os.path.join(os.fspath(dest), "")  # always a folder here, even for one URL
    plan = plan_downloads(url_list, folder)
    pairs = plan.pairs
    mgr = manager if manager is not None else default_manager()
    given = _hash_list(url_list, known_hashes)
    entries = _to_fetch(mgr, pairs, given, checksums, timeout)
    if not entries:  # every file is in place already: no job
        return []
    make_folder(plan)
    size = per_job or len(entries)
    chunks = [entries[i : i + size] for i in range(0, len(entries), size)]
    jobs: list[Job] = []
    try:
        for i, chunk in enumerate(chunks):
            label = _display_name(
                name, [(e[0], e[1]) for e in (chunk if name is not None else entries)]
            )
            if len(chunks) > 1:
                label = f"{label[: MAX_DISPLAY_NAME - 16]} ({i + 1}/{len(chunks)})"
            jobs.append(_create(mgr, label, chunk, prio))
    except BaseException:
        for job in jobs:
            try:
                job.cancel()
            except Exception:
                pass
        raise
    completes = complete is not False
    wait = wait or complete is True
    panels = _show(jobs, mgr, display, completes)
    _finish(jobs, wait, timeout, completes, _script_progress(wait, display, panels), panels)
    return jobs


def _script_progress(wait: bool, display: bool | None, panels: Sequence[Any]) -> bool:
    """Show the CLI's progress while waiting: outside a kernel, unless *display* is False."""
    return wait and display is not False and not panels and not in_kernel()
