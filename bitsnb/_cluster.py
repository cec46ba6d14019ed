"""What each worker of a cluster holds and how fast it moves, from successive readings of a
shared store (the cluster panel's rows). Rules only: the readings come from the store, the
clock is injected, nothing here does IO."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["ActivityRates", "WorkerActivity"]


@dataclass(frozen=True)
class WorkerActivity:
    """One worker now: the jobs and files it holds, its rate (bytes/s of the jobs it holds
    whole and of the batches it ended, since the reading before) and the jobs in error it
    wrote last."""

    worker: str
    host: str
    jobs: int
    files: int
    bytes_per_second: float
    errors: int


class ActivityRates:
    """Turns readings ``worker → (jobs, files, bytes done)`` into ``WorkerActivity`` rows,
    each worker's rate from the bytes it moved since the last reading (0 at its first; a job
    it gave up takes its bytes with it, so a drop counts as 0, never as a negative rate)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._done: dict[str, int] = {}
        self._at: float | None = None

    def update(
        self, readings: Mapping[str, tuple[int, int, int]], errors: Mapping[str, int]
    ) -> list[WorkerActivity]:
        """The rows of this reading, by worker name (workers with errors but nothing held
        included)."""
        now = self._clock()
        elapsed = None if self._at is None else max(now - self._at, 1e-9)
        rows = []
        for worker in sorted(set(readings) | {w for w, n in errors.items() if n}):
            jobs, files, done = readings.get(worker, (0, 0, 0))
            before = self._done.get(worker)
            rate = 0.0
            if elapsed is not None and before is not None:
                rate = max(0, done - before) / elapsed
            host = worker.partition(":")[0]
            rows.append(WorkerActivity(worker, host, jobs, files, rate, errors.get(worker, 0)))
        self._done = {w: r[2] for w, r in readings.items()}
        self._at = now
        return rows
