"""What the views need of a job, a manager and a job event, as ``typing.Protocol``s.

The views (``bitsnb.frames``, ``bitsnb.notebook``) type against these instead of importing the
blocking API (``_sync``) or the core: imports run one way (front ends → blocking API → core), and
the blocking API finds the views by module name at call time. ``bitsnb.Job`` fits ``JobControl``,
``bitsnb.AsyncJob`` fits ``JobView`` (its calls are coroutines), ``bitsnb.Manager`` fits
``ManagerView``. Vocabulary only: nothing here runs.
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol

from ._enums import JobPriority, JobState, JobType
from ._jobtable import JobTable
from ._models import ErrorInfo, FileInfo, JobProgress, JobTimes
from ._store_api import StoreURL

__all__ = [
    "JobControl",
    "JobEventView",
    "JobView",
    "Jobs",
    "ManagerView",
    "is_blocking",
]


class JobView(Protocol):
    """What a table row or a panel reads from a job (plain attribute reads, any thread)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def type(self) -> JobType: ...
    @property
    def state(self) -> JobState: ...
    @property
    def display_name(self) -> str: ...
    @property
    def priority(self) -> JobPriority: ...
    @property
    def owner(self) -> str: ...
    @property
    def progress(self) -> JobProgress: ...
    @property
    def times(self) -> JobTimes: ...
    @property
    def error(self) -> ErrorInfo | None: ...
    @property
    def files(self) -> list[FileInfo]: ...


class JobEventView(Protocol):
    """A job event as listeners see it: ``kind`` is created, state, progress, modified, removed."""

    @property
    def job_id(self) -> uuid.UUID: ...
    @property
    def kind(self) -> str: ...
    @property
    def state(self) -> JobState: ...


class Jobs(Protocol):
    """An enumeration of jobs (``EnumJobs``): sized and iterable."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[JobControl]: ...


class ManagerView(Protocol):
    """What the queue panel needs of a manager (``bitsnb.Manager``: blocking calls)."""

    @property
    def closed(self) -> bool: ...
    @property
    def store_path(self) -> os.PathLike[str] | StoreURL: ...
    def enum_jobs(self, all_users: bool = False, *, include_finished: bool = False) -> Jobs: ...
    def job_table(self, all_users: bool = False, *, include_finished: bool = False) -> JobTable: ...
    def file_workers(self, job_id: uuid.UUID | str) -> dict[int, str]: ...
    def job_workers(self) -> dict[str, str]: ...
    def subscribe(self, listener: Callable[[JobEventView], None]) -> Callable[[], None]: ...


class JobControl(JobView, Protocol):
    """A job a panel can drive: ``JobView`` plus the blocking calls and their manager."""

    @property
    def manager(self) -> ManagerView: ...
    @property
    def allowed_calls(self) -> frozenset[str]: ...
    @property
    def error_count(self) -> int: ...
    def suspend(self) -> None: ...
    def resume(self) -> None: ...
    def cancel(self) -> int: ...
    def complete(self) -> int: ...


def is_blocking(*calls: Callable[..., object]) -> bool:
    """True when none of *calls* is a coroutine function: the blocking API, not the async one
    (``bitsnb.AsyncJob`` reads like a ``JobView`` but its calls must be awaited)."""
    return not any(inspect.iscoroutinefunction(call) for call in calls)
