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

from ._rate import RateEstimator
from ._text import job_line

if TYPE_CHECKING:
    from .._sync import Job, Manager
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


def job_panel(job: Job) -> JobPanel:
    """A live panel for *job* (name, state, bar, files, speed, ETA, error, buttons)."""
    from .._sync import Job

    if not isinstance(job, Job):
        raise TypeError(
            f"job_panel() takes a bitsnb.Job (the blocking API), not {type(job).__name__}"
        )
    panel: JobPanel = _load_panels().JobPanel(job)
    return panel


def queue_panel(mgr: Manager) -> QueuePanel:
    """A live table of *mgr*'s jobs with totals and a state filter."""
    from .._sync import Manager

    if not isinstance(mgr, Manager):
        raise TypeError(
            f"queue_panel() takes a bitsnb.Manager (the blocking API), not {type(mgr).__name__}"
        )
    panel: QueuePanel = _load_panels().QueuePanel(mgr)
    return panel


def in_kernel() -> bool:
    """True inside a Jupyter kernel (a front end that can render widgets), judged from
    ``sys.modules`` so that nothing is imported to find out."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


_shown: set[tuple[object, int]] = set()  # (job id, cell execution count) already displayed


def display_job(job: Job) -> None:
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
