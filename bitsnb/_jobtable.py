"""The queue as columns: one list per column, one position per job, read in one query.

What a frame of many jobs needs (``bitsnb.jobs_frame``), with no record object per job: the
store aggregates each job's files in SQL, and the frame is built from these lists whole.
Vocabulary only: nothing here runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["JobTable"]


@dataclass
class JobTable:
    """Jobs as columns (``ids[i]``, ``states[i]``, … describe job *i*), in creation order.

    ``bytes_total[i]`` is None while the size of one of the job's files is unknown;
    ``workers[i]`` names who holds the job (the lease holder, or the holders of a shared job's
    file batches), None when nobody does (always None on SQLite); ``rates[i]`` is the rate on
    the wire for a job this manager runs now (bytes/s), else None.
    """

    ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    states: list[int] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    created: list[float] = field(default_factory=list)
    modified: list[float] = field(default_factory=list)
    completed: list[float | None] = field(default_factory=list)
    error_codes: list[int | None] = field(default_factory=list)
    max_bandwidth: list[float | None] = field(default_factory=list)
    files_total: list[int] = field(default_factory=list)
    files_done: list[int] = field(default_factory=list)
    bytes_total: list[int | None] = field(default_factory=list)
    bytes_done: list[int] = field(default_factory=list)
    workers: list[str | None] = field(default_factory=list)
    rates: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)
