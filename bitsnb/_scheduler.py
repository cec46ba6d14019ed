"""Which job runs next: priority queues, round robin within a priority, time slices, pre-emption.

Pure bookkeeping over job ids and priorities — no store, no IO, no tasks. FOREGROUND jobs run
in the foreground, as in BITS: they start at once, outside the ``max_active`` slots, and never
wait behind background jobs. Background jobs (HIGH, NORMAL, LOW) share those slots: the runner
asks for the next one while a slot is free, and a running background job asks whether to give
up its slot — when a higher background priority waits (pre-emption), or when its time slice is
over and a job of its own priority waits (round robin).
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
        self._foreground: set[uuid.UUID] = set()  # running FOREGROUND jobs (no slot taken)

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
        if self.max_active <= 0:
            return  # a passive manager (the CLI's queries): it transfers nothing, FOREGROUND too
        for prio, queue in enumerate(self._queues):
            foreground = prio == JobPriority.FOREGROUND
            while queue and (foreground or self._background_running() < self.max_active):
                job_id = queue.popleft()
                if self._queued.get(job_id) != prio:
                    continue  # stale entry (suspended, cancelled, re-prioritised)
                del self._queued[job_id]
                self._waiting[prio] -= 1
                if foreground:
                    self._foreground.add(job_id)
                yield job_id

    def _background_running(self) -> int:
        return len(self._running) - len(self._foreground & self._running.keys())

    # -- running jobs ---------------------------------------------------------------------------
    def started(self, job_id: uuid.UUID) -> None:
        """The job took a slot: its time slice starts now."""
        self._running[job_id] = time.monotonic()

    def stopped(self, job_id: uuid.UUID) -> None:
        """The job gave its slot back."""
        self._running.pop(job_id, None)
        self._foreground.discard(job_id)

    def should_yield(self, job_id: uuid.UUID, priority: JobPriority) -> bool:
        """True when a running background job should give up its slot (pre-empted by a higher
        background priority, or its slice is over); FOREGROUND jobs hold no slot, never yield."""
        if priority == JobPriority.FOREGROUND:
            return False
        waiting = self._waiting
        if any(waiting[p] for p in range(JobPriority.FOREGROUND + 1, priority)):
            return True  # pre-empted by a higher priority
        if waiting[priority]:
            started = self._running.get(job_id, time.monotonic())
            return time.monotonic() - started >= self.time_slice
        return False
