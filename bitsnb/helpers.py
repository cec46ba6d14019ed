"""One-line helpers for notebooks and scripts: ``download``, ``download_many``, ``explain``, ``run``.

``bitsnb/__init__.py`` imports this module eagerly, so it must stay light: pandas, IPython and
ipywidgets are imported only inside the functions that need them, and nothing here patches an
event loop at import time.
"""

from __future__ import annotations

import asyncio
import functools
import html
import importlib
import os
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._codes import E_INVALIDARG, E_NOTIMPL
from ._enums import ErrorContext, JobPriority, JobState, JobType
from ._errors import BitsError, all_errors, context_description, lookup_error
from ._job import AsyncJob
from ._models import ErrorInfo
from ._planning import default_display_name, make_folder, plan_downloads
from ._sync import Job, Manager
from ._validate import MAX_DISPLAY_NAME
from .notebook import in_kernel

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Explanation",
    "default_manager",
    "download",
    "download_many",
    "errors_frame",
    "explain",
    "jobs_frame",
    "run",
]

T = TypeVar("T")

_default: Manager | None = None
_default_lock = threading.Lock()


def default_manager() -> Manager:
    """The process-wide ``Manager`` on the default store, created on first use (thread-safe).

    The store is ``$BITSNB_HOME/jobs.db`` or the user data folder (``default_store_path()``);
    the Manager closes itself at interpreter exit. A closed default manager is replaced.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Manager()
        return _default


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


def _show(jobs: Sequence[Job], manager: Manager, display: bool | None) -> None:
    """Show the job's panel (the queue panel for several jobs) in a notebook; *display*
    True forces it (elsewhere: one text line per job), False turns it off."""
    if display is False or (display is None and not in_kernel()):
        return
    try:
        notebook = importlib.import_module("bitsnb.notebook")
    except ImportError:  # no widgets layer (or no ipywidgets): no panel, still a download
        return
    if len(jobs) > 1 and in_kernel():
        ipy_display: Any = importlib.import_module("IPython.display").display
        ipy_display(notebook.queue_panel(manager))
    else:  # outside a kernel display_job prints a one-line summary
        for job in jobs:
            notebook.display_job(job)


def _create(
    manager: Manager, name: str, pairs: Sequence[tuple[str, str]], priority: JobPriority
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


def _finish(jobs: Sequence[Job], wait: bool, timeout: float | None, complete: bool) -> None:
    """Wait for every job (one deadline for all); complete the TRANSFERRED ones if asked."""
    if not (wait or complete):
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    for job in jobs:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        state = job.wait(remaining)
        if complete and state is JobState.TRANSFERRED:
            job.complete()


def download(
    urls_or_url: str | Iterable[str],
    dest: str | os.PathLike[str],
    *,
    name: str | None = None,
    priority: JobPriority | int = JobPriority.NORMAL,
    wait: bool = False,
    timeout: float | None = None,
    complete: bool = False,
    manager: Manager | None = None,
    display: bool | None = None,
) -> Job:
    """Download one URL or several into *dest* as one BITS job; returns the ``Job``.

    *dest* is a folder (file names come from the URLs' last path segment, unquoted) or, for a
    single URL, a full file path; a missing folder is created (the rule of
    ``bitsnb._planning``, which ``bitsnb transfer`` follows too). Everything is checked first
    — URLs, names (empty, ``.``, ``..``, containing ``/``, or duplicates are
    ``BitsError(E_INVALIDARG)``) — so a refused call leaves the queue and the disk unchanged.
    The job is then resumed.

    *priority* defaults to NORMAL, as ``bitsadmin /transfer`` does (FOREGROUND would pre-empt
    every other job). ``wait=True`` blocks until the job is TRANSFERRED or in ERROR
    (``TimeoutError`` after *timeout* seconds; the job keeps going); ``complete=True`` also
    waits, then calls ``job.complete()`` if the job was TRANSFERRED, so the files are in place.
    In a Jupyter kernel the job's live panel is shown (``display=False`` turns it off), so
    assign the result (``job = bitsnb.download(...)``) rather than leaving it as the cell's
    last expression. *manager* defaults to ``default_manager()``.
    """
    prio = _priority(priority)
    plan = plan_downloads(_url_list(urls_or_url), dest)
    pairs = plan.pairs
    mgr = manager if manager is not None else default_manager()
    make_folder(plan)
    job = _create(mgr, _display_name(name, pairs), pairs, prio)
    _show([job], mgr, display)
    _finish([job], wait, timeout, complete)
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
    complete: bool = False,
    manager: Manager | None = None,
    display: bool | None = None,
) -> list[Job]:
    """Download many URLs into the folder *dest* (created when missing): one job, or jobs of
    *per_job* files each.

    *urls* may be a list, any iterable, a pandas Series (a DataFrame column) or a one-column
    DataFrame. All URLs and names are checked before the first job is created (names must be
    unique across all the jobs, since they share *dest*); if creating a later job fails, the
    jobs already created are cancelled. Jobs are named *name* (default: from the first file)
    with `` (i/n)`` appended when there are several. Other arguments as in ``download``;
    *timeout* bounds the whole wait.
    """
    prio = _priority(priority)
    url_list = _url_list(urls)
    if per_job is not None and (isinstance(per_job, bool) or per_job < 1):
        raise _invalid(f"per_job must be a positive number of files, not {per_job!r}")
    folder = os.path.join(os.fspath(dest), "")  # always a folder here, even for one URL
    plan = plan_downloads(url_list, folder)
    pairs = plan.pairs
    mgr = manager if manager is not None else default_manager()
    make_folder(plan)
    size = per_job or len(pairs)
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    jobs: list[Job] = []
    try:
        for i, chunk in enumerate(chunks):
            label = _display_name(name, chunk if name is not None else pairs)
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
    _show(jobs, mgr, display)
    _finish(jobs, wait, timeout, complete)
    return jobs


# -- explain ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """What an error code means: name, code, hex text, context, description (and details).

    ``str()`` gives readable text; in a notebook the object renders as a small HTML table.
    """

    name: str
    code: int
    hex: str
    description: str
    known: bool
    context: ErrorContext | None = None
    context_description: str | None = None
    message: str | None = None
    file: str | None = None
    protocol: str | None = None

    def _rows(self) -> list[tuple[str, str]]:
        rows = [("name", self.name), ("code", self.hex), ("description", self.description)]
        if self.context is not None:
            rows.append(("context", f"{self.context.name}: {self.context_description}"))
        if self.message:
            rows.append(("message", self.message))
        if self.file:
            rows.append(("file", self.file))
        if self.protocol:
            rows.append(("protocol", self.protocol))
        return rows

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self._rows())
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self._rows())

    def __repr__(self) -> str:
        return f"<Explanation {self.name} ({self.hex}): {self.description}>"

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self._rows()
        )
        return f"<table class='bitsnb-explanation'>{body}</table>"


@functools.cache
def _known_codes() -> frozenset[int]:
    return frozenset(row.code for row in all_errors())


def _code_from_text(text: str) -> int:
    stripped = text.strip()
    try:
        return int(stripped, 0)
    except ValueError:
        pass
    try:
        return int(stripped, 16)
    except ValueError:
        pass
    wanted = stripped.upper()
    for row in all_errors():
        if row.name.upper() == wanted:
            return row.code
    raise _invalid(f"{text!r} is neither an error code nor a known error name")


def explain(code_or_error: int | str | BitsError | ErrorInfo | Job | AsyncJob) -> Explanation:
    """Explain an HRESULT: an int, hex text or name, a ``BitsError``, an ``ErrorInfo``, or a job.

    For a job, its current error is explained (``BitsError(BG_E_ERROR_INFORMATION_UNAVAILABLE)``
    when it is not in ERROR or TRANSIENT_ERROR, as ``job.get_error()``). Unknown codes still
    get an explanation, with ``known=False``.
    """
    context: ErrorContext | None = None
    message: str | None = None
    file: str | None = None
    protocol: str | None = None
    if isinstance(code_or_error, Job | AsyncJob):
        code_or_error = code_or_error.get_error()
    if isinstance(code_or_error, ErrorInfo):
        code = code_or_error.code
        context = code_or_error.context
        message = code_or_error.message or None
        file = code_or_error.file.remote_name if code_or_error.file is not None else None
        protocol = code_or_error.protocol
    elif isinstance(code_or_error, BitsError):
        code = code_or_error.code
        context = code_or_error.context
        message = code_or_error.message
    elif isinstance(code_or_error, str):
        code = _code_from_text(code_or_error)
    elif isinstance(code_or_error, int) and not isinstance(code_or_error, bool):
        code = code_or_error
    else:
        raise _invalid(f"cannot explain a {type(code_or_error).__name__}")
    code &= 0xFFFFFFFF
    row = lookup_error(code)
    return Explanation(
        name=row.name,
        code=code,
        hex=f"0x{code:08X}",
        description=row.description,
        known=code in _known_codes(),
        context=context,
        context_description=context_description(context) if context is not None else None,
        message=message,
        file=file,
        protocol=protocol,
    )


def errors_frame() -> pd.DataFrame:
    """The whole error table as a DataFrame (name, code, description); needs pandas."""
    from .frames import errors_frame as frame

    return frame()


def jobs_frame(
    manager: Manager | None = None, all_users: bool = False, include_finished: bool = False
) -> pd.DataFrame:
    """The queue as a DataFrame, one row per job (``default_manager()`` when *manager* is None)."""
    from .frames import jobs_frame as frame

    return frame(manager if manager is not None else default_manager(), all_users, include_finished)


# -- run --------------------------------------------------------------------------------------


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def run(coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous code and return its result.

    - No running loop in this thread (a script, a worker thread): ``asyncio.run(coro)`` — a
      fresh loop, closed afterwards.
    - A loop is already running in this thread (a Jupyter cell runs inside the kernel's loop):
      ``asyncio.run`` would fail, so ``nest_asyncio2`` is applied to *that* loop, now (never
      at import), and ``loop.run_until_complete(coro)`` runs it re-entrantly. Tasks already on
      the loop — e.g. an ``AsyncManager`` started on the kernel's loop — keep running meanwhile.

    The blocking ``Manager`` never needs this: it runs its own loop on its own thread. ``run``
    is for driving an ``AsyncManager`` that lives on the kernel's loop from plain cells
    (``bitsnb.run(amgr.start())``); in a cell, a bare ``await`` works too.
    Note that ``nest_asyncio2`` patches asyncio process-wide once applied.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        main: Coroutine[Any, Any, T] = coro if isinstance(coro, Coroutine) else _await(coro)
        return asyncio.run(main)
    if threading.current_thread().name.startswith("bitsnb-loop"):
        if asyncio.iscoroutine(coro):
            coro.close()
        raise RuntimeError(
            "bitsnb.run() was called on a Manager's own loop thread (from a listener or "
            "callback); schedule the coroutine there instead of blocking the transfers"
        )
    import nest_asyncio2  # type: ignore[import-untyped]

    nest_asyncio2.apply(loop)
    result: T = loop.run_until_complete(coro)
    return result
