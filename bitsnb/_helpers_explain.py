"""``explain`` (what a code or a job's error means) and the error table and queue as DataFrames."""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._codes import E_INVALIDARG, S_OK, from_user
from ._enums import ErrorContext, JobState
from ._errors import BitsError, all_errors, context_description, lookup_error
from ._helpers_manager import default_manager
from ._job import AsyncJob
from ._models import ErrorInfo
from ._sync import Job, Manager

if TYPE_CHECKING:
    import pandas as pd

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
        return from_user(int(stripped, 0))
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
    raise BitsError(E_INVALIDARG, f"{text!r} is neither an error code nor a known error name")


def _no_error(job: Job | AsyncJob) -> Explanation:
    state = job.state
    later = (
        " If it fails, explain(job) will say why."
        if state not in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED, JobState.CANCELLED)
        else ""
    )
    return Explanation(
        name="no error",
        code=S_OK,
        hex=f"0x{S_OK:08X}",
        description=f"The job {job.display_name!r} is {state.name} and has no error.{later}",
        known=True,
    )


def explain(code_or_error: int | str | BitsError | ErrorInfo | Job | AsyncJob) -> Explanation:
    """Explain an HRESULT: an int, hex text or name, a ``BitsError``, an ``ErrorInfo``, or a job.

    For a job, its current error is explained; a job without one (still CONNECTING, say) gets
    an explanation that says so with its state, so a Run All does not stop on it. A bare HTTP
    status (``explain(404)``, ``explain("503")``) means its ``BG_E_HTTP_ERROR_nnn`` code.
    Unknown codes still get an explanation, with ``known=False``.
    """
    context: ErrorContext | None = None
    message: str | None = None
    file: str | None = None
    protocol: str | None = None
    if isinstance(code_or_error, Job | AsyncJob):
        job = code_or_error
        err = job.error
        if err is None:
            return _no_error(job)
        code_or_error = err
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
        code = from_user(code_or_error)
    else:
        raise BitsError(E_INVALIDARG, f"cannot explain a {type(code_or_error).__name__}")
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
    manager: Manager | None = None,
    all_users: bool = False,
    include_finished: bool = False,
    *,
    styled: bool = False,
) -> Any:
    """The queue as a DataFrame, one row per job (``default_manager()`` when *manager* is None).

    ``styled=True`` returns it for reading instead (``bitsnb.frames.styled_jobs``: short ids,
    sizes in units, percentages rounded); the plain frame is the one to analyse.
    """
    from .frames import jobs_frame as frame
    from .frames import styled_jobs

    df = frame(manager if manager is not None else default_manager(), all_users, include_finished)
    return styled_jobs(df) if styled else df
