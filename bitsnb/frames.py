"""pandas views of the queue: jobs, files and the error table as typed DataFrames.

The blocking API finds this module by name when asked (``JobEnumerator.to_frame()``,
``Job.files_frame()``), so pandas is imported here at module top; the views type against
``bitsnb._protocols``, never against the blocking API or the core. Columns use pandas' nullable dtypes: an unknown size is
``<NA>`` (never BITS's ``0xFFFFFFFFFFFFFFFF``), states and priorities are ordered categoricals,
times are tz-aware UTC and text is the nullable ``string`` dtype. Credentials never appear: URLs carrying them are refused by the core,
and remote names are passed through ``redact_url`` anyway.

The raw frames are for analysis and stay as they are (full ids, bytes as integers). For reading,
``styled_jobs(frame)`` and ``styled_files(frame)`` return pandas ``Styler``s: short ids as the
index (the full id kept in a column), sizes in units (``20.0 MB``), percentages rounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._enums import JobPriority, JobState, JobType
from ._errors import all_errors, lookup_error
from ._format import format_bytes
from ._jobtable import JobTable
from ._models import FileInfo
from ._protocols import JobView, ManagerView, is_blocking
from ._validate import redact_url

__all__ = [
    "PRIORITY_DTYPE",
    "STATE_DTYPE",
    "TYPE_DTYPE",
    "errors_frame",
    "files_to_frame",
    "jobs_frame",
    "jobs_to_frame",
    "styled_files",
    "styled_jobs",
    "table_to_frame",
]

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

STATE_DTYPE = pd.CategoricalDtype([s.name for s in sorted(JobState)], ordered=True)
"""Job states in BITS order (QUEUED … CANCELLED), so sorting and ``<`` follow the enum."""

PRIORITY_DTYPE = pd.CategoricalDtype([p.name for p in sorted(JobPriority)], ordered=True)
"""Priorities from FOREGROUND (runs first) to LOW."""

TYPE_DTYPE = pd.CategoricalDtype([t.name for t in sorted(JobType)], ordered=False)
"""DOWNLOAD, UPLOAD, UPLOAD_REPLY."""

_ERROR_STATES = frozenset({JobState.ERROR, JobState.TRANSIENT_ERROR})

# Category codes are the enum values, which is what lets us build columns with from_codes.
assert [s.value for s in sorted(JobState)] == list(range(len(JobState)))
assert [p.value for p in sorted(JobPriority)] == list(range(len(JobPriority)))
assert [t.value for t in sorted(JobType)] == list(range(len(JobType)))

_JOB_COLUMNS = [
    "display_name",
    "type",
    "state",
    "priority",
    "bytes_total",
    "bytes_transferred",
    "percent",
    "files_total",
    "files_transferred",
    "created",
    "modified",
    "transfer_completed",
    "error_code",
    "error_name",
    "error_description",
    "owner",
    "max_bandwidth",
    "rate",
    "worker",
]
_ERROR_CODES = np.array([int(s) for s in _ERROR_STATES], dtype="int8")


def _times(values: list[float], missing: list[bool] | None = None) -> pd.DatetimeIndex:
    """UTC timestamps from epoch seconds, rounded to the microsecond as ``job.times`` is."""
    frac, whole = np.modf(np.asarray(values, dtype="float64"))
    micros = whole * 1e6 + np.round(frac * 1e6)  # datetime.fromtimestamp's rounding
    if missing is not None:
        micros[np.asarray(missing, dtype=bool)] = np.nan
    times: pd.DatetimeIndex = pd.to_datetime(micros, unit="us", utc=True)
    return times.as_unit("ns")


def jobs_to_frame(jobs: Iterable[JobView], workers: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per job, indexed by job id (text), with typed columns.

    Columns: display_name, type, state, priority, bytes_total, bytes_transferred, percent,
    files_total, files_transferred, created, modified, transfer_completed, error_code (hex
    text), error_name, error_description, owner, max_bandwidth (the cap in force over it,
    bytes/s), rate (bytes/s on the wire now; NA when not running) and worker (who holds the
    job: *workers* maps a job id's text to its holder; NA when nobody does). The error
    columns are filled only while a job is in ERROR or TRANSIENT_ERROR (as ``job.error``).
    The jobs' public properties are read in one pass into a ``JobTable`` (``bitsnb.Job`` and
    ``bitsnb.AsyncJob`` both fit), framed by ``table_to_frame``.
    """
    table = JobTable()
    for job in jobs:
        state = job.state
        table.ids.append(str(job.id))
        table.names.append(job.display_name)
        table.owners.append(job.owner)
        table.types.append(int(job.type))
        table.states.append(int(state))
        table.priorities.append(int(job.priority))
        p = job.progress
        table.bytes_total.append(p.bytes_total)
        table.bytes_done.append(p.bytes_transferred)
        table.files_total.append(p.files_total)
        table.files_done.append(p.files_transferred)
        t = job.times
        table.created.append(t.creation.timestamp())
        table.modified.append(t.modification.timestamp())
        tc = t.transfer_completion
        table.completed.append(None if tc is None else tc.timestamp())
        err = job.error if state in _ERROR_STATES else None
        table.error_codes.append(None if err is None else err.code)
        bw = getattr(job, "bandwidth", None)  # the cap in force and the rate on the wire now
        table.max_bandwidth.append(getattr(bw, "cap", None))
        table.rates.append(getattr(bw, "rate", None))
    table.workers = [(workers or {}).get(i) for i in table.ids]
    return table_to_frame(table)


def _texts(values: Sequence[str | None]) -> pd.api.extensions.ExtensionArray:
    """A ``string`` column from a list (by way of an object array: pandas converts that one in
    C, a list of many ``None`` one by one; a column of nothing but ``None`` is all NA)."""
    if values.count(None) == len(values):  # the error columns of a healthy queue, no workers
        return pd.array(np.full(len(values), pd.NA, dtype=object), dtype="string")
    return pd.array(np.asarray(values, dtype=object), dtype="string")


def _floats(values: list[float | None]) -> pd.api.extensions.ExtensionArray:
    """A ``Float64`` column from a list, ``None`` as NA (numpy reads ``None`` as NaN in C)."""
    data = np.array(values, dtype="float64")
    missing = np.isnan(data)
    return pd.arrays.FloatingArray(np.where(missing, 0.0, data), missing)


def table_to_frame(table: JobTable) -> pd.DataFrame:
    """``jobs_to_frame``'s frame (same columns, same dtypes) from a ``JobTable`` (what
    ``Manager.job_table`` reads in one query): each column built whole from its list, the
    error texts looked up once per code, so 100,000 jobs take a fraction of a second."""
    n = len(table)
    states = np.asarray(table.states, dtype="int8")
    known = np.array([t is not None for t in table.bytes_total], dtype=bool)
    total = np.array([0 if t is None else t for t in table.bytes_total], dtype="int64")
    done = np.asarray(table.bytes_done, dtype="int64")
    files_total = np.asarray(table.files_total, dtype="int64")
    files_done = np.asarray(table.files_done, dtype="int64")
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(
            total > 0,
            100.0 * done / np.where(total > 0, total, 1),
            np.where(files_total == files_done, 100.0, 0.0),
        )
    unknown = ~known
    failing = np.flatnonzero(np.isin(states, _ERROR_CODES))
    codes: list[int | None] = [None] * n
    for i in failing:
        codes[i] = table.error_codes[i]
    described = {c: lookup_error(c) for c in set(codes) if c is not None}
    err_hex: list[str | None] = [None] * n
    err_name: list[str | None] = [None] * n
    err_text: list[str | None] = [None] * n
    for i in failing:
        code = codes[i]
        if code is not None:
            err_hex[i] = f"0x{code:08X}"
            err_name[i], err_text[i] = described[code].name, described[code].description
    no_completion = [t is None for t in table.completed]
    columns: dict[str, object] = {
        "display_name": _texts(table.names),
        "type": pd.Categorical.from_codes(np.asarray(table.types, dtype="int8"), dtype=TYPE_DTYPE),
        "state": pd.Categorical.from_codes(states, dtype=STATE_DTYPE),
        "priority": pd.Categorical.from_codes(
            np.asarray(table.priorities, dtype="int8"), dtype=PRIORITY_DTYPE
        ),
        "bytes_total": pd.arrays.IntegerArray(total, unknown.copy()),
        "bytes_transferred": pd.arrays.IntegerArray(done, np.zeros(n, dtype=bool)),
        "percent": pd.arrays.FloatingArray(pct.astype("float64"), unknown.copy()),
        "files_total": pd.arrays.IntegerArray(files_total, np.zeros(n, dtype=bool)),
        "files_transferred": pd.arrays.IntegerArray(files_done, np.zeros(n, dtype=bool)),
        "created": _times(table.created),
        "modified": _times(table.modified),
        "transfer_completed": _times(
            [0.0 if t is None else t for t in table.completed], no_completion
        ),
        "error_code": _texts(err_hex),
        "error_name": _texts(err_name),
        "error_description": _texts(err_text),
        "owner": _texts(table.owners),
        "max_bandwidth": _floats(table.max_bandwidth),
        "rate": _floats(table.rates),
        "worker": _texts(table.workers),
    }
    index = pd.Index(table.ids, dtype="string", name="job_id")
    return pd.DataFrame(columns, index=index, columns=_JOB_COLUMNS, copy=False)


def jobs_frame(
    mgr: ManagerView, all_users: bool = False, include_finished: bool = False
) -> pd.DataFrame:
    """The manager's queue as a DataFrame: ``mgr.job_table(...)`` (one query of the store, with
    each job's worker and the live progress of the jobs *mgr* runs) then ``table_to_frame``."""
    return table_to_frame(mgr.job_table(all_users, include_finished=include_finished))


def files_to_frame(job: JobView, workers: dict[int, str] | None = None) -> pd.DataFrame:
    """One row per file of *job*, indexed by the file's index.

    Columns: remote_name, local_name, bytes_total (Int64, ``<NA>`` while unknown),
    bytes_transferred, transferred, completed, temporary_name, known_hash and hash (``alg:hex``
    text, ``<NA>`` when none), verified (boolean: True once the file matched the known hash or
    the server's digest, False when a check failed or it was declared invalid, ``<NA>`` while
    nothing was checked).
    bytes_transferred, transferred, completed, temporary_name, connections (in use now),
    worker (who holds the file now, by its index in *workers*; by default the job's manager
    asks its store, ``Manager.file_workers``: NA when nobody does, and always on SQLite).
    """
    files = job.files
    if workers is None:
        workers = _file_workers(job)
    totals = [f.progress.bytes_total for f in files]
    return pd.DataFrame(
        {
            "remote_name": pd.array([redact_url(f.remote_name) for f in files], dtype="string"),
            "local_name": pd.array([f.local_name for f in files], dtype="string"),
            "bytes_total": pd.array(totals, dtype="Int64"),
            "bytes_transferred": pd.array(
                [f.progress.bytes_transferred for f in files], dtype="Int64"
            ),
            "transferred": np.array([f.transferred for f in files], dtype=bool),
            "completed": np.array([f.progress.completed for f in files], dtype=bool),
            "temporary_name": pd.array([f.temporary_name for f in files], dtype="string"),
            "known_hash": pd.array([f.known_hash for f in files], dtype="string"),
            "hash": pd.array([f.hash for f in files], dtype="string"),
            "verified": pd.array([_verified(f) for f in files], dtype="boolean"),
            "connections": np.array([f.connections for f in files], dtype="int64"),
            "worker": _texts([workers.get(f.index) for f in files]),
        },
        index=pd.Index([f.index for f in files], dtype="int64", name="index"),
    )


def _file_workers(job: JobView) -> dict[int, str]:
    """Who holds which file of *job*, from its manager's store (a blocking manager only: an
    ``AsyncJob``'s manager answers with a coroutine, and a frame is built here, now)."""
    manager = getattr(job, "manager", None)
    ask = getattr(manager, "file_workers", None)
    if ask is None or not is_blocking(ask) or getattr(manager, "closed", False):
        return {}
    workers: dict[int, str] = ask(job.id)
    return workers


def _verified(f: FileInfo) -> bool | None:
    """True: hashed and matched; False: a check failed (or declared invalid); None: unchecked."""
    if not f.validation_state:
        return False
    return True if f.hash is not None else None


def errors_frame() -> pd.DataFrame:
    """The whole error table: name, code (hex text such as ``0x80200001``), description."""
    rows = all_errors()
    return pd.DataFrame(
        {
            "name": pd.array([r.name for r in rows], dtype="string"),
            "code": pd.array([f"0x{r.code:08X}" for r in rows], dtype="string"),
            "description": pd.array([r.description for r in rows], dtype="string"),
        }
    )


_BYTE_COLUMNS = ("bytes_total", "bytes_transferred")


def _size(value: Any) -> str:
    return "?" if value is None or value is pd.NA or pd.isna(value) else format_bytes(int(value))


def _percent(value: Any) -> str:
    return "?" if value is None or value is pd.NA or pd.isna(value) else f"{float(value):.0f}%"


def _time(value: Any) -> str:
    if value is None or value is pd.NaT or pd.isna(value):
        return ""
    return str(value.tz_convert(None).strftime("%Y-%m-%d %H:%M:%S")) + " UTC"


def styled_jobs(frame: pd.DataFrame) -> Styler:
    """*frame* (``jobs_to_frame``) for reading: indexed by the first 8 characters of the id
    (unique enough to tell jobs apart, as ``bitsnb list`` shows them) with the full ``job_id``
    as the last column, sizes in units, percentages rounded, times to the second.
    The frame itself is not changed."""
    view = frame.reset_index()
    view.index = pd.Index(view["job_id"].str.slice(0, 8), name="id")
    view = view[[c for c in view.columns if c != "job_id"] + ["job_id"]]
    formats: dict[str, Any] = dict.fromkeys(_BYTE_COLUMNS, _size)
    formats["percent"] = _percent
    formats.update(dict.fromkeys(("created", "modified", "transfer_completed"), _time))
    return view.style.format(formats, na_rep="")


def styled_files(frame: pd.DataFrame) -> Styler:
    """*frame* (``files_to_frame``) for reading: sizes in units. The frame is not changed."""
    return frame.style.format(dict.fromkeys(_BYTE_COLUMNS, _size), na_rep="")
