"""The store's lease and save statements: a start takes the lease in the save, a save gives it
up, claim() answers the row's version, and holds() knows what claim() never gave."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import bitsnb
from bitsnb import JobState
from bitsnb._records import JobRecord
from bitsnb._store import Store
from bitsnb.testing import FileServer


def _job(store: Store) -> JobRecord:
    rec = JobRecord(id=uuid.uuid4(), display_name="j", type=bitsnb.JobType.DOWNLOAD, owner="me")
    store.insert_job(rec)
    return rec


def _lease(store: Store, rec: JobRecord) -> tuple[object, ...]:
    return tuple(
        store._db.execute(
            "SELECT lease_owner, version FROM jobs WHERE id=?", (str(rec.id),)
        ).fetchone()
    )


def test_start_saves_and_leases_in_one_write(store: Path) -> None:
    a = Store(store, f"host:{os.getpid()}:a")
    rec = _job(a)
    rec.state = JobState.CONNECTING
    assert a.start(rec, 30.0)
    assert _lease(a, rec) == (a.writer, 2) and rec.version == 2
    assert a.holds(rec.id)
    # a save that leaves the running states gives the lease up in the same statement
    rec.state = JobState.TRANSFERRED
    assert a.save_job(rec, release=True)
    assert _lease(a, rec) == (None, 3)
    assert not a.holds(rec.id)
    a.close()


def test_start_writes_nothing_when_the_row_moved_or_another_holds_it(store: Path) -> None:
    a = Store(store, f"host:{os.getpid()}:a")
    b = Store(store, f"{os.uname().nodename}:{os.getpid()}:b")  # alive: this very process
    rec = _job(a)
    stale = JobRecord(**{**rec.__dict__, "version": 0})
    assert not a.start(stale, 30.0)  # another writer's version: nothing written
    assert _lease(a, rec) == (None, 1)
    assert b.claim(rec.id, 30.0) == 1  # claim answers the row's version
    assert not a.start(rec, 30.0)  # a live process holds the lease
    assert _lease(a, rec) == (b.writer, 1)
    assert a.claim(rec.id, 30.0) is None
    assert not a.holds(rec.id) and b.holds(rec.id)
    b.release(rec.id)
    assert not b.holds(rec.id)
    assert a.start(rec, 30.0)
    a.close()
    b.close()


def test_a_jobs_last_file_and_its_end_are_one_commit(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    names = [f"f{i}.bin" for i in range(5)]
    for i, name in enumerate(names):
        server.add_random_file(name, 3000, seed=i)
    job = manager.create_job("five")
    job.add_file_set([(server.url(n), dest / n) for n in names])
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    reader = Store(manager.store_path, "reader")
    try:
        saved = reader.load_job(job.id)
        assert saved is not None and saved.state is JobState.TRANSFERRED
        assert all(f.transferred for f in saved.files)
        assert _lease(reader, saved)[0] is None
    finally:
        reader.close()
    assert job.complete() == 0


def test_a_final_save_takes_the_holders_lease_with_it(store: Path) -> None:
    """A holds the job's lease; B's non-final save leaves it to A, B's final save (cancel,
    complete) clears it: a final job is nobody's to run (the PostgreSQL soak found leases of
    killed managers left on final jobs; SQLite's save had the same rule)."""
    a = Store(store, f"host:{os.getpid()}:a")
    b = Store(store, f"{os.uname().nodename}:{os.getpid()}:b")
    for final in (JobState.CANCELLED, JobState.ACKNOWLEDGED):
        rec = _job(a)
        rec.state = JobState.QUEUED
        assert a.claim(rec.id, 30.0) == 1
        rec.display_name = "renamed by B"
        assert b.save_job(rec)
        assert _lease(b, rec) == (a.writer, 2)  # a non-final save is no reason to drop it
        rec.state = final
        assert b.save_job(rec)
        assert _lease(b, rec) == (None, 3)
    a.close()
    b.close()
