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
from _support.dask_cluster import local_client  # noqa: E402

from bitsnb.distributed import PLUGIN_NAME, BatchRunner, serve, share  # noqa: E402

KIB = 1024
FILES = 120
PASSIVE = bitsnb.Policy(max_active_jobs=0, poll_interval=0.05)  # queues and watches only


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    """A LocalCluster of two worker processes (one thread each), closed at the end."""
    with local_client(2) as c:
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


def test_status_shows_batch_holders_and_their_rate(
    client: distributed.Client, postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    """A worker holding a batch of a shared job (its first file stalls mid-body) shows the
    job and the batch's files in ``status()``; each worker that ended batches since the
    reading before shows a rate > 0 (a batch's bytes count at its end, ``bitsnb_moved``)."""
    url = postgres.new_database()
    dest = tmp_path / "shared"
    dest.mkdir()
    names = [f"s{i}.bin" for i in range(8)]
    pairs = [(server.add_random_file(n, 16 * KIB, seed=i), dest / n) for i, n in enumerate(names)]
    server.inject("s0.bin", Fault.stall_after(1024, 30))
    policy = bitsnb.Policy(lease_seconds=30.0, files_in_flight=2)
    with (
        serve(client, url, policy, batch=2) as served,
        bitsnb.Manager(store=url, policy=PASSIVE) as mgr,
    ):
        assert (served.status()["bytes_per_second"] == 0).all()  # the first reading
        job = mgr.create_job("watched")
        job.add_file_set(pairs)
        share(url, job.id)
        wait_until(
            lambda: (
                _rows(url, "SELECT count(*) FROM files WHERE transferred=1") == [(6,)]
                and any(r.path == "s0.bin" and r.body_bytes_sent >= 1024 for r in server.requests)
            ),
            timeout=60,
            message="every batch ended but the stalled one",
        )
        frame = served.status().set_index("worker")
        holder = _rows(url, "SELECT owner FROM bitsnb_batches")
        assert len(holder) == 1
        host, pid = str(holder[0][0]).split(":")[:2]
        row = frame[(frame["host"] == host) & (frame["pid"] == int(pid))]
        assert len(row) == 1
        assert int(row["jobs"].iloc[0]) >= 1 and int(row["files"].iloc[0]) == 2
        written = client.run(_written)
        assert sum(written.values()) == 6
        for address, n in written.items():
            rate = float(frame.loc[address, "bytes_per_second"])
            assert (rate > 0) == (n > 0), (address, n, rate)
        moved = _rows(url, "SELECT sum(bytes) FROM bitsnb_moved")
        assert moved == [(6 * 16 * KIB,)]
