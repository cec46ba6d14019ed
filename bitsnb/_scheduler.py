"""Which job runs next: priority queues, round robin within a priority, time slices, pre-emption.

Pure bookkeeping over job ids and priorities — no store, no IO, no tasks. The runner asks it
for the next job to start while a slot is free, and a running job asks it whether to give up
its slot: when a higher priority waits (pre-emption), or when its time slice is over and a job
of its own priority waits (round robin).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterator

from ._enums import JobPriority

__all__ = ["Scheduler"]


class Scheduler:
    """Queued job ids per priority, and when each running job started its slice."""

    def __init__(self, max_active: int, time_slice: float) -> None:
        self.max_active = max_active
        self.time_slice = time_slice
        self._queues: list[deque[uuid.UUID]] = [deque() for _ in JobPriority]
        self._queued: dict[uuid.UUID, JobPriority] = {}  # queued job -> priority queued at
        self._waiting = [0] * len(JobPriority)
        self._running: dict[uuid.UUID, float] = {}  # running job -> monotonic slice start

    # -- the queues ---------------------------------------------------------------------------
    def enqueue(self, job_id: uuid.UUID, priority: JobPriority) -> None:
        """Queue a job at its priority's tail (no-op if queued or running already)."""
        if job_id in self._queued or job_id in self._running:
            return
        self._queued[job_id] = priority
        self._waiting[priority] += 1
        self._queues[priority].append(job_id)

    def dequeue(self, job_id: uuid.UUID) -> None:
        """Take a job out of its queue (its stale entry is skipped later)."""
        prio = self._queued.pop(job_id, None)
        if prio is not None:
            self._waiting[prio] -= 1

    def reprioritise(self, job_id: uuid.UUID, priority: JobPriority) -> bool:
        """A queued job whose priority changed moves to its new queue's tail; True if it did."""
        queued_at = self._queued.get(job_id)
        if queued_at is None or queued_at == priority:
            return False
        self.dequeue(job_id)
        self.enqueue(job_id, priority)
        return True

    def is_queued(self, job_id: uuid.UUID) -> bool:
        """True while the job waits in a queue."""
        return job_id in self._queued

    def next_to_start(self) -> Iterator[uuid.UUID]:
        """Queued jobs to start, highest priority first, while a slot is free.

        Each id yielded has left its queue; the caller either starts it (``started``) or
        drops it (then queues it again when it can run).
        """
        for prio, queue in enumerate(self._queues):
            while queue and len(self._running) < self.max_active:
                job_id = queue.popleft()
                if self._queued.get(job_id) != prio:
                    continue  # stale entry (suspended, cancelled, re-prioritised)
                del self._queued[job_id]
                self._waiting[prio] -= 1
                yield job_id

    # -- running jobs ---------------------------------------------------------------------------
    def started(self, job_id: uuid.UUID) -> None:
        """The job took a slot: its time slice starts now."""
        self._running[job_id] = time.monotonic()

    def stopped(self, job_id: uuid.UUID) -> None:
        """The job gave its slot back."""
        self._running.pop(job_id, None)

    def should_yield(self, job_id: uuid.UUID, priority: JobPriority) -> bool:
        """True when a running job should give up its slot (pre-empted, or its slice is over)."""
        waiting = self._waiting
        if any(waiting[p] for p in range(priority)):
            return True  # pre-empted by a higher priority
        if waiting[priority]:
            started = self._running.get(job_id, time.monotonic())
            return time.monotonic() - started >= self.time_slice
        return False
