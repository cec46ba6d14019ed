"""The notebook views of jobs and managers (DataFrames, panels) as hooks the package root
fills in, so that the blocking API never imports the views."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ViewHooks", "views"]


def _no_views(*args: object) -> Any:
    raise RuntimeError("bitsnb's notebook views are not installed")


@dataclass
class ViewHooks:
    """The notebook views of jobs and managers (DataFrames, panels), plugged in by the package
    root (``bitsnb/__init__.py``): the views depend on this API, never the other way round."""

    jobs_frame: Callable[[Sequence[Any], dict[str, str] | None], Any] = _no_views
    files_frame: Callable[[Any], Any] = _no_views
    job_panel: Callable[..., Any] = _no_views
    queue_panel: Callable[..., Any] = _no_views
    display_job: Callable[[Any], None] = _no_views


views = ViewHooks()
