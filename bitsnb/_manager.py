"""``AsyncManager`` (IBackgroundCopyManager): a thin façade over the queue's parts.

The parts, each with one job: ``Records`` keeps the jobs in memory equal to the store,
``Scheduler`` decides which job runs next, ``Runner`` runs them, ``Events`` delivers events and
notifications, ``Replication`` works beside other processes on the same store, and
``JobControl`` holds the operations applications call. Everything runs on one event loop; the
blocking ``Manager`` (``_sync.py``) runs an ``AsyncManager`` on a loop thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from . import _codes
from ._bandwidth import check_rate
from ._cluster_limits import ClusterLimits, shares_limits
from ._completion import FolderSync, record_hash, verified_hash
from ._engine import Engine
from ._enumerator import Enumerator
from ._enums import JobPriority, JobType
from ._errors import BitsError, get_error_description
from ._events import Events, JobEvent
from ._integrity import parse_known_hash
from ._job import AsyncJob
from ._jobctl import JobControl
from ._jobrun import RUNNING, Runner
from ._jobtable import JobTable
from ._models import Policy
from ._persist import Records, await_patiently
from ._records import JobSecrets
from ._replication import Replication
from ._scheduler import Scheduler
from ._states import Event
from ._store import lease_name
from ._store_api import JobStore, StoreURL
from ._store_open import open_store, store_location
from ._validate import is_admin, os_user

__all__ = ["AsyncManager", "JobEvent", "control_of", "default_store_path"]


def default_store_path() -> Path | StoreURL:
    """``$BITSNB_STORE``, else ``$BITSNB_HOME/jobs.db``, else ``jobs.db`` in the user data folder."""
    override = os.environ.get("BITSNB_STORE")
    if override:
        return store_path(override)
    home = os.environ.get("BITSNB_HOME")
    if home:
        return Path(home).expanduser() / "jobs.db"
    import platformdirs

    return Path(platformdirs.user_data_dir("bitsnb", appauthor=False)) / "jobs.db"


def store_path(store: str | os.PathLike[str] | StoreURL) -> Path | StoreURL:
    """The SQLite file or PostgreSQL database a store argument names; a URL of another scheme
    (``sqlite://``, ``mysql://``…) is refused rather than taken for a folder name."""
    return store_location(store)


class _Life(enum.Enum):
    UNOPENED = 1  # constructed; start() not called yet
    OPEN = 2  # store open, scheduler running
    CLOSED = 3  # aclose() called; cannot reopen


class AsyncManager:
    """The BITS manager on an asyncio loop: create, enumerate and look up jobs.

    Use ``async with AsyncManager(store=...) as mgr:``. Jobs that were active when the store
    was last used continue by themselves.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | StoreURL | None = None,
        *,
        policy: Policy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store_path: Path | StoreURL = (
            store_path(store) if store is not None else default_store_path()
        )
        self.policy = policy or Policy()
        self._transport = transport
        self._life = _Life.UNOPENED
        self._closing = False
        self._ctl: JobControl | None = None
        self._parts: _Parts | None = None
        self._background: set[asyncio.Future[Any]] = set()

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self) -> AsyncManager:
        """Open the store, load the queue and start transferring."""
        if self._life is _Life.CLOSED:
            raise RuntimeError("Cannot reopen a manager once it has been closed.")
        if self._life is _Life.OPEN:
            return self
        p = self.policy
        if p.owner != os_user() and not is_admin():
            # off Windows a job's owner is a name in the store, protected by the store's file
            # permissions: only root may act under another user's name
            raise BitsError(
                _codes.E_ACCESSDENIED,
                f"Policy(owner={p.owner!r}): only root may manage another user's jobs",
            )
        # opening (and migrating) may wait for another process's lock: off the loop
        store = await asyncio.to_thread(
            open_store, self.store_path, lease_name(), p.store_busy_timeout
        )
        try:
            loaded = await asyncio.to_thread(store.patiently, store.load_jobs)
        except BaseException:
            store.close()
            raise
        events = Events(p.owner, lambda rec: self._control().handle(rec), self._spawn)
        records = Records(store, events)
        scheduler = Scheduler(p.max_active_jobs, p.time_slice)
        engine = Engine(p, self._transport)
        secrets: dict[uuid.UUID, JobSecrets] = {}
        runner = Runner(p, records, events, scheduler, engine, secrets)
        records.running_here = runner.is_running
        replication = Replication(p, records, events, scheduler, runner)
        folders = FolderSync(asyncio.get_running_loop())
        self._ctl = JobControl(
            self, p, records, events, scheduler, runner, replication, folders, secrets
        )
        self._parts = _Parts(store, records, events, runner, replication, engine)
        self._life = _Life.OPEN
        runner.apply_schedule()  # the bandwidth limit in force before anything starts
        shares = shares_limits(store)  # a shared store: limits counted cluster-wide
        if shares is not None:
            busy = functools.partial(_background_running, runner, records)
            self._parts.limits = ClusterLimits(shares, engine, runner.budgets, p, busy)
            self._parts.limits.start()
        for rec in loaded:
            records.jobs[rec.id] = rec
            runner.admit(rec)
        runner.pump()
        self._parts.housekeeper = asyncio.create_task(
            replication.run(self._ctl.housekeeping_tick), name="bitsnb-housekeeping"
        )
        return self

    async def __aenter__(self) -> AsyncManager:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True after aclose()."""
        return self._life is _Life.CLOSED

    async def aclose(self) -> None:
        """Stop transfers (their data stays for the next manager), release leases, close."""
        parts = self._parts
        if self._life is not _Life.OPEN or self._closing or parts is None:
            self._life = _Life.CLOSED
            return
        self._closing = True  # the store stays usable while running jobs are put back
        self._control().admit_posted()
        if parts.housekeeper is not None:
            parts.housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await parts.housekeeper
        runner, records = parts.runner, parts.records
        runner.accepting = False
        for job_id in runner.running:
            await runner.stop(job_id)
            rec = records.jobs.get(job_id)
            if rec is not None and rec.state in RUNNING:
                with contextlib.suppress(BitsError):  # locked: the next manager re-queues it
                    await records.set_state_patiently(rec, Event.STOP, rec.files)
        runner.cancel_all_retries()
        await runner.pacer.aclose()
        if parts.limits is not None:
            await parts.limits.aclose()  # the shares go back to the others at once
        parts.events.cancel_waiters()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(BitsError):  # a store locked by another process: leases expire
            parts.store.release()
        parts.store.close()
        self._life = _Life.CLOSED
        await parts.engine.aclose()

    def _control(self) -> JobControl:
        if self._life is not _Life.OPEN or self._ctl is None:
            if self._life is _Life.CLOSED:
                raise RuntimeError("The manager is closed.")
            raise RuntimeError("The manager is not started: use 'async with AsyncManager()'.")
        return self._ctl

    def _open_parts(self) -> _Parts:
        parts = self._parts
        if parts is None:
            self._control()  # raises: not started, or closed
            raise AssertionError("unreachable")
        return parts

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- IBackgroundCopyManager ---------------------------------------------------------------------
    async def create_job(
        self,
        display_name: str,
        type: JobType = JobType.DOWNLOAD,
        *,
        priority: JobPriority = JobPriority.NORMAL,
        description: str = "",
    ) -> AsyncJob:
        """CreateJob: a new, empty job in SUSPENDED."""
        ctl = self._control()
        return await await_patiently(
            self.policy.store_busy_timeout,
            lambda: ctl.create(display_name, type, priority, description, on_loop=True),
        )

    async def get_job(self, job_id: uuid.UUID | str) -> AsyncJob:
        """GetJob: the job with that id (BG_E_NOT_FOUND if unknown or finished)."""
        return await await_patiently(
            self.policy.store_busy_timeout, self._control().get_job, job_id
        )

    async def enum_jobs(
        self, all_users: bool = False, *, include_finished: bool = False
    ) -> Enumerator[AsyncJob]:
        """EnumJobs: a snapshot of the caller's jobs (or everybody's, for root)."""
        ctl = self._control()
        return await await_patiently(
            self.policy.store_busy_timeout, ctl.enum_jobs, all_users, include_finished
        )

    async def job_table(
        self, all_users: bool = False, *, include_finished: bool = False
    ) -> JobTable:
        """The caller's jobs (or everybody's, for root) as columns, read from the store in one
        query (no job object each: what a frame of 100,000 jobs needs), with who holds each
        job and the live progress of the jobs this manager runs."""
        ctl = self._control()
        table = await asyncio.to_thread(ctl.read_table, all_users, include_finished)
        return ctl.live_table(table)

    async def file_workers(self, job_id: uuid.UUID | str) -> dict[int, str]:
        """Who holds which file of the job now (file index → worker), as the store says;
        empty on SQLite and when nobody does."""
        return await asyncio.to_thread(self._control().file_workers, job_id)

    async def job_workers(self) -> dict[str, str]:
        """Who holds which job now (job id's text → worker: a lease holder, or a shared job's
        batch holders), as the store says; empty on SQLite."""
        return await asyncio.to_thread(self._control().job_workers)

    async def get_error_description(
        self, code: int, language: str | int | None = "en", *, job_type: JobType | None = None
    ) -> str:
        """GetErrorDescription: the sentence for an HRESULT (the upload reading for uploads)."""
        return get_error_description(code, language, job_type=job_type)

    async def damaged_jobs(self) -> dict[uuid.UUID, str]:
        """Jobs whose stored rows cannot be read, and why (the rest of the queue works)."""
        return self._control().damaged_jobs()

    async def verified_hash(self, local_name: str | os.PathLike[str]) -> str | None:
        """The hash ("alg:hex") a job of this store verified for the file it completed at
        *local_name*, if the file is unchanged since (same size, mtime and inode); else None."""
        parts = self._open_parts()
        path = os.path.abspath(os.fspath(local_name))
        return await await_patiently(
            self.policy.store_busy_timeout, verified_hash, parts.store, path
        )

    async def record_hash(
        self,
        local_name: str | os.PathLike[str],
        hash: str,
        *,
        seen: tuple[int, int, int] | None = None,
    ) -> bool:
        """Record that the file at *local_name*, as it is now (size, mtime_ns, inode), hashes to
        *hash* ("alg:hex"), so that ``verified_hash`` trusts it until it changes; with *seen*
        (what it was when hashed), nothing is recorded (False) if it changed since."""
        try:
            checked = parse_known_hash(hash)
        except ValueError as exc:
            raise BitsError(_codes.E_INVALIDARG, f"hash {hash!r}: {exc}") from None
        parts = self._open_parts()
        path = os.path.abspath(os.fspath(local_name))
        return await await_patiently(
            self.policy.store_busy_timeout, record_hash, parts.store, path, checked, seen
        )

    async def set_max_bandwidth(self, bytes_per_second: float | None) -> None:
        """The cap of background jobs together (bytes/s; None removes it), live; the schedule's
        windows keep their own limits."""
        value = check_rate(bytes_per_second, "max_bandwidth")
        ctl = self._control()
        self.policy.max_bandwidth = value
        ctl.bandwidth_policy_changed()

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call *listener* (on the manager's loop) for every job event; returns an unsubscribe."""
        parts = self._open_parts()
        return parts.events.subscribe(listener)


class _Parts:
    """The parts an open manager is made of (what ``aclose`` takes apart)."""

    def __init__(
        self,
        store: JobStore,
        records: Records,
        events: Events,
        runner: Runner,
        replication: Replication,
        engine: Engine,
    ) -> None:
        self.store = store
        self.records = records
        self.events = events
        self.runner = runner
        self.replication = replication
        self.engine = engine
        self.housekeeper: asyncio.Task[None] | None = None
        self.limits: ClusterLimits | None = None  # shares of the cluster's limits (PostgreSQL)


def _background_running(runner: Runner, records: Records) -> int:
    """How many jobs under the background cap (not FOREGROUND) run here now."""
    jobs = (records.jobs.get(job_id) for job_id in runner.running)
    return sum(1 for r in jobs if r is not None and r.priority is not JobPriority.FOREGROUND)


def control_of(manager: AsyncManager) -> JobControl:
    """The queue's operations behind *manager*, for the blocking API, which runs the ones that
    never wait with one trip through the loop (RuntimeError when not open)."""
    return manager._control()
