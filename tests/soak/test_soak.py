"""The CI soak: 150 jobs (1 KiB-2 MiB, mixed priorities) under seeded faults and 8 worker kills,
every delivered file byte-exact, nothing lost, nothing left behind, the store sound; the same on
a PostgreSQL store (100 jobs, 8 kills, mostly two managers at once); and the regressions the soak
found, as small deterministic tests.

The long version is ``python -m tests.soak --minutes N --seed S [--store postgresql://…]``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from _support.postgres import Postgres

import bitsnb
from bitsnb import JobState
from bitsnb.testing import Fault, FileServer

from ._driver import SoakConfig, run_soak


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_soak_under_faults_and_kills(tmp_path: Path) -> None:
    """Kills, restarts, two managers at once, faults of every kind: 0 lost, 0 corrupted."""
    report = run_soak(SoakConfig(workdir=tmp_path, seed=20240601, jobs=150, kills=8))
    text = report.format()
    print(text)
    assert report.ok, text
    assert report.kills == 8 and report.restarts >= 8, text
    assert report.delivered_jobs > 0.85 * report.jobs, text
    assert report.cancelled_on_purpose > 0, text
    kinds = {label.split(" (")[0] for label in report.faults}
    for kind in ("reset mid-body", "503+Retry-After", "close before headers"):
        assert kind in kinds, text


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_soak_on_postgresql(tmp_path: Path, postgres: Postgres) -> None:
    """The same soak with a PostgreSQL store (workers get its URL): 0 lost, 0 corrupted, every
    file row a job's, no lease or claimed batch left, fencing tokens from the sequence."""
    store = postgres.new_database()
    cfg = SoakConfig(
        workdir=tmp_path, seed=20240601, jobs=100, kills=8, overlap_share=0.9, store=store
    )
    report = run_soak(cfg)
    text = report.format()
    print(text)
    assert report.ok, text
    assert report.integrity == "ok", text
    assert report.kills == 8 and report.restarts >= 8 and report.overlaps >= 2, text
    assert report.delivered_jobs > 0.85 * report.jobs, text


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_soak_of_shared_jobs_on_postgresql(tmp_path: Path, postgres: Postgres) -> None:
    """Shared jobs (12-30 files each) whose files the workers claim in batches of 4, beside
    whole jobs, under the same kills and faults: workers killed holding a batch, yet no file in
    two live batches, none fetched by two at once, none lost, every delivered file byte-exact."""
    store = postgres.new_database()
    cfg = SoakConfig(
        workdir=tmp_path,
        seed=20240601,
        jobs=60,
        kills=8,
        overlap_share=0.9,
        store=store,
        shared_share=0.3,
    )
    report = run_soak(cfg)
    text = report.format()
    print(text)
    assert report.ok, text
    assert report.shared_jobs >= 10 and report.batch_kills >= 1, text
    assert report.kills == 8 and report.overlaps >= 2, text
    by_design = sum(report.by_design.values())  # every other job delivered, shared ones too
    assert report.delivered_jobs + report.cancelled_on_purpose + by_design == report.jobs, text


def _stored(store: Path, job: bitsnb.Job) -> tuple[JobState, list[tuple[int, int]]]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        (state,) = db.execute("SELECT state FROM jobs WHERE id=?", (str(job.id),)).fetchone()
        files = db.execute(
            "SELECT transferred, bytes_transferred FROM files WHERE job_id=?", (str(job.id),)
        ).fetchall()
        return JobState(state), [tuple(f) for f in files]
    finally:
        db.close()


def test_a_finished_job_is_not_retried_by_another_manager(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Manager B opens the store while a job is in TRANSIENT_ERROR (so B arms a retry timer),
    manager A resumes it at once and finishes it; when B's timer comes due, the job must stay
    TRANSFERRED (B's view is stale: it polls rarely) and the file must not be fetched again."""
    url = server.add_random_file("once.bin", 200_000)
    server.inject("once.bin", Fault.status(503))
    slow_poll = bitsnb.Policy(
        min_retry_delay_floor=0.05, poll_interval=30.0, lease_seconds=2.0, read_timeout=5.0
    )
    with bitsnb.Manager(store, policy=policy) as a:
        job = a.create_job("retried once")
        job.minimum_retry_delay = 1.5
        job.add_file(url, dest / "once.bin")
        job.resume()
        deadline = time.monotonic() + 15
        while job.state is not JobState.TRANSIENT_ERROR:
            assert time.monotonic() < deadline, job.state
            time.sleep(0.01)
        retry_due = time.monotonic() + 1.5
        with bitsnb.Manager(store, policy=slow_poll):
            job.resume()
            assert job.wait(timeout=15) is JobState.TRANSFERRED
            assert _stored(store, job) == (JobState.TRANSFERRED, [(1, 200_000)])
            # B's timer comes due at retry_due; give it a second to act, watching the store
            while time.monotonic() < retry_due + 1.0:
                assert _stored(store, job) == (JobState.TRANSFERRED, [(1, 200_000)])
                time.sleep(0.05)
            gets = [r for r in server.requests if r.method == "GET"]
            assert [r.status for r in gets] == [503, 200]
            assert job.complete() == 0
    assert (dest / "once.bin").read_bytes() == server.path("once.bin").read_bytes()
