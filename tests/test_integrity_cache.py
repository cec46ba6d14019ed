"""download()'s cache for a file bitsnb did not write: hashed once and found matching, it is
recorded (size, mtime_ns, inode, hash) in the store, on SQLite and PostgreSQL alike, so the next
run reads nothing; a file changed since is hashed again."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from _support.postgres import Postgres

import bitsnb
from bitsnb import BitsError
from bitsnb.helpers import download
from bitsnb.testing import FileServer

E_INVALIDARG = 0x80070057
MIB = 1024 * 1024


def rchar() -> int:
    """Bytes this process has read through read() calls so far (``/proc/self/io``)."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def requests_for(server: FileServer, name: str) -> int:
    return len([r for r in server.requests if r.path == name])


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store location on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()


def test_foreign_file_hashed_once_then_trusted_until_changed(
    location: str, policy: bitsnb.Policy, server: FileServer, tmp_path: Path
) -> None:
    """Someone else's right file: the first download() hashes it (reads it all) and records it;
    the second reads nothing of it; a change (same size, new bytes) is hashed again and
    fetched; a touch with the same bytes is hashed again and trusted anew."""
    url = server.add_random_file("foreign.bin", 4 * MIB, seed=21)
    data = server.path("foreign.bin").read_bytes()
    known = "sha256:" + hashlib.sha256(data).hexdigest()
    target = tmp_path / "dest" / "foreign.bin"
    target.parent.mkdir()
    target.write_bytes(data)
    with bitsnb.Manager(store=location, policy=policy) as mgr:
        assert mgr.verified_hash(target) is None
        before = rchar()
        assert download(url, target, known_hash=known, manager=mgr, display=False) == target
        assert rchar() - before >= 4 * MIB  # hashed once
        assert mgr.verified_hash(target) == known  # and recorded
        before = rchar()
        for _ in range(3):
            assert download(url, target, known_hash=known, manager=mgr, display=False) == target
        assert rchar() - before < MIB  # the store's pages, never the 4 MiB file
        assert requests_for(server, "foreign.bin") == 0
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
        assert mgr.verified_hash(target) is None
        before = rchar()
        assert download(url, target, known_hash=known, manager=mgr, display=False) == target
        assert rchar() - before >= 4 * MIB  # hashed again, found equal, recorded anew
        assert mgr.verified_hash(target) == known
        target.write_bytes(b"\0" * len(data))  # same size, wrong bytes
        job = download(url, target, known_hash=known, manager=mgr, display=False, wait=True)
        assert isinstance(job, bitsnb.Job) and requests_for(server, "foreign.bin") >= 1
        assert target.read_bytes() == data
        assert mgr.verified_hash(target) == known  # the job's own record now
    with bitsnb.Manager(store=location, policy=policy) as mgr:  # a new process's view of the store
        before = rchar()
        assert download(url, target, known_hash=known, manager=mgr, display=False) == target
        assert rchar() - before < MIB


def test_record_hash_checks_its_arguments(
    location: str, policy: bitsnb.Policy, tmp_path: Path
) -> None:
    """A malformed hash: E_INVALIDARG, nothing recorded; a file changed since *seen*, or gone:
    False, nothing recorded."""
    target = tmp_path / "f.bin"
    target.write_bytes(b"abc")
    good = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    with bitsnb.Manager(store=location, policy=policy) as mgr:
        for bad in ("sha256:12", "whirlpool:" + "0" * 64):
            with pytest.raises(BitsError) as err:
                mgr.record_hash(target, bad)
            assert err.value.code == E_INVALIDARG
        assert mgr.verified_hash(target) is None
        st = target.stat()
        assert not mgr.record_hash(target, good, seen=(st.st_size + 1, st.st_mtime_ns, st.st_ino))
        assert not mgr.record_hash(tmp_path / "missing.bin", good)
        assert mgr.verified_hash(target) is None
        assert mgr.record_hash(target, good.upper().replace("SHA256", "sha256"))
        assert mgr.verified_hash(target) == good


def test_store_of_the_previous_release_gets_the_table(
    policy: bitsnb.Policy, tmp_path: Path
) -> None:
    """A store made before the hashed-files table existed gains it on open, its jobs kept."""
    path = tmp_path / "old.db"
    with bitsnb.Manager(store=str(path), policy=policy) as mgr:
        mgr.create_job("kept")
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE hashed_files")
    target = tmp_path / "f.bin"
    target.write_bytes(b"abc")
    good = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    with bitsnb.Manager(store=str(path), policy=policy) as mgr:
        assert [j.display_name for j in mgr.enum_jobs()] == ["kept"]
        assert mgr.record_hash(target, good) and mgr.verified_hash(target) == good
