"""Managers on Dask workers: ``serve(client, store)`` runs one bitsnb manager in each worker
of a ``distributed.Client``, all sharing one PostgreSQL queue.

A worker plugin starts the manager as a worker starts (workers that join later start one too)
and closes it as the worker leaves, giving its leases back; a worker that dies lets its leases
expire and another takes its jobs over. Every worker writes the files it fetches itself, so
the jobs' local names must be absolute paths on a filesystem that every worker sees (NFS,
Lustre, a shared volume); bitsnb refuses a relative one when the file is added. Needs
``pip install 'bitsnb[dask,postgres]'``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from distributed import Client, Worker, WorkerPlugin

from . import _codes
from ._engine import Engine, FileContext
from ._enums import JobState
from ._errors import BitsError
from ._failures import TransferFailure
from ._models import Policy
from ._records import FileRecord
from ._store import lease_name
from ._store_api import StoreURL
from ._store_open import store_location
from ._sync import Manager

if TYPE_CHECKING:
    import pandas as pd

    from ._store_pg import PgStore

__all__ = ["PLUGIN_NAME", "ManagerPlugin", "Served", "fetch_shared_files", "serve"]

PLUGIN_NAME = "bitsnb-manager"
STATUS_COLUMNS = ["worker", "host", "pid", "jobs", "files", "bytes_per_second", "errors"]


class ManagerPlugin(WorkerPlugin):
    """Runs one bitsnb ``Manager`` on the shared store in the worker it is set up in."""

    name = PLUGIN_NAME

    def __init__(self, store: str, policy: Policy | None = None) -> None:
        self.store = store
        self.policy = policy
        self.manager: Manager | None = None

    def setup(self, worker: Worker) -> None:
        """The worker starts: open a manager (it claims and runs jobs by itself)."""
        self.manager = Manager(store=self.store, policy=self.policy)

    def teardown(self, worker: Worker) -> None:
        """The worker leaves (or ``Served.close``): close the manager, leases given back."""
        if self.manager is not None:
            self.manager.close()
            self.manager = None


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
        self._last: dict[uuid.UUID, tuple[str, int]] = {}
        self._last_at = time.monotonic()
        self.closed = False

    def status(self) -> pd.DataFrame:
        """One row per worker: the jobs and files it holds, its rate in bytes/s since the
        last ``status()`` (0 on the first), and its jobs in error."""
        import pandas as pd

        workers: dict[str, tuple[str, int, bool]] = self.client.run(_whoami)
        holders = self._store.holders()
        errors = self._store.errors_by_writer()
        now = time.monotonic()
        elapsed = max(now - self._last_at, 1e-9)
        rows: list[dict[str, Any]] = []
        for address, (host, pid, _running) in sorted(workers.items()):
            prefix = f"{host}:{pid}:"
            mine = [h for h in holders if h[0].startswith(prefix)]
            moved = sum(
                done - self._last[job_id][1]
                for owner, job_id, _, done in mine
                if job_id in self._last and self._last[job_id][0] == owner
            )
            rows.append(
                {
                    "worker": address,
                    "host": host,
                    "pid": pid,
                    "jobs": len(mine),
                    "files": sum(h[2] for h in mine),
                    "bytes_per_second": moved / elapsed if self._last else 0.0,
                    "errors": sum(n for w, n in errors.items() if w.startswith(prefix)),
                }
            )
        self._last = {job_id: (owner, done) for owner, job_id, _, done in holders}
        self._last_at = now
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


def serve(client: Client, store: str, policy: Policy | None = None) -> Served:
    """Start one manager on each worker of *client* (and on each worker that joins), all on
    the PostgreSQL queue *store* (``postgresql://…``); returns the handle.

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
        client.register_plugin(ManagerPlugin(where.url, policy), name=PLUGIN_NAME)
    except BaseException:
        served.closed = True
        served._store.close()
        raise
    return served


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
    (or *timeout*). A file that fails is given back (its batch's end) for any claimer to try again."""
    where = store_location(store)
    if not isinstance(where, StoreURL):
        raise BitsError(
            _codes.E_INVALIDARG, f"shared files need a PostgreSQL store, not the file {where}"
        )
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
            token, files = await asyncio.to_thread(
                store.patiently, store.claim_files, job_id, batch, policy.lease_seconds
            )
            if not files:
                state = await asyncio.to_thread(store.patiently, store.job_state, job_id)
                if state is not JobState.TRANSFERRING:
                    break  # ended (by us or another), or suspended, cancelled, gone
                await asyncio.sleep(policy.poll_interval)  # others hold the last batches
                continue
            fetched = await _fetch_batch(engine, files, policy.files_in_flight)
            # the end writes what was fetched and gives the failed files back
            n, _ = await asyncio.to_thread(
                store.patiently, store.finish_files, job_id, token, fetched
            )
            written += n
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        await engine.aclose()
        store.close()
    return written


async def _fetch_batch(engine: Engine, files: list[FileRecord], width: int) -> list[FileRecord]:
    """Fetch *files*, *width* at a time; the ones whose fetch ended well."""
    gate = asyncio.Semaphore(max(1, width))
    done: list[FileRecord] = []

    async def one(f: FileRecord) -> None:
        async with gate:
            try:
                await engine.download(f, FileContext())
            except TransferFailure:
                return
            done.append(f)

    await asyncio.gather(*(one(f) for f in files))
    return done


async def _heartbeat(store: PgStore, lease_seconds: float) -> None:
    """Keep the leases of our batches alive (every third of the lease)."""
    while True:
        await asyncio.sleep(lease_seconds / 3)
        await asyncio.to_thread(store.renew_files, lease_seconds)
