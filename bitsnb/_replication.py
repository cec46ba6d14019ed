"""Working beside other processes on one store: leases kept alive, changes made elsewhere taken
in, jobs another process let go of picked up, and old jobs scavenged.

Each process transfers only the jobs it holds the lease of; every other change reaches it as
a newer row version, found by a poll of the store's change marker (``written_ns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ._completion import delete_temps
from ._enums import JobState
from ._errors import BitsError
from ._events import Events
from ._jobrun import Runner
from ._models import Policy
from ._persist import STARTABLE, Records, copy_record
from ._records import JobRecord
from ._scheduler import Scheduler
from ._states import Event

__all__ = ["Replication"]

log = logging.getLogger("bitsnb")


class Replication:
    """Takes in other processes' changes and keeps this process's leases."""

    def __init__(
        self,
        policy: Policy,
        records: Records,
        events: Events,
        scheduler: Scheduler,
        runner: Runner,
    ) -> None:
        self._policy = policy
        self._records = records
        self._events = events
        self._scheduler = scheduler
        self._runner = runner
        self._since_ns = time.time_ns()
        self.forget: Callable[[JobRecord], None] = lambda rec: None  # set by the manager
        records.take_newer = self.take_newer
        records.merge_control = self.merge_control

    # -- a newer version of a job -----------------------------------------------------------------
    def take_newer(self, rec: JobRecord, fresh: JobRecord) -> None:
        """Take another process's newer version of a job we do not run, and act on its state."""
        if self._runner.is_running(fresh.id):
            old_state = rec.state
            self.merge_control(rec, fresh)
            if rec.state.is_final:
                self.forget(rec)
            self._events.emit(rec, "state" if rec.state != old_state else "progress")
            return
        old_state = rec.state
        copy_record(rec, fresh)
        if self._scheduler.reprioritise(rec.id, rec.priority):
            self._runner.pump()
        if rec.state.is_final:
            self.forget(rec)
        elif rec.state in STARTABLE:
            self._runner.queue(rec)
        elif rec.state is JobState.TRANSIENT_ERROR:
            self._runner.admit(rec)  # arms its retry timer unless one is armed
        else:
            self._scheduler.dequeue(rec.id)
            self._runner.cancel_retry(rec.id)
        self._events.emit(rec, "state" if rec.state != old_state else "progress")

    def merge_control(self, rec: JobRecord, fresh: JobRecord) -> None:
        """Another process changed a job we transfer: take its control fields, keep our
        progress; a suspend, cancel or complete there stops our run."""
        rec.version = fresh.version
        rec.display_name = fresh.display_name
        rec.priority = fresh.priority
        rec.owner = fresh.owner
        rec.settings = fresh.settings
        if fresh.state in (JobState.SUSPENDED, JobState.CANCELLED, JobState.ACKNOWLEDGED):
            rec.state = fresh.state  # the other process's state, not a move of ours
            if self._runner.is_running(rec.id):
                task = asyncio.ensure_future(self._runner.stop(rec.id))
                task.add_done_callback(_retrieve)

    def _seen(self, fresh: JobRecord) -> None:
        rec = self._records.jobs.get(fresh.id)
        if rec is None:  # created by another process
            if fresh.state.is_final:
                return
            self._records.jobs[fresh.id] = fresh
            self._events.emit(fresh, "created")
            self._runner.admit(fresh)
            self._runner.pump()
        elif fresh.version > rec.version:
            self.take_newer(rec, fresh)

    # -- the housekeeping loop --------------------------------------------------------------------
    async def run(self, before_each: Callable[[], None]) -> None:
        """Poll forever (until cancelled): *before_each* first, then leases, changes, scavenging."""
        p = self._policy
        last_renew = last_scavenge = time.monotonic()
        while True:
            await asyncio.sleep(p.poll_interval)
            try:
                before_each()
                now = time.monotonic()
                if now - last_renew >= p.lease_seconds / 3:
                    self._records.store.renew_leases(p.lease_seconds)
                    last_renew = now
                self._stop_lost()
                self.poll_changes()
                self._pick_up_released()
                if now - last_scavenge >= p.scavenge_interval:
                    last_scavenge = now
                    self._scavenge()
            except asyncio.CancelledError:
                raise
            except BitsError as exc:  # the store is busy: next round
                log.debug("bitsnb housekeeping skipped a round: %s", exc)
            except Exception:
                log.exception("bitsnb housekeeping failed")

    def _stop_lost(self) -> None:
        """Stop the runs of jobs whose lease another manager took over (paused past it, cut
        off): the store refuses their writes already, and the new holder runs them."""
        for job_id in self._records.store.lost_leases():
            if self._runner.is_running(job_id):
                task = asyncio.ensure_future(self._runner.stop(job_id))
                task.add_done_callback(_retrieve)

    def poll_changes(self) -> None:
        """Take in every job another process wrote since the last look."""
        # a small look-back covers clock jitter between processes
        changed, newest = self._records.store.changed_by_others(self._since_ns - 200_000_000)
        self._since_ns = max(self._since_ns, newest)
        for fresh in changed:
            self._seen(fresh)

    def _pick_up_released(self) -> None:
        foreign = self._runner.foreign
        if not foreign:
            return
        held = self._records.store.leased_by_others()
        for job_id in list(foreign - held):
            foreign.discard(job_id)
            rec = self._records.jobs.get(job_id)
            if rec is not None and rec.state in STARTABLE:
                self._scheduler.enqueue(rec.id, rec.priority)
        self._runner.pump()

    def _scavenge(self) -> None:
        cutoff = time.time() - self._policy.job_lifetime
        for rec in [r for r in self._records.jobs.values() if r.modified < cutoff]:
            if self._runner.is_running(rec.id):
                continue
            delete_temps(rec)
            self._records.set_state(rec, Event.SCAVENGE)
            self.forget(rec)
        self._records.store.prune_finished(time.time() - self._policy.history_retention)


def _retrieve(task: asyncio.Future[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
