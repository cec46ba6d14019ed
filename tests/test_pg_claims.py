"""Claims on a shared PostgreSQL store: batches that never overlap, a fencing token that keeps
a manager whose lease was taken over from committing, takeover of an expired lease, NOTIFY.

The holders here are named as processes of another host, so only expiry frees their leases
(a dead process of this host is taken over at once; see ``test_pg_cluster``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from _support.helpers import wait_until
from _support.postgres import Postgres

import bitsnb
from bitsnb import JobState
from bitsnb._records import JobRecord
from bitsnb.testing import FileServer

psycopg = pytest.importorskip("psycopg")
from bitsnb._store_pg import PgStore  # noqa: E402


def _queued(store: PgStore, n: int) -> list[JobRecord]:
    recs = []
    for i in range(n):
        rec = JobRecord(
            id=uuid.uuid4(), display_name=f"j{i}", type=bitsnb.JobType.DOWNLOAD, owner="me"
        )
        rec.state = JobState.QUEUED
        store.insert_job(rec)
        recs.append(rec)
    return recs


def _row(url: str, job_id: uuid.UUID) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT lease_owner, lease_token, version, state, display_name FROM jobs WHERE id=%s",
            (str(job_id),),
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_batch_claims_of_three_managers_never_overlap(opened: Callable[[str], PgStore]) -> None:
    """Three managers claim batches of 7 at the same moment until none is left: every job is
    claimed by exactly one (SKIP LOCKED: nobody waits, nobody gets another's row)."""
    recs = _queued(opened("elsewhere:1:maker"), 150)
    stores = [opened(f"elsewhere:{i}:m") for i in range(3)]
    got: list[list[uuid.UUID]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def claim_all(i: int) -> None:
        start.wait(10)
        for _ in range(100):  # bounded: 150 jobs / 7 per batch
            batch = stores[i].claim_batch(7, 60.0)
            if not batch:
                return
            got[i].extend(job_id for job_id, version in batch)
            assert all(version == 1 for _, version in batch)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [job_id for part in got for job_id in part]
    assert sorted(claimed) == sorted(r.id for r in recs)  # each once: no overlap, none missed
    assert all(got), "every manager got a share"
    for i, s in enumerate(stores):
        assert all(s.holds(job_id) for job_id in got[i])


def test_a_manager_whose_lease_was_taken_over_cannot_commit(
    url: str, opened: Callable[[str], PgStore]
) -> None:
    """A's lease expires (paused, cut off) and B takes the job over: A's late save is refused
    by the fencing token, the row stays as B has it, A's heartbeat does not extend B's lease."""
    a = opened("elsewhere:1:a")
    b = opened("elsewhere:2:b")
    (rec,) = _queued(a, 1)
    assert a.claim(rec.id, 0.3) == 1
    token_a = _row(url, rec.id)[1]
    assert b.claim(rec.id, 30.0) is None  # A's lease is live
    claimed: list[int | None] = []
    wait_until(
        lambda: claimed.append(b.claim(rec.id, 30.0)) or claimed[-1] is not None,
        timeout=10,
        message="B takes the expired lease",
    )
    owner, token_b, version, _, _ = _row(url, rec.id)
    assert owner == b.writer and token_b != token_a and version == 1  # a claim is no new version
    # A wakes up and commits what it did: refused, though its copy's version is the row's
    late = JobRecord(**{**rec.__dict__})
    late.display_name = "written late by A"
    late.state = JobState.TRANSFERRED
    assert not a.save_job(late)
    assert not a.save_job(late)  # and again: this run of A's has lost the job
    assert _row(url, rec.id) == (b.writer, token_b, 1, int(JobState.QUEUED), "j0")
    assert not a.holds(rec.id) and b.holds(rec.id)
    a.renew_leases(60.0)
    assert _row(url, rec.id)[0] == b.writer
    # B, the holder, commits; A's non-run writes (an application's call) still work by version
    rec.state = JobState.CONNECTING
    assert b.save_job(rec)
    assert _row(url, rec.id)[2] == 2


def test_changes_arrive_by_notify(opened: Callable[[str], PgStore]) -> None:
    """B learns of A's new job and of A's save through NOTIFY; its own writes are not echoed;
    with nothing changed, a look returns nothing."""
    a = opened("elsewhere:1:a")
    b = opened("elsewhere:2:b")
    since = time.time_ns()
    assert b.changed_by_others(since) == ([], since)
    (rec,) = _queued(a, 1)
    seen: list[JobRecord] = []
    wait_until(
        lambda: bool(seen.extend(b.changed_by_others(since)[0]) or seen),
        timeout=10,
        message="B hears of the new job",
    )
    assert [r.id for r in seen] == [rec.id]
    rec.display_name = "renamed"
    assert a.save_job(rec)
    seen.clear()
    wait_until(
        lambda: bool(seen.extend(b.changed_by_others(since)[0]) or seen),
        timeout=10,
        message="B hears of the save",
    )
    assert seen[0].display_name == "renamed" and seen[0].version == 2
    fresh = seen[0]
    fresh.priority = bitsnb.JobPriority.HIGH
    assert b.save_job(fresh)
    assert b.changed_by_others(since)[0] == []  # its own write: not echoed


def test_an_expired_lease_is_taken_over_within_twice_the_lease(
    url: str,
    opened: Callable[[str], PgStore],
    server: FileServer,
    tmp_path: Path,
    policy: bitsnb.Policy,
) -> None:
    """A job leased by a manager on another machine that stopped answering: a manager here
    runs it once the lease expires, within 2 × the lease time of the last heartbeat."""
    dest = tmp_path / "out"
    dest.mkdir()
    policy.lease_seconds = 1.5
    gone = opened("far-away-host:1:gone")
    with bitsnb.Manager(store=url, policy=bitsnb.Policy(max_active_jobs=0)) as maker:
        job = maker.create_job("orphan")
        job.add_file(server.add_random_file("o.bin", 10_000, seed=3), dest / "o.bin")
        assert gone.claim(job.id, policy.lease_seconds) is not None
        heartbeat = time.monotonic()
        job.resume()
        job_id = job.id
    with bitsnb.Manager(store=url, policy=policy) as mgr:
        wait_until(
            lambda: _row(url, job_id)[0] not in (None, gone.writer),
            timeout=20,
            message="the lease is taken over",
        )
        took = time.monotonic() - heartbeat
        assert mgr.get_job(job_id).wait(timeout=20) is JobState.TRANSFERRED
    print(f"takeover {took:.2f} s after the last heartbeat (lease {policy.lease_seconds} s)")
    assert took <= 2 * policy.lease_seconds, took
    assert [r.range for r in server.requests if r.path == "o.bin"] == [None]


def test_managers_carry_on_after_the_server_restarts(
    postgres: Postgres, policy: bitsnb.Policy, server: FileServer, tmp_path: Path
) -> None:
    """The PostgreSQL server restarts under two open managers (every connection cut): their
    calls fail as "busy" and are retried, the listener reconnects and catches up, and a job
    queued through one afterwards is run by the other."""
    url = postgres.new_database()
    dest = tmp_path / "out"
    dest.mkdir()
    passive = bitsnb.Policy(max_active_jobs=0, poll_interval=0.05)
    with (
        bitsnb.Manager(store=url, policy=policy) as runner,
        bitsnb.Manager(store=url, policy=passive) as queuer,
    ):
        before = queuer.create_job("before")
        wait_until(lambda: any(j.id == before.id for j in runner.enum_jobs()), message="seen")
        postgres.restart()
        job = queuer.create_job("after the restart")
        job.add_file(server.add_random_file("r.bin", 20_000, seed=5), dest / "r.bin")
        job.resume()
        assert job.wait(timeout=30) is JobState.TRANSFERRED
        assert runner.get_job(job.id).state is JobState.TRANSFERRED
        assert job.complete() == 0
    assert (dest / "r.bin").read_bytes() == server.path("r.bin").read_bytes()
