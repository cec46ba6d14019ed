"""Notebook front end: live ipywidgets panels for a job and for the queue, with a text fallback.

``job.panel()`` / ``bitsnb.notebook.job_panel(job)`` and ``mgr.panel()`` /
``bitsnb.notebook.queue_panel(mgr)`` return widgets to display; displaying a ``Job`` in a
notebook shows its panel (``display_job``). Panels update from a background pump thread, a few
times a second at most, and stop on ``close()`` or when the manager closes. Importing this
package is cheap: ipywidgets is only imported when a panel is built.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._format import RateEstimator
from .._protocols import JobControl, ManagerView, is_blocking
from ._text import job_line

if TYPE_CHECKING:
    from ._panels import JobPanel, JobSnapshot, QueuePanel

__all__ = [
    "JobPanel",
    "JobSnapshot",
    "QueuePanel",
    "RateEstimator",
    "display_job",
    "in_kernel",
    "job_panel",
    "queue_panel",
]

_LAZY = frozenset({"JobPanel", "JobSnapshot", "QueuePanel"})


def _load_panels() -> ModuleType:
    try:
        from . import _panels
    except ImportError as exc:  # pragma: no cover - ipywidgets is a dependency
        raise ImportError(
            "bitsnb's notebook panels need ipywidgets: pip install 'ipywidgets>=8.1'"
        ) from exc
    return _panels


def job_panel(job: JobControl) -> JobPanel:
    """A live panel for *job* (name, state, bar, files, speed, ETA, error, buttons)."""
    if not is_blocking(job.suspend, job.resume, job.cancel, job.complete):
        raise TypeError(
            f"job_panel() takes a bitsnb.Job (the blocking API), not {type(job).__name__}"
        )
    panel: JobPanel = _load_panels().JobPanel(job)
    return panel


def queue_panel(mgr: ManagerView) -> QueuePanel:
    """A live table of *mgr*'s jobs with totals and a state filter."""
    if not is_blocking(mgr.enum_jobs):
        raise TypeError(
            f"queue_panel() takes a bitsnb.Manager (the blocking API), not {type(mgr).__name__}"
        )
    panel: QueuePanel = _load_panels().QueuePanel(mgr)
    return panel


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


def display_job(job: JobControl) -> None:
    """Display *job*'s live panel in a notebook; elsewhere print its one-line summary.

    A job already shown by the same cell (``bitsnb.download(...)`` shows its panel, and the
    returned job, as the cell's last value, would show it again) is shown once.
    """
    if in_kernel():
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        key = (job.id, int(getattr(shell, "execution_count", 0) or 0))
        if key in _shown:
            return
        _shown.add(key)
        display(job_panel(job))  # type: ignore[no-untyped-call]
    else:
        print(job_line(job))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(_load_panels(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
