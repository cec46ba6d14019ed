"""``bitsnb.distributed.serve`` on a real ``distributed.LocalCluster`` with worker processes,
sharing one PostgreSQL queue: every file fetched once, byte-exact; ``status()`` has a row per
worker; ``close()`` gives every lease back. A SQLite store is refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support.helpers import wait_until
from _support.postgres import Postgres

import bitsnb
from bitsnb import BitsError, JobState
from bitsnb._codes import E_INVALIDARG
from bitsnb.testing import FileServer

distributed = pytest.importorskip("distributed")
psycopg = pytest.importorskip("psycopg")
from _support.dask_cluster import local_client  # noqa: E402

from bitsnb.distributed import PLUGIN_NAME, STATUS_COLUMNS, serve  # noqa: E402

KIB = 1024


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    """A LocalCluster of two worker processes (one thread each), closed at the end."""
    with local_client(2) as c:
        yield c


def _leases(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM jobs WHERE lease_owner IS NOT NULL").fetchone()
    assert row is not None
    return int(row[0])


def test_serve_runs_a_manager_on_each_worker(
    client: distributed.Client, postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    dest = tmp_path / "shared"  # every worker of a LocalCluster sees this machine's disk
    dest.mkdir()
    policy = bitsnb.Policy(poll_interval=0.05, lease_seconds=2.0, max_active_jobs=2)
    names = [f"d{j}_{i}.bin" for j in range(8) for i in range(3)]
    with serve(client, url, policy) as served:
        with bitsnb.Manager(store=url, policy=bitsnb.Policy(max_active_jobs=0)) as mgr:
            jobs = []
            for j in range(8):
                job = mgr.create_job(f"dask{j}")
                job.add_file_set(
                    [
                        (server.add_random_file(n, 32 * KIB, seed=k), dest / n)
                        for k, n in enumerate(names[j * 3 : j * 3 + 3], start=j * 3)
                    ]
                )
                job.resume()
                jobs.append(job)
            for job in jobs:
                assert job.wait(timeout=60) is JobState.TRANSFERRED, job.display_name
            frame = served.status()
            assert list(frame.columns) == STATUS_COLUMNS
            assert len(frame) == 2 and set(frame["worker"]) == set(
                client.scheduler_info()["workers"]
            )
            assert (frame["errors"] == 0).all()
            with psycopg.connect(url) as conn:
                rows = conn.execute("SELECT writer FROM jobs").fetchall()
            writers = {str(r[0]).rsplit(":", 1)[0] for r in rows}
            pids = {f"{h}:{p}" for h, p in zip(frame["host"], frame["pid"], strict=True)}
            assert writers & pids, "the workers' managers wrote the jobs"
            for job in jobs:
                assert job.complete() == 0
    wait_until(lambda: _leases(url) == 0, timeout=20, message="leases given back")
    full = Counter(r.path for r in server.requests if r.method == "GET" and r.range is None)
    assert full == dict.fromkeys(names, 1)
    for n in names:
        assert (dest / n).read_bytes() == server.path(n).read_bytes()


def test_serve_refuses_a_sqlite_store(client: distributed.Client, tmp_path: Path) -> None:
    with pytest.raises(BitsError) as info:
        serve(client, str(tmp_path / "jobs.db"))
    assert info.value.code == E_INVALIDARG and "PostgreSQL" in str(info.value)
    assert not (tmp_path / "jobs.db").exists()


def _has_manager(dask_worker: distributed.Worker) -> bool:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return getattr(plugin, "manager", None) is not None


def test_a_worker_that_joins_starts_a_manager(
    client: distributed.Client, postgres: Postgres
) -> None:
    """serve() before a worker joins: the new worker gets the plugin and a manager too."""
    url = postgres.new_database()
    with serve(client, url, bitsnb.Policy(poll_interval=0.05)) as served:
        assert set(client.run(_has_manager).values()) == {True}
        client.cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        wait_until(
            lambda: list(client.run(_has_manager).values()) == [True] * 3,
            timeout=60,
            message="the new worker runs a manager",
        )
        assert len(served.status()) == 3
    assert set(client.run(_has_manager).values()) == {False}  # close() closed them all
    client.cluster.scale(2)
    wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=60, message="2")
