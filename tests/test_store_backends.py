"""The store's behaviour on both backends: SQLite (a file) and PostgreSQL (a real server).

The same tests run on each (``backend``): jobs created, enumerated, looked up, cancelled and
completed, their state back in a new manager, a schema-1 store migrated in place, a newer schema
refused with its data left alone; and the store string's own rules (URL schemes, BITSNB_STORE).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _support.helpers import wait_until
from _support.postgres import Postgres

import bitsnb
from bitsnb import BitsError, JobState
from bitsnb._codes import E_INVALIDARG
from bitsnb._records import JobRecord
from bitsnb._store_api import JobStore, StoreURL
from bitsnb._store_open import open_store, store_location
from bitsnb._store_rows import SCHEMA_VERSION
from bitsnb.testing import FileServer

KIB = 1024
_V2_COLUMNS = ("known_hash", "hash", "validation_state")


class Backend:
    """One store location and raw access to its database (to age or break it)."""

    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location

    def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run *statements* on the database directly; the last one's rows."""
        rows: list[tuple[Any, ...]] = []
        if self.kind == "sqlite":
            db = sqlite3.connect(self.location)
            try:
                for s in statements:
                    rows = db.execute(s).fetchall()
                db.commit()
            finally:
                db.close()
            return rows
        import psycopg

        with psycopg.connect(self.location, autocommit=True) as conn:
            for s in statements:
                cur = conn.execute(s)
                rows = cur.fetchall() if cur.description else []
        return rows

    def schema_version(self) -> int:
        if self.kind == "sqlite":
            return int(self.sql("PRAGMA user_version")[0][0])
        rows = self.sql("SELECT value FROM bitsnb_meta WHERE name='schema_version'")
        return int(rows[0][0])

    def set_schema_version(self, version: int) -> None:
        if self.kind == "sqlite":
            self.sql(f"PRAGMA user_version={version}")
        else:
            self.sql(f"UPDATE bitsnb_meta SET value={version} WHERE name='schema_version'")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh store on each backend (PostgreSQL: a new database on the session's server)."""
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "jobs.db"))
    pg: Postgres = request.getfixturevalue("postgres")
    return Backend("postgresql", pg.new_database())


@pytest.fixture
def opened(backend: Backend) -> Iterator[Callable[[str], JobStore]]:
    """Open raw stores on the backend (closed at the end)."""
    stores: list[JobStore] = []

    def open_one(writer: str) -> JobStore:
        store = open_store(store_location(backend.location), writer, 5.0)
        stores.append(store)
        return store

    yield open_one
    for s in stores:
        s.close()


def test_create_enumerate_get_cancel_complete_and_restart(
    backend: Backend, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A manager's jobs, their files, progress and final states come back in the next one."""
    with bitsnb.Manager(store=backend.location, policy=policy) as mgr:
        done = mgr.create_job("done")
        done.add_file(server.add_random_file("done.bin", 70 * KIB, seed=1), dest / "done.bin")
        done.resume()
        kept = mgr.create_job("kept", description="stays queued")
        kept.add_file_set([(server.url(f"later{i}.bin"), dest / f"later{i}.bin") for i in range(3)])
        gone = mgr.create_job("gone")
        gone.add_file(server.url("never.bin"), dest / "never.bin")
        assert gone.cancel() == 0
        assert done.wait(timeout=20) is JobState.TRANSFERRED
        assert [j.id for j in mgr.enum_jobs()] == [done.id, kept.id]
        assert mgr.get_job(str(kept.id)).display_name == "kept"
        ids = (done.id, kept.id, gone.id)
    with bitsnb.Manager(store=backend.location, policy=policy) as again:
        assert [j.id for j in again.enum_jobs()] == list(ids[:2])
        d = again.get_job(ids[0])
        assert d.state is JobState.TRANSFERRED
        assert d.progress.bytes_transferred == 70 * KIB
        k = again.get_job(ids[1])
        assert k.state is JobState.SUSPENDED and k.description == "stays queued"
        assert [f.remote_name for f in k.files] == [server.url(f"later{i}.bin") for i in range(3)]
        history = {j.id: j.state for j in again.enum_jobs(include_finished=True)}
        assert history[ids[2]] is JobState.CANCELLED
        assert d.complete() == 0
        with pytest.raises(BitsError):
            again.get_job(ids[0])  # acknowledged: gone from the queue
    assert (dest / "done.bin").read_bytes() == server.path("done.bin").read_bytes()


def test_two_managers_see_each_others_changes(
    backend: Backend, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A job created and finished through one manager reaches the other (polled changes on
    SQLite, NOTIFY on PostgreSQL); a suspend through the other reaches the first."""
    passive = dataclasses.replace(policy, max_active_jobs=0)  # b transfers nothing: a does
    with (
        bitsnb.Manager(store=backend.location, policy=policy) as a,
        bitsnb.Manager(store=backend.location, policy=passive) as b,
    ):
        job = a.create_job("shared")
        job.add_file(server.add_random_file("s.bin", 20 * KIB, seed=2), dest / "s.bin")
        job.resume()
        assert job.wait(timeout=20) is JobState.TRANSFERRED
        wait_until(
            lambda: any(j.id == job.id and j.state is JobState.TRANSFERRED for j in b.enum_jobs()),
            message="b sees the job transferred",
        )
        other = b.create_job("from b")
        other.add_file(server.url("x.bin"), dest / "x.bin")
        wait_until(lambda: any(j.id == other.id for j in a.enum_jobs()), message="a sees it")
        b.get_job(job.id).complete()
        wait_until(lambda: job.state is JobState.ACKNOWLEDGED, message="a sees the complete")


def test_store_records_round_trip(opened: Callable[[str], JobStore]) -> None:
    """Insert, save with files, load, count, prune: the raw store on each backend."""
    s = opened("w1")
    rec = JobRecord(id=uuid.uuid4(), display_name="r", type=bitsnb.JobType.DOWNLOAD, owner="me")
    s.insert_job(rec)
    assert rec.version == 1 and rec.seq > 0
    loaded = s.load_job(rec.id)
    assert loaded is not None and loaded.display_name == "r" and loaded.files == []
    assert s.count_jobs() == 1 and s.count_jobs("me") == 1 and s.count_jobs("you") == 0
    stale = JobRecord(**{**rec.__dict__, "version": 0})
    assert not s.save_job(stale)  # another version: nothing written
    rec.state = JobState.CANCELLED
    rec.modified = 1.0
    assert s.save_job(rec)
    assert s.version_of(rec.id) == 2
    assert s.load_jobs() == [] and len(s.load_jobs(include_finished=True)) == 1
    assert s.prune_finished(before=2.0) == 1
    assert s.load_job(rec.id) is None and s.version_of(rec.id) is None


def test_leases_on_both_backends(opened: Callable[[str], JobStore]) -> None:
    """A start takes the lease; another writer cannot start or claim it; a release frees it."""
    a = opened(f"{os.uname().nodename}:{os.getpid()}:a")
    b = opened(f"{os.uname().nodename}:{os.getpid()}:b")  # alive: this very process
    rec = JobRecord(id=uuid.uuid4(), display_name="l", type=bitsnb.JobType.DOWNLOAD, owner="me")
    a.insert_job(rec)
    assert b.claim(rec.id, 30.0) == 1
    assert b.holds(rec.id) and not a.holds(rec.id)
    rec.state = JobState.CONNECTING
    assert not a.start(rec, 30.0)
    assert a.claim(rec.id, 30.0) is None
    assert a.leased_by_others() == {rec.id}
    b.release(rec.id)
    assert a.start(rec, 30.0) and a.holds(rec.id)
    assert b.leased_by_others() == {rec.id}


def test_schema_1_store_is_migrated_in_place(
    backend: Backend, policy: bitsnb.Policy, dest: Path
) -> None:
    """A store of schema 1 (no hash columns) opens: migrated to this version, rows kept."""
    with bitsnb.Manager(store=backend.location, policy=policy) as mgr:
        job = mgr.create_job("old")
        job.add_file("http://127.0.0.1:9/x", dest / "x")
        job_id = job.id
    backend.sql(*(f"ALTER TABLE files DROP COLUMN {c}" for c in _V2_COLUMNS))
    backend.set_schema_version(1)
    with bitsnb.Manager(store=backend.location, policy=policy) as mgr:
        (f,) = mgr.get_job(job_id).files
        assert (f.known_hash, f.hash, f.validation_state) == (None, None, True)
        mgr.get_job(job_id).add_file(
            "http://127.0.0.1:9/y", dest / "y", known_hash="md5:" + "a" * 32
        )
    assert backend.schema_version() == SCHEMA_VERSION
    rows = backend.sql("SELECT idx, known_hash, validation_state FROM files ORDER BY idx")
    assert rows == [(0, None, 1), (1, "md5:" + "a" * 32, 1)]


def test_newer_schema_is_refused_and_left_alone(backend: Backend, policy: bitsnb.Policy) -> None:
    """A store written by a newer bitsnb: a BitsError that says so; version and rows stay."""
    with bitsnb.Manager(store=backend.location, policy=policy) as mgr:
        mgr.create_job("from the future")
    backend.set_schema_version(SCHEMA_VERSION + 7)
    with pytest.raises(BitsError) as info:
        bitsnb.Manager(store=backend.location, policy=policy)
    text = str(info.value)
    assert info.value.code == E_INVALIDARG
    assert str(SCHEMA_VERSION + 7) in text and "newer" in text and "upgrade" in text
    assert backend.schema_version() == SCHEMA_VERSION + 7
    assert backend.sql("SELECT display_name FROM jobs") == [("from the future",)]


def test_bitsnb_store_selects_postgresql(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch, policy: bitsnb.Policy
) -> None:
    """``BITSNB_STORE=postgresql://…`` is the default store of Manager and AsyncManager."""
    url = postgres.new_database()
    monkeypatch.setenv("BITSNB_STORE", url)
    with bitsnb.Manager(policy=policy) as mgr:
        assert mgr.store_path == StoreURL(url)
        mgr.create_job("via env")

    async def names() -> list[str]:
        async with bitsnb.AsyncManager(policy=policy) as amgr:
            return [j.display_name for j in await amgr.enum_jobs()]

    assert asyncio.run(names()) == ["via env"]


@pytest.mark.parametrize("url", ["sqlite:///tmp/x.db", "s3://b/k", "mysql://u@h/db"])
def test_other_url_schemes_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BitsError) as info:
        bitsnb.Manager(store=url)
    assert info.value.code == E_INVALIDARG and "unknown store scheme" in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["bitsnb-home"] or not list(tmp_path.iterdir())


def test_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    """A URL of a server that is not there: E_INVALIDARG at once, naming the store."""
    sock = tmp_path / "nothing-here"
    sock.mkdir()
    with pytest.raises(BitsError) as info:
        bitsnb.Manager(store=f"postgresql://u:secret@/db?host={sock}")
    assert info.value.code == E_INVALIDARG and "cannot connect" in str(info.value)
    assert "secret" not in str(info.value)


def test_store_url_hides_its_password() -> None:
    url = StoreURL("postgresql://me:hunter2@db.example:5432/q")
    assert str(url) == "postgresql://me:***@db.example:5432/q" and "hunter2" not in repr(url)


def test_download_cache_on_both_backends(
    backend: Backend, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A verified, completed file is trusted by the next download() on either store (its
    placement is recorded at complete()); a file changed since is not."""
    import hashlib

    url = server.add_random_file("cached.bin", 40 * KIB, seed=5)
    digest = "sha256:" + hashlib.sha256(server.path("cached.bin").read_bytes()).hexdigest()
    target = dest / "cached.bin"
    with bitsnb.Manager(store=backend.location, policy=policy) as mgr:
        job = bitsnb.download(url, target, known_hash=digest, manager=mgr, display=False, wait=True)
        assert isinstance(job, bitsnb.Job) and job.state is JobState.ACKNOWLEDGED
        assert mgr.verified_hash(target) == digest
        again = bitsnb.download(
            url, target, known_hash=digest, manager=mgr, display=False, wait=True
        )
        assert again == target  # in place: no job made
        target.write_bytes(target.read_bytes())  # same bytes, a new mtime: no longer trusted
        assert mgr.verified_hash(target) is None
