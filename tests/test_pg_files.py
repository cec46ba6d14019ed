"""Files of one job claimed by several managers on PostgreSQL (``PgStore.claim_files``): batches
that never overlap, the job TRANSFERRED by the one batch that ends it, a batch whose lease ran
out taken over and its first holder fenced off, and jobs that are not the cluster's left alone.

The holders are named as processes of another host, so only expiry frees their leases.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest
from _support.helpers import wait_until

import bitsnb
from bitsnb import JobState
from bitsnb._records import FileRecord, JobRecord

psycopg = pytest.importorskip("psycopg")
from bitsnb._store_pg import PgStore  # noqa: E402


def _job(store: PgStore, n: int, state: JobState = JobState.QUEUED) -> JobRecord:
    rec = JobRecord(id=uuid.uuid4(), display_name="big", type=bitsnb.JobType.DOWNLOAD, owner="me")
    rec.state = state
    store.insert_job(rec)
    files = [FileRecord(i, f"http://h/{i}", f"/d/{i}", f"/d/.{i}.tmp") for i in range(n)]
    assert store.save_job(rec, files)
    return rec


def _fetched(files: list[FileRecord]) -> list[FileRecord]:
    for f in files:
        f.bytes_total = f.bytes_transferred = 10 + f.index
        f.hash = f"md5:{f.index}"
    return files


def test_three_managers_share_one_job_and_one_of_them_ends_it(
    url: str, opened: Callable[[str], PgStore]
) -> None:
    """Three managers claim batches of one job's 1,000 files at once, each ending what it got:
    every file is claimed once, written once with its values, and exactly one end moved the job
    to TRANSFERRED (its lease given back); progress is the files'."""
    rec = _job(opened("elsewhere:0:maker"), 1000)
    stores = [opened(f"elsewhere:{i}:m") for i in range(3)]
    got: list[list[int]] = [[] for _ in stores]
    ends: list[bool] = []
    start = threading.Barrier(len(stores))

    def run(i: int) -> None:
        start.wait(10)
        for _ in range(200):  # bounded: 1,000 files / 13 per batch
            token, files = stores[i].claim_files(rec.id, 13, 60.0)
            if not files:
                return
            got[i].extend(f.index for f in files)
            written, ended = stores[i].finish_files(rec.id, token, _fetched(files))
            assert written == len(files)
            ends.append(ended)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(i for part in got for i in part) == list(range(1000))  # each once
    assert all(got), "every manager got a share"
    assert ends.count(True) == 1
    job = stores[0].load_job(rec.id)
    assert job is not None and job.state is JobState.TRANSFERRED
    assert job.transfer_completed is not None
    assert all(f.transferred and f.bytes_transferred == 10 + f.index for f in job.files)
    assert [f.hash for f in job.files] == [f"md5:{i}" for i in range(1000)]
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT lease_owner FROM jobs WHERE id=%s", (str(rec.id),)).fetchone()
    assert row == (None,)


def test_a_batch_whose_lease_ran_out_is_taken_over_and_its_holder_fenced(
    opened: Callable[[str], PgStore],
) -> None:
    """A claims a batch and stalls past its lease; B takes those files over (after the cursor's
    ranges) and ends the job; A's late end writes nothing."""
    a = opened("elsewhere:1:a")
    b = opened("elsewhere:2:b")
    rec = _job(a, 5)
    token_a, mine = a.claim_files(rec.id, 5, 0.3)
    assert [f.index for f in mine] == list(range(5))
    job = b.load_job(rec.id)
    assert job is not None and job.state is JobState.TRANSFERRING
    taken: list[tuple[int, list[FileRecord]]] = []
    wait_until(
        lambda: bool(taken.append(b.claim_files(rec.id, 5, 60.0)) or taken[-1][1]),
        timeout=10,
        message="B takes the batch whose lease ran out",
    )
    token_b, theirs = taken[-1]
    assert token_b != token_a and [f.index for f in theirs] == list(range(5))
    assert a.renew_files(30.0) == {(rec.id, token_a)}  # A's heartbeat: the batch is lost
    assert a.finish_files(rec.id, token_a, _fetched(mine)) == (0, False)
    assert b.finish_files(rec.id, token_b, _fetched(theirs)) == (5, True)
    assert b.claim_files(rec.id, 5, 60.0)[1] == []  # TRANSFERRED: nothing left to claim


def test_jobs_that_are_not_the_clusters_are_left_alone(opened: Callable[[str], PgStore]) -> None:
    """A suspended job, and a job a live manager runs whole: no file of theirs is claimed, and
    the job is not touched; a job given to the cluster is not started whole by a manager."""
    a = opened("elsewhere:1:a")
    b = opened("elsewhere:2:b")
    suspended = _job(a, 3, JobState.SUSPENDED)
    assert b.claim_files(suspended.id, 10, 60.0)[1] == []
    whole = _job(a, 3)
    assert a.claim(whole.id, 60.0) is not None
    assert b.claim_files(whole.id, 10, 60.0)[1] == []
    assert a.holds(whole.id)
    shared = _job(a, 3)
    assert b.claim_files(shared.id, 1, 60.0)[1]
    fresh = a.load_job(shared.id)
    assert fresh is not None and fresh.state is JobState.TRANSFERRING
    assert a.claim(shared.id, 60.0) is None and not a.start(fresh, 60.0)
    assert shared.id in a.leased_by_others()
