"""Notebook front end: live ipywidgets panels for a job and for the queue, with a text fallback.

``job.panel()`` / ``bitsnb.notebook.job_panel(job)`` and ``mgr.panel()`` /
``bitsnb.notebook.queue_panel(mgr, jobs=..., since=...)`` return widgets to display; displaying
a ``Job`` in a notebook shows its panel (``display_job``). Panels update from a background pump
thread, a few times a second at most, and stop on ``close()`` or when the manager closes.
A panel shown by bitsnb (``display_job``, ``show_panel``, the helpers) carries a display id: its
saved ``text/plain`` and ``text/html`` follow the job, so a saved notebook shows the final state.

``bitsnb.notebook.cluster_panel(store)`` shows the workers of a shared PostgreSQL queue (what each
holds, its rate, its errors), read from the store.

``settings.compact = True`` (or ``job_panel(job, compact=True)``) draws job panels on one line,
as tqdm does; the default is the detailed panel. Importing this package is cheap: ipywidgets is
only imported when a panel is built.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .. import _codes
from .._errors import BitsError
from .._format import RateEstimator
from .._protocols import JobControl, ManagerView, is_blocking
from .._store_api import StoreURL
from .._store_open import store_location
from ._text import job_line

if TYPE_CHECKING:
    from ._panels import ClusterPanel, JobPanel, JobSnapshot, QueuePanel

__all__ = [
    "ClusterPanel",
    "JobPanel",
    "JobSnapshot",
    "QueuePanel",
    "RateEstimator",
    "cluster_panel",
    "display_job",
    "in_kernel",
    "job_panel",
    "queue_panel",
    "settings",
    "show_panel",
]


@dataclass
class Settings:
    """Process-wide panel settings: ``bitsnb.notebook.settings.compact = True``."""

    compact: bool = False
    """Job panels on one line (name, state, bar, numbers, icon buttons) instead of the
    detailed panel."""


settings = Settings()

_LAZY = frozenset({"ClusterPanel", "JobPanel", "JobSnapshot", "QueuePanel"})


def _load_panels() -> ModuleType:
    try:
        from . import _panels
    except ImportError as exc:  # pragma: no cover - ipywidgets is a dependency
        raise ImportError(
            "bitsnb's notebook panels need ipywidgets: pip install 'ipywidgets>=8.1'"
        ) from exc
    return _panels


def job_panel(job: JobControl, *, compact: bool | None = None, completes: bool = False) -> JobPanel:
    """A live panel for *job* (name, state, bar, files, speed, ETA, error, buttons).

    *compact* (default ``settings.compact``) draws it on one line. *completes* tells the panel
    that the caller completes the job once it is TRANSFERRED (as ``bitsnb.download`` does).
    """
    if not is_blocking(job.suspend, job.resume, job.cancel, job.complete):
        raise TypeError(
            f"job_panel() takes a bitsnb.Job (the blocking API), not {type(job).__name__}"
        )
    flag = settings.compact if compact is None else compact
    panel: JobPanel = _load_panels().JobPanel(job, compact=flag, completes=completes)
    return panel


def queue_panel(
    mgr: ManagerView,
    *,
    jobs: Iterable[JobControl] | None = None,
    since: _dt.datetime | None = None,
) -> QueuePanel:
    """A live table of *mgr*'s jobs: totals, filter, sort, actions.

    *jobs* limits it to those jobs (a run's own); *since* (an aware datetime, or naive local
    time) to the jobs created from then on.
    """
    if not is_blocking(mgr.enum_jobs):
        raise TypeError(
            f"queue_panel() takes a bitsnb.Manager (the blocking API), not {type(mgr).__name__}"
        )
    if since is not None and since.tzinfo is None:
        since = since.astimezone()
    panel: QueuePanel = _load_panels().QueuePanel(mgr, jobs=jobs, since=since)
    return panel


def cluster_panel(
    store: ManagerView | str | os.PathLike[str] | StoreURL, *, interval: float = 1.0
) -> ClusterPanel:
    """A live table of the workers of a shared PostgreSQL queue: each worker's jobs and files
    held, its rate and its jobs in error, and the totals, read from the store every *interval*
    seconds (*store*: a ``postgresql://`` URL, or a ``Manager`` on one). A SQLite store has
    no cluster: ``BitsError(E_INVALIDARG)``."""
    where = store_location(store.store_path if hasattr(store, "store_path") else store)
    if not isinstance(where, StoreURL):
        raise BitsError(
            _codes.E_INVALIDARG,
            f"the cluster panel needs a PostgreSQL store (postgresql://…), not the SQLite "
            f"file {where}",
        )
    from .._store_pg import PgStore

    viewer = f"view:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    source = PgStore(where, viewer, 10.0)
    try:
        panel: ClusterPanel = _load_panels().ClusterPanel(
            source, interval=interval, owns_store=True
        )
    except BaseException:
        source.close()
        raise
    return panel


def show_panel(panel: JobPanel | QueuePanel) -> None:
    """Display *panel* in the running kernel with a display id, so that the saved notebook's
    text and HTML of it follow the job(s) to their final state."""
    _load_panels().show(panel)


def in_kernel() -> bool:
    """True inside a Jupyter kernel (a front end that can render widgets), judged from
    ``sys.modules`` so that nothing is imported to find out.

    The one rule for every front end (``bitsnb.download`` shows panels by it too): IPython and
    ipykernel are loaded and the running shell has a kernel. A plain IPython terminal has no
    kernel, so it gets text.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


_shown: set[tuple[object, int]] = set()  # (job id, cell execution count) already displayed


def display_job(job: JobControl, *, completes: bool = False) -> JobPanel | None:
    """Display *job*'s live panel in a notebook (returned); elsewhere print its summary line.

    A job already shown by the same cell (``bitsnb.download(...)`` shows its panel, and the
    returned job, as the cell's last value, would show it again) is shown once.
    """
    if in_kernel():
        from IPython import get_ipython

        shell = get_ipython()
        key = (job.id, int(getattr(shell, "execution_count", 0) or 0))
        if key in _shown:
            return None
        _shown.add(key)
        panel = job_panel(job, completes=completes)
        show_panel(panel)
        return panel
    print(job_line(job, times=job.times))
    return None


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(_load_panels(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
