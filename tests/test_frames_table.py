"""The jobs frame read in one query (``Manager.job_table`` → ``table_to_frame``) on both stores:
the same frame as the job views give, damaged rows left out, and the ``worker`` column (who
holds a job or a file) from the client's kernel on PostgreSQL, NA on SQLite."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from _support.postgres import Postgres

import bitsnb
from bitsnb import JobPriority, JobState
from bitsnb._store_api import JobStore
from bitsnb._store_open import open_store, store_location
from bitsnb.frames import files_to_frame, jobs_frame, jobs_to_frame, table_to_frame
from bitsnb.testing import FileServer

TIMEOUT = 20.0
OTHER = "other-host:1:aaaa"  # a manager of another machine: only its lease's expiry frees it
THIRD = "third-host:2:bbbb"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()


@pytest.fixture
def raw() -> Iterator[list[JobStore]]:
    """Raw stores opened by a test, closed at its end."""
    stores: list[JobStore] = []
    yield stores
    for s in stores:
        s.close()


def _open(where: str, writer: str, raw: list[JobStore]) -> JobStore:
    store = open_store(store_location(where), writer, 5.0)
    raw.append(store)
    return store


def test_table_frame_equals_the_views_frame(
    location: str, server: FileServer, dest: Path, policy: bitsnb.Policy
) -> None:
    """Every column of every kind of job as the job views give it: sizes known and unknown, an
    error, a job's own cap under the manager's, a FOREGROUND job above it, a finished job."""
    capped = dataclasses.replace(policy, max_bandwidth=1_000_000.0)
    with bitsnb.Manager(store=location, policy=capped) as mgr:
        done = mgr.create_job("done", priority=JobPriority.HIGH)
        done.add_file(server.add_random_file("a.bin", 50_000, seed=1), dest / "a.bin")
        done.resume()
        failed = mgr.create_job("failed", priority=JobPriority.LOW)
        failed.add_file(server.url("missing.bin"), dest / "missing.bin")
        failed.resume()
        waiting = mgr.create_job("not started")
        waiting.add_file_set(
            [
                (server.add_random_file(f"w{i}.bin", 10, seed=i), dest / f"w{i}.bin")
                for i in range(3)
            ]
        )
        waiting.max_bandwidth = 500_000.0
        mgr.create_job("empty", priority=JobPriority.FOREGROUND).max_bandwidth = 2_000_000.0
        gone = mgr.create_job("gone")
        gone.cancel()
        assert done.wait(TIMEOUT) is JobState.TRANSFERRED
        assert failed.wait(TIMEOUT) is JobState.ERROR

        for finished in (False, True):
            views = mgr.enum_jobs(include_finished=finished).to_frame()
            table = jobs_frame(mgr, include_finished=finished)
            pd.testing.assert_frame_equal(table, views)
        assert len(table) == 5 and table.loc[str(gone.id), "state"] == "CANCELLED"
        assert table.loc[str(waiting.id), "max_bandwidth"] == 500_000.0
        assert table.loc[str(done.id), "max_bandwidth"] == 1_000_000.0  # the manager's cap
        assert table["worker"].isna().all()  # nobody holds a job that is not running


def test_empty_queue_and_damaged_rows(location: str, raw: list[JobStore]) -> None:
    """No jobs: an empty frame of the same dtypes. A row of a state no bitsnb knows is left
    out and listed as damaged; the rest of the queue is shown."""
    with bitsnb.Manager(store=location) as mgr:
        empty = jobs_frame(mgr)
        assert empty.shape == (0, len(mgr.enum_jobs().to_frame().columns))
        kept = mgr.create_job("kept")
        broken = mgr.create_job("broken")
    store = _open(location, OTHER, raw)
    rec = store.load_job(broken.id)
    assert rec is not None
    rec.state = JobState.QUEUED
    assert store.save_job(rec)
    sql = "UPDATE jobs SET state = 99 WHERE id = " + ("?" if "://" not in location else "%s")
    if "://" in location:
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute(sql, (str(broken.id),))
    else:
        import sqlite3

        with sqlite3.connect(location) as db:
            db.execute(sql, (str(broken.id),))
    table = store.job_table(include_finished=True)
    assert table.ids == [str(kept.id)]
    assert broken.id in store.damaged
    frame = table_to_frame(table)
    assert list(frame.index) == [str(kept.id)]


def test_worker_column_names_who_holds_a_job_and_its_files(
    url: str, raw: list[JobStore], dest: Path
) -> None:
    """From a manager that runs nothing (the client's kernel): the lease holder of a job held
    whole, the holders of a shared job's file batches (jobs and files frames), NA for a job
    nobody holds; a holder whose lease ran out is no longer named."""
    quiet = bitsnb.Policy(max_active_jobs=0)
    with bitsnb.Manager(store=url, policy=quiet) as mgr:
        whole = mgr.create_job("whole")
        whole.add_file("http://h.example/w.bin", dest / "w.bin")
        shared = mgr.create_job("shared")
        shared.add_file_set([(f"http://h.example/{i}", dest / f"{i}") for i in range(6)])
        shared.resume()
        idle = mgr.create_job("idle")

        holder = _open(url, OTHER, raw)
        assert holder.claim(whole.id, 60.0) is not None
        first = _open(url, OTHER, raw)
        second = _open(url, THIRD, raw)
        _, a = first.claim_files(shared.id, 2, 60.0)  # type: ignore[attr-defined]
        _, b = second.claim_files(shared.id, 3, 60.0)  # type: ignore[attr-defined]
        assert [f.index for f in a] == [0, 1] and [f.index for f in b] == [2, 3, 4]

        frame = jobs_frame(mgr)
        pd.testing.assert_frame_equal(frame, mgr.enum_jobs().to_frame())  # the views' way too
        assert frame.loc[str(whole.id), "worker"] == OTHER
        assert frame.loc[str(shared.id), "worker"] == f"{OTHER}, {THIRD}"
        assert pd.isna(frame.loc[str(idle.id), "worker"])

        files = shared.files_frame()
        assert list(files["worker"].fillna("-")) == [OTHER, OTHER, THIRD, THIRD, THIRD, "-"]
        assert list(files_to_frame(whole)["worker"]) == [OTHER]

        holder.renew_leases(-1.0)  # its lease runs out: nobody holds the job any more
        assert pd.isna(jobs_frame(mgr).loc[str(whole.id), "worker"])


def test_sqlite_names_no_worker(tmp_path: Path, raw: list[JobStore]) -> None:
    """SQLite's processes share one machine: the column is NA even while a lease is held."""
    where = str(tmp_path / "jobs.db")
    with bitsnb.Manager(store=where, policy=bitsnb.Policy(max_active_jobs=0)) as mgr:
        job = mgr.create_job("held")
        job.add_file("http://h.example/x", str(tmp_path / "x"))
        store = _open(where, OTHER, raw)
        assert store.claim(job.id, 60.0) is not None
        assert jobs_frame(mgr)["worker"].isna().all()
        assert job.files_frame()["worker"].isna().all()
        assert mgr.file_workers(job.id) == {}


def test_pg_table_reads_what_other_managers_wrote(
    url: str, raw: list[JobStore], dest: Path
) -> None:
    """Files a manager of another machine saved show in the frame as that store has them."""
    other = _open(url, OTHER, raw)
    with bitsnb.Manager(store=url, policy=bitsnb.Policy(max_active_jobs=0)) as mgr:
        job = mgr.create_job("theirs")
        job.add_file_set([(f"http://h.example/{i}", dest / f"{i}") for i in range(4)])
        rec = other.load_job(job.id)
        assert rec is not None
        for f in rec.files[:3]:
            f.bytes_total = f.bytes_transferred = 100
            f.transferred = True
        assert other.save_job(rec, rec.files[:3])
        row = jobs_frame(mgr).loc[str(job.id)]
        assert row["files_transferred"] == 3 and row["bytes_transferred"] == 300
        assert row["bytes_total"] is pd.NA  # one size still unknown


def test_async_manager_table(location: str, dest: Path) -> None:
    """``AsyncManager.job_table`` (read off the loop) frames as its jobs' views do; its
    ``job_workers``/``file_workers`` answer like the blocking manager's."""

    async def main() -> None:
        async with bitsnb.AsyncManager(store=location) as amgr:
            job = await amgr.create_job("async")
            await job.add_file("http://h.example/a", str(dest / "a"))
            views = jobs_to_frame(list(await amgr.enum_jobs()))
            pd.testing.assert_frame_equal(table_to_frame(await amgr.job_table()), views)
            assert await amgr.job_workers() == {}
            assert await amgr.file_workers(job.id) == {}

    asyncio.run(main())
