"""The queue as a table: the statement that reads every job's row with its files' sums and
its holder in one query, and those rows made columns (``JobTable``), for a frame of many jobs
with no record object per job. No IO: the stores run the statement.
"""

from __future__ import annotations

from typing import Any

from ._enums import JobPriority, JobState, JobType
from ._jobtable import JobTable
from ._store_rows import FINAL, settings_values

__all__ = [
    "APART_SUMS",
    "FILE_SUMS",
    "JOB_TABLE",
    "JOINED_SUMS",
    "SETTINGS_CHANGED",
    "job_table_from",
    "job_table_sql",
]

# each job's files summed up by the database: count, done, the total bytes (NULL unless every
# size is known) and the bytes done (SQLite reads them apart: its join cost more than a dict)
FILE_SUMS = (
    "SELECT job_id, COUNT(*) AS n,"
    " CAST(SUM(CASE WHEN transferred <> 0 OR completed <> 0 THEN 1 ELSE 0 END) AS BIGINT) AS done,"
    " CASE WHEN COUNT(bytes_total) = COUNT(*) THEN CAST(SUM(bytes_total) AS BIGINT) END AS total,"
    " CAST(SUM(bytes_transferred) AS BIGINT) AS bytes FROM files GROUP BY job_id"
)
# the queue as a table (``job_table_from``): each job's row, its files' sums (``{sums}`` and
# ``{join}``: joined here, or 0s and ``FILE_SUMS`` read apart) and who holds it; {worker} is
# the holder's expression (NULL on SQLite), {settings} the settings' (see SETTINGS_CHANGED)
JOB_TABLE = (
    "SELECT j.id, j.display_name, j.type, j.owner, j.priority, j.state, j.created, j.modified,"
    " j.transfer_completed, j.error_code, {settings}, {sums}, {worker} FROM jobs j{join}"
)
JOINED_SUMS = {
    "sums": "COALESCE(f.n, 0), COALESCE(f.done, 0), CASE WHEN f.n IS NULL THEN 0 ELSE f.total"
    " END, COALESCE(f.bytes, 0)",
    "join": f" LEFT JOIN ({FILE_SUMS}) f ON f.job_id = j.id",
}
APART_SUMS = {"sums": "0, 0, 0, 0", "join": ""}
# the settings' text only where it differs from the row before's (NULL: the same), so a queue
# whose jobs share their settings sends the text once, not per job (a server's rows cross a
# socket; SQLite's window sorts slower than it reads, so it sends ``j.settings``)
SETTINGS_CHANGED = (
    "CASE WHEN j.settings = lag(j.settings) OVER (ORDER BY j.{seq}) THEN NULL ELSE j.settings END"
)
_TABLE_STATES = frozenset(int(s) for s in JobState)
_TABLE_TYPES = frozenset(int(t) for t in JobType)
_TABLE_PRIORITIES = frozenset(int(p) for p in JobPriority)


def job_table_sql(
    columns: dict[str, str], seq: str, include_finished: bool, owner: str | None, mark: str
) -> tuple[str, tuple[object, ...]]:
    """``JOB_TABLE`` for one store (its *columns*' expressions, *seq* the creation order's
    column, *mark* its placeholder), narrowed to the
    non-final jobs unless *include_finished*, and to *owner*'s when given; with its arguments."""
    where: list[str] = [] if include_finished else [f"j.state NOT IN {FINAL}"]
    args: tuple[object, ...] = ()
    if owner is not None:
        where.append(f"j.owner = {mark}")
        args = (owner,)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    sql = JOB_TABLE.format(**columns).replace("{seq}", seq)
    return sql + clause + f" ORDER BY j.{seq}", args


def job_table_from(
    rows: list[tuple[Any, ...]], sums: dict[str, tuple[Any, ...]] | None = None
) -> tuple[JobTable, list[str]]:
    """``JOB_TABLE``'s rows as columns; the settings' text decoded once per distinct text;
    the files' sums from *sums* (``FILE_SUMS``' rows by job id) when they were read apart.
    Returns the table and the ids of rows left out (a state, type or priority no bitsnb
    knows, or settings that cannot be read: the rest of the queue is shown)."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * 16
    readable = (
        set(columns[5]) <= _TABLE_STATES
        and set(columns[2]) <= _TABLE_TYPES
        and set(columns[4]) <= _TABLE_PRIORITIES
    )
    cap_of: list[float | None] = []
    bad: list[str] = []
    cap: float | None = None
    text: object = None
    unreadable = False
    for i, value in enumerate(columns[10]):
        if value is not None and value != text:  # settings unlike the row before's
            text = value
            try:
                cap, unreadable = settings_values(str(text)).get("max_bandwidth"), False
            except (ValueError, TypeError):
                unreadable = True
        if unreadable:
            bad.append(str(columns[0][i]))
        cap_of.append(cap)
    c = columns
    if not readable or bad:  # some rows are damaged: the rest without them
        damaged = set(bad)
        keep = [
            i
            for i, r in enumerate(rows)
            if r[5] in _TABLE_STATES
            and r[2] in _TABLE_TYPES
            and r[4] in _TABLE_PRIORITIES
            and str(r[0]) not in damaged
        ]
        kept = set(keep)
        bad = [str(r[0]) for i, r in enumerate(rows) if i not in kept]
        if not keep:
            return JobTable(), bad
        c = list(zip(*[rows[i] for i in keep], strict=True))
        cap_of = [cap_of[i] for i in keep]
    n = len(c[0])
    if sums:  # read apart: each job's, or nothing (no files: 0s, a known total of 0)
        none = (None, 0, 0, 0, 0)
        per = [sums.get(job_id, none) for job_id in c[0]]
        c[11:15] = [tuple(p[k] for p in per) for k in range(1, 5)]
    return (
        JobTable(
            ids=list(c[0]),
            names=list(c[1]),
            types=list(c[2]),
            states=list(c[5]),
            priorities=list(c[4]),
            owners=list(c[3]),
            created=list(c[6]),
            modified=list(c[7]),
            completed=list(c[8]),
            error_codes=list(c[9]),
            max_bandwidth=cap_of,
            files_total=list(c[11]),
            files_done=list(c[12]),
            bytes_total=list(c[13]),
            bytes_done=list(c[14]),
            workers=list(c[15]),
            rates=[None] * n,
        ),
        bad,
    )
