"""Managers on Dask workers: ``serve(client, store)`` runs one bitsnb manager in each worker
of a ``distributed.Client``, all sharing one PostgreSQL queue.

A worker plugin starts the manager as a worker starts (workers that join later start one too)
and closes it as the worker leaves, giving its leases back; a worker that dies lets its leases
expire and another takes its jobs over. The unit of work: a job is leased whole, unless it is
shared (``share(store, job_id)``): then each worker claims batches of its files, fetches them and
ends each batch in one write. Every worker writes the files it fetches itself, so
the jobs' local names must be absolute paths on a filesystem that every worker sees (NFS,
Lustre, a shared volume); bitsnb refuses a relative one when the file is added. Needs
``pip install 'bitsnb[dask,postgres]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from distributed import Client, Worker, WorkerPlugin

from . import _codes
from ._cluster import ActivityRates
from ._engine import Engine, FileContext
from ._enums import JobState
from ._errors import BitsError
from ._failures import TransferFailure
from ._models import Policy
from ._records import ErrorRecord, FileRecord
from ._store import lease_name
from ._store_api import StoreURL
from ._store_open import store_location
from ._sync import Manager

if TYPE_CHECKING:
    import pandas as pd

    from ._store_pg import PgStore
    from ._store_pg_shares import FileFailure

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = [
    "PLUGIN_NAME",
    "BatchRunner",
    "ManagerPlugin",
    "Served",
    "fetch_shared_files",
    "serve",
    "share",
]

PLUGIN_NAME = "bitsnb-manager"
STATUS_COLUMNS = ["worker", "host", "pid", "jobs", "files", "bytes_per_second", "errors"]
BATCH = 100  # files claimed at once from a shared job
LANES = 2  # batches a worker fetches at once: one's claim and end overlap another's fetch
IDLE_SECONDS = 5.0  # how often a worker with no shared job looks again (a change wakes it)


class ManagerPlugin(WorkerPlugin):
    """Runs one bitsnb ``Manager`` on the shared store in the worker it is set up in, and
    claims batches of the shared jobs' files beside it."""

    name = PLUGIN_NAME

    def __init__(self, store: str, policy: Policy | None = None, batch: int = BATCH) -> None:
        self.store = store
        self.policy = policy
        self.batch = batch
        self.manager: Manager | None = None
        self.batches: BatchRunner | None = None

    def setup(self, worker: Worker) -> None:
        """The worker starts: open a manager (it claims and runs jobs by itself) and start
        claiming the shared jobs' files."""
        self.manager = Manager(store=self.store, policy=self.policy)
        self.batches = BatchRunner(StoreURL(self.store), self.policy or Policy(), self.batch)

    def teardown(self, worker: Worker) -> None:
        """The worker leaves (or ``Served.close``): batches and leases given back."""
        if self.batches is not None:
            self.batches.close()
            self.batches = None
        if self.manager is not None:
            self.manager.close()
            self.manager = None


class BatchRunner:
    """Claims, fetches and ends batches of the shared jobs' files, on a thread of its own
    (``LANES`` batches at once); ``close()`` gives the batches it holds back."""

    def __init__(self, where: StoreURL, policy: Policy, batch: int) -> None:
        self.where = where
        self.policy = policy
        self.batch = batch
        self.written = 0
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bitsnb-batches", daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        with contextlib.closing(self._loop):
            self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        from ._store_pg import PgStore

        try:
            store = PgStore(self.where, lease_name(), self.policy.store_busy_timeout)
        except BaseException as exc:  # the store cannot be opened: setup says so
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        engine = Engine(self.policy)
        wakes = [asyncio.Event() for _ in range(LANES)]
        tasks = [
            asyncio.create_task(_heartbeat(store, self.policy.lease_seconds)),
            asyncio.create_task(_watch(self.where, wakes)),
        ]
        tasks += [asyncio.create_task(self._lane(store, engine, wake)) for wake in wakes]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await engine.aclose()
            store.close()

    async def _lane(self, store: PgStore, engine: Engine, wake: asyncio.Event) -> None:
        """Batch after batch of every shared job; while none has a file to claim (or only
        files that fail), a look when a job changes, or after ``IDLE_SECONDS``."""
        loop = asyncio.get_running_loop()
        while True:
            wake.clear()
            looked = loop.time()
            jobs = await _retrying(store, store.shared_jobs)
            worked = False
            for job_id in jobs:
                while (n := await _one_batch(store, engine, job_id, self.batch, self.policy)) > 0:
                    self.written += n
                    worked = True
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), IDLE_SECONDS)
                # at most one look per poll interval, however often jobs change (a manager
                # running a job whole writes its row at every file)
                await asyncio.sleep(max(0.0, looked + self.policy.poll_interval - loop.time()))

    def close(self) -> None:
        """Stop claiming; the batches in flight are given back (their files claimed again)."""
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


def _whoami(dask_worker: Worker) -> tuple[str, int, bool]:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    running = isinstance(plugin, ManagerPlugin) and plugin.manager is not None
    return socket.gethostname(), os.getpid(), running


class Served:
    """What ``serve`` returns: ``status()`` of the workers' managers, and ``close()``."""

    def __init__(self, client: Client, where: StoreURL) -> None:
        from ._store_pg import PgStore

        self.client = client
        self._store = PgStore(where, f"status:{socket.gethostname()}:{os.getpid()}:view", 10.0)
        self._rates = ActivityRates()
        self.closed = False

    def status(self) -> pd.DataFrame:
        """One row per worker: the jobs and files it holds (whole jobs and batches of shared
        ones), its rate in bytes/s since the last ``status()`` (0 on the first; a batch's
        bytes count when it ends) and its jobs in error."""
        import pandas as pd

        workers: dict[str, tuple[str, int, bool]] = self.client.run(_whoami)
        activity = self._store.activity()
        errors = self._store.errors_by_writer()
        readings: dict[str, tuple[int, int, int]] = {}
        wrong: dict[str, int] = {}
        for address, (host, pid, _running) in workers.items():
            prefix = f"{host}:{pid}:"  # the manager's and the batch runner's names
            mine = [r for owner, r in activity.items() if owner.startswith(prefix)]
            readings[address] = (
                sum(r[0] for r in mine),
                sum(r[1] for r in mine),
                sum(r[2] for r in mine),
            )
            wrong[address] = sum(n for w, n in errors.items() if w.startswith(prefix))
        rows = [
            {
                "worker": row.worker,
                "host": workers[row.worker][0],
                "pid": workers[row.worker][1],
                "jobs": row.jobs,
                "files": row.files,
                "bytes_per_second": row.bytes_per_second,
                "errors": row.errors,
            }
            for row in self._rates.update(readings, wrong)
        ]
        return pd.DataFrame(rows, columns=STATUS_COLUMNS)

    def close(self) -> None:
        """Close every worker's manager (leases given back) and stop starting new ones."""
        if self.closed:
            return
        self.closed = True
        try:
            self.client.unregister_worker_plugin(PLUGIN_NAME)  # type: ignore[no-untyped-call]
        finally:
            self._store.close()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    client: Client, store: str, policy: Policy | None = None, *, batch: int = BATCH
) -> Served:
    """Start one manager on each worker of *client* (and on each worker that joins), all on
    the PostgreSQL queue *store* (``postgresql://…``); returns the handle. Each worker leases
    jobs whole, and claims the files of shared jobs (``share``) *batch* at a time.

    A SQLite file cannot be shared by workers on several machines: E_INVALIDARG.
    """
    where = store_location(store)
    if not isinstance(where, StoreURL):
        raise BitsError(
            _codes.E_INVALIDARG,
            f"serve() needs a PostgreSQL store (postgresql://…) that every worker reaches, "
            f"not the SQLite file {where}",
        )
    served = Served(client, where)  # checks the store answers (and creates its schema)
    try:
        client.register_plugin(ManagerPlugin(where.url, policy, batch), name=PLUGIN_NAME)
    except BaseException:
        served.closed = True
        served._store.close()
        raise
    return served


def share(store: str, job_id: uuid.UUID | str) -> None:
    """Make a job of the PostgreSQL queue *store* the cluster's, in place of ``job.resume()``:
    the workers of ``serve`` (and ``fetch_shared_files``) claim its files in batches, and no
    manager runs it whole. The job must be suspended, queued or in error (sharing it again
    continues it, as ``resume()`` does) with files left to fetch, and nobody may run it whole;
    else ``BitsError`` (nothing is changed)."""
    from ._store_pg import PgStore

    where = _pg_location(store, "shared jobs")
    key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    pg = PgStore(where, lease_name(), 10.0)
    try:
        if pg.patiently(pg.share_job, key):
            return
        state = pg.patiently(pg.job_state, key)
    finally:
        pg.close()
    if state is None:
        raise BitsError(_codes.BG_E_NOT_FOUND, f"no job {key} in the queue")
    if state in (JobState.SUSPENDED, JobState.QUEUED, JobState.ERROR, JobState.TRANSIENT_ERROR):
        raise BitsError(_codes.BG_E_EMPTY, f"job {key} has no file left to fetch")
    raise BitsError(
        _codes.BG_E_INVALID_STATE,
        f"job {key} is {state.name} (or a manager runs it whole): only a suspended, queued"
        " or failed job can be shared",
    )


def _pg_location(store: str, what: str) -> StoreURL:
    """*store* as a PostgreSQL location; a SQLite file: E_INVALIDARG."""
    where = store_location(store)
    if not isinstance(where, StoreURL):
        raise BitsError(
            _codes.E_INVALIDARG, f"{what} need a PostgreSQL store, not the file {where}"
        )
    return where


def fetch_shared_files(
    store: str,
    job_id: uuid.UUID | str,
    policy: Policy | None = None,
    *,
    batch: int = 100,
    timeout: float = 3600.0,
) -> int:
    """Fetch files of one job of the PostgreSQL queue *store* alongside every other process
    doing the same (on Dask: ``client.run(fetch_shared_files, store, job_id)``): batches of
    *batch* files are claimed (``PgStore.claim_files``), fetched by bitsnb's engine, and
    ended in one write each; the batch that ends the job moves it to TRANSFERRED. Returns
    how many files this process wrote; blocks until no file of the job is left to anybody
    (or *timeout*), or the job is in ERROR. A file that fails puts the job in ERROR, or (a
    transient failure) waits the job's ``minimum_retry_delay`` for any claimer to try again."""
    where = _pg_location(store, "shared files")
    key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    return asyncio.run(_fetch_shared(where, key, policy or Policy(), batch, timeout))


async def _fetch_shared(
    where: StoreURL, job_id: uuid.UUID, policy: Policy, batch: int, timeout: float
) -> int:
    from ._store_pg import PgStore

    store = PgStore(where, lease_name(), policy.store_busy_timeout)
    engine = Engine(policy)
    beat = asyncio.create_task(_heartbeat(store, policy.lease_seconds))
    deadline = time.monotonic() + timeout
    written = 0
    try:
        while time.monotonic() < deadline:
            n = await _one_batch(store, engine, job_id, batch, policy)
            written += max(n, 0)
            if n >= 0:
                continue
            state = await _retrying(store, store.job_state, job_id)
            if state not in (JobState.TRANSFERRING, JobState.TRANSIENT_ERROR):
                break  # ended (by us or another), in ERROR, suspended, cancelled, gone
            await asyncio.sleep(policy.poll_interval)  # others hold the last batches
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        await engine.aclose()
        store.close()
    return written


async def _one_batch(
    store: PgStore, engine: Engine, job_id: uuid.UUID, batch: int, policy: Policy
) -> int:
    """Claim a batch of the job's files, fetch them, end the batch (the fetched ones written,
    the failed ones given back): how many were written; -1 when nothing was left to claim.
    Cancelled while fetching, it gives the whole batch back."""
    token, files = await _retrying(store, store.claim_files, job_id, batch, policy.lease_seconds)
    if not files:
        return -1
    try:
        fetched, failed = await _fetch_batch(engine, files, policy.files_in_flight)
    except asyncio.CancelledError:
        with contextlib.suppress(BitsError):
            store.give_back_files(job_id, token)
        raise
    n, _ = await _retrying(store, store.finish_files, job_id, token, fetched, failed)
    return n


async def _retrying(
    store: PgStore, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
) -> _R:
    """A store call off the loop, retried while the store is busy (``patiently``)."""
    return await asyncio.to_thread(store.patiently, fn, *args, **kwargs)


async def _fetch_batch(
    engine: Engine, files: list[FileRecord], width: int
) -> tuple[list[FileRecord], list[FileFailure]]:
    """Fetch *files*, *width* at a time: the ones whose fetch ended well, and the failures of
    the others (BITS's code and context, the file, whether retrying may help), by index."""
    from ._store_pg_shares import FileFailure

    gate = asyncio.Semaphore(max(1, width))
    done: list[FileRecord] = []
    failed: list[FileFailure] = []

    async def one(f: FileRecord) -> None:
        async with gate:
            try:
                await engine.download(f, FileContext())
            except TransferFailure as exc:
                error = ErrorRecord(exc.code, exc.context, f.index, exc.protocol, exc.message)
                failed.append(FileFailure(error, exc.transient, exc.retry_after))
                return
            done.append(f)

    await asyncio.gather(*(one(f) for f in files))
    failed.sort(key=lambda x: x.error.file_index or 0)
    return done, failed


async def _watch(where: StoreURL, wakes: list[asyncio.Event]) -> None:
    """Wake the lanes whenever a job changes (a job shared, files added); if the listening
    connection breaks, the lanes' own looks go on and it is opened again."""
    from ._store_pg_shares import job_changes

    while True:
        try:
            async for _ in job_changes(where.url):
                for wake in wakes:
                    wake.set()
        except Exception:  # the database went away (or refused us): look again later
            await asyncio.sleep(IDLE_SECONDS)


async def _heartbeat(store: PgStore, lease_seconds: float) -> None:
    """Keep the leases of our batches alive (every third of the lease)."""
    while True:
        await asyncio.sleep(lease_seconds / 3)
        await asyncio.to_thread(store.renew_files, lease_seconds)
