"""``serve()`` claims file batches of a shared job (``share``) on a real ``LocalCluster`` of
worker processes over one PostgreSQL queue: every file fetched once (requests counted at the
test server), each worker wrote a share, the job TRANSFERRED and ``complete()`` byte-exact.
``share`` refuses what cannot be shared with the BITS code and changes nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support.helpers import wait_until
from _support.postgres import Postgres

import bitsnb
from bitsnb import BitsError, JobState
from bitsnb._codes import BG_E_EMPTY, BG_E_INVALID_STATE, BG_E_NOT_FOUND, E_INVALIDARG
from bitsnb._store_api import StoreURL
from bitsnb.testing import Fault, FileServer

distributed = pytest.importorskip("distributed")
psycopg = pytest.importorskip("psycopg")
from bitsnb.distributed import PLUGIN_NAME, BatchRunner, serve, share  # noqa: E402

KIB = 1024
FILES = 120
PASSIVE = bitsnb.Policy(max_active_jobs=0, poll_interval=0.05)  # queues and watches only


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    """A LocalCluster of two worker processes (one thread each), closed at the end."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            worker_dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _written(dask_worker: distributed.Worker) -> int:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    runner = getattr(plugin, "batches", None)
    return int(getattr(runner, "written", -1))


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_serve_claims_batches_of_a_shared_job(
    client: distributed.Client, postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    dest = tmp_path / "shared"  # every worker of a LocalCluster sees this machine's disk
    dest.mkdir()
    names = [f"b{i}.bin" for i in range(FILES)]
    policy = bitsnb.Policy(lease_seconds=5.0, files_in_flight=2)
    with serve(client, url, policy, batch=5), bitsnb.Manager(store=url, policy=PASSIVE) as mgr:
        job = mgr.create_job("spread")
        job.add_file_set(
            [(server.add_random_file(n, 16 * KIB, seed=i), dest / n) for i, n in enumerate(names)]
        )
        share(url, job.id)  # in place of resume(): the workers claim its files in batches
        assert job.wait(timeout=120) is JobState.TRANSFERRED
        written = client.run(_written)
        assert sum(written.values()) == FILES and all(n > 0 for n in written.values()), written
        assert job.progress.files_transferred == FILES
        assert job.complete() == 0
    assert _rows(url, "SELECT * FROM bitsnb_batches") == []  # no batch left
    assert _rows(url, "SELECT id FROM jobs WHERE lease_owner IS NOT NULL") == []
    gets = Counter(r.path for r in server.requests if r.method == "GET")
    assert gets == dict.fromkeys(names, 1)  # every file fetched once, by one of them
    for n in names:
        assert (dest / n).read_bytes() == server.path(n).read_bytes(), n


def test_share_refuses_what_cannot_be_shared(
    postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    with bitsnb.Manager(store=url, policy=PASSIVE) as mgr:
        empty = mgr.create_job("empty")
        with pytest.raises(BitsError) as info:
            share(url, empty.id)
        assert info.value.code == BG_E_EMPTY
        assert empty.state is JobState.SUSPENDED
        gone = mgr.create_job("cancelled")
        gone.add_file(server.add_random_file("c.bin", KIB, seed=1), tmp_path / "c.bin")
        gone.cancel()
        with pytest.raises(BitsError) as info:
            share(url, gone.id)
        assert info.value.code == BG_E_INVALID_STATE and "CANCELLED" in str(info.value)
        with pytest.raises(BitsError) as info:
            share(url, "00000000-0000-0000-0000-000000000000")
        assert info.value.code == BG_E_NOT_FOUND
        assert _rows(url, "SELECT lease_owner FROM jobs WHERE lease_owner IS NOT NULL") == []
    with pytest.raises(BitsError) as info:
        share(str(tmp_path / "jobs.db"), empty.id)
    assert info.value.code == E_INVALIDARG
    assert not (tmp_path / "jobs.db").exists()


def test_a_closed_runner_gives_its_batch_back_mid_fetch(
    postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    """A worker leaving while a batch is half fetched (one file stalls mid-body): its batch is
    given back at once (not left to expire), nothing of it written, the job still shared."""
    url = postgres.new_database()
    names = [f"g{i}.bin" for i in range(3)]
    pairs = [
        (server.add_random_file(n, 64 * KIB, seed=i), tmp_path / n) for i, n in enumerate(names)
    ]
    server.inject("g0.bin", Fault.stall_after(1024, 30))
    with bitsnb.Manager(store=url, policy=PASSIVE) as mgr:
        job = mgr.create_job("left")
        job.add_file_set(pairs)
        share(url, job.id)
        runner = BatchRunner(StoreURL(url), bitsnb.Policy(lease_seconds=30.0), batch=3)
        try:
            wait_until(
                lambda: any(
                    r.path == "g0.bin" and r.body_bytes_sent >= 1024 for r in server.requests
                ),
                timeout=30,
                message="the batch's first file stalls mid-body",
            )
            assert len(_rows(url, "SELECT token FROM bitsnb_batches")) == 1
        finally:
            runner.close()
        assert _rows(url, "SELECT token FROM bitsnb_batches") == []
        assert _rows(url, "SELECT idx FROM files WHERE transferred=1") == []
        assert _rows(url, "SELECT lease_owner FROM jobs") == [("bitsnb:shared",)]
        assert runner.written == 0
