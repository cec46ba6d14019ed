"""bitsnb: a Background Intelligent Transfer Service (BITS) for Jupyter notebooks and scripts.

``Manager`` (blocking) and ``AsyncManager`` (asyncio) keep a persistent, resumable queue of
transfer jobs in SQLite; jobs move through BITS's states and survive restarts.
"""

from __future__ import annotations

from typing import Any

from ._bandwidth import BandwidthStatus, BandwidthWindow
from ._enumerator import Enumerator
from ._enums import (
    AuthScheme,
    AuthTarget,
    ErrorContext,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    ProxyUsage,
)
from ._errors import (
    BitsError,
    ErrorDescription,
    InvalidStateError,
    JobNotFoundError,
    get_error_description,
)
from ._job import AsyncJob
from ._manager import AsyncManager, JobEvent, default_store_path
from ._models import (
    BG_SIZE_UNKNOWN,
    ErrorInfo,
    FileInfo,
    FileProgress,
    FileRange,
    JobProgress,
    JobTimes,
    Policy,
)
from ._sync import Job, JobEnumerator, Manager, views
from .helpers import (
    CleanupReport,
    Explanation,
    cleanup,
    default_manager,
    download,
    download_many,
    errors_frame,
    explain,
    jobs_frame,
    paths,
    run,
)


# The package root plugs the notebook views into the blocking API: the views (frames, panels)
# import the API, never the other way round. Each one imports its module on first use, so
# ``import bitsnb`` stays free of pandas and ipywidgets.
def _jobs_frame(jobs: object, workers: dict[str, str] | None = None) -> object:
    from .frames import jobs_to_frame

    return jobs_to_frame(jobs, workers)  # type: ignore[arg-type]


def _files_frame(job: object) -> object:
    from .frames import files_to_frame

    return files_to_frame(job)  # type: ignore[arg-type]


def _job_panel(job: object, **options: Any) -> object:
    from .notebook import job_panel

    return job_panel(job, **options)  # type: ignore[arg-type]


def _queue_panel(mgr: object, **options: Any) -> object:
    from .notebook import queue_panel

    return queue_panel(mgr, **options)  # type: ignore[arg-type]


def _display_job(job: object) -> None:
    from .notebook import display_job

    display_job(job)  # type: ignore[arg-type]


views.jobs_frame = _jobs_frame
views.files_frame = _files_frame
views.job_panel = _job_panel
views.queue_panel = _queue_panel
views.display_job = _display_job

__version__ = "0.1.0"

__all__ = [
    "BG_SIZE_UNKNOWN",
    "AsyncJob",
    "AsyncManager",
    "AuthScheme",
    "AuthTarget",
    "BandwidthStatus",
    "BandwidthWindow",
    "BitsError",
    "CleanupReport",
    "Enumerator",
    "ErrorContext",
    "ErrorDescription",
    "ErrorInfo",
    "Explanation",
    "FileInfo",
    "FileProgress",
    "FileRange",
    "InvalidStateError",
    "Job",
    "JobEnumerator",
    "JobEvent",
    "JobNotFoundError",
    "JobPriority",
    "JobProgress",
    "JobState",
    "JobTimes",
    "JobType",
    "Manager",
    "NotifyFlags",
    "Policy",
    "ProxyUsage",
    "__version__",
    "cleanup",
    "default_manager",
    "default_store_path",
    "download",
    "download_many",
    "errors_frame",
    "explain",
    "get_error_description",
    "jobs_frame",
    "paths",
    "run",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and getattr(_obj, "__module__", "").startswith("bitsnb._"):
        try:
            _obj.__module__ = "bitsnb"
        except (AttributeError, TypeError):
            pass
del _name, _obj
