"""The store when another process holds it locked, or its folder is read-only."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import bitsnb
from bitsnb import BitsError
from bitsnb.testing import FileServer

E_ACCESSDENIED = 0x80070005


def job_names(store: Path) -> list[str]:
    db = sqlite3.connect(store)
    try:
        return sorted(r[0] for r in db.execute("SELECT display_name FROM jobs"))
    finally:
        db.close()


def test_locked_store_is_a_bits_error_and_changes_nothing(store: Path) -> None:
    with bitsnb.Manager(store=store) as mgr:
        mgr.create_job("before")
    blocker = sqlite3.connect(store, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process writing, and never done
    try:
        policy = bitsnb.Policy(store_busy_timeout=0.2)
        with bitsnb.Manager(store=store, policy=policy) as mgr:
            assert [j.display_name for j in mgr.enum_jobs()] == ["before"]  # reading works
            with pytest.raises(BitsError) as info:
                mgr.create_job("while locked")
            assert info.value.code == E_ACCESSDENIED
            assert "locked by another process" in str(info.value)
            assert [j.display_name for j in mgr.enum_jobs()] == ["before"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert job_names(store) == ["before"]


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only mount (root ignores file modes, so chmod would prove nothing)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "seed.txt").write_text("x")
    mounted = subprocess.run(
        ["mount", "-o", "bind,ro", str(folder), str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_store_in_a_read_only_folder(read_only_folder: Path) -> None:
    store = read_only_folder / "jobs.db"
    with pytest.raises(BitsError) as info:
        bitsnb.Manager(store=store)
    assert info.value.code == E_ACCESSDENIED
    assert str(store) in str(info.value)
    assert sorted(os.listdir(read_only_folder)) == ["seed.txt"]


def test_download_into_a_read_only_folder(
    manager: bitsnb.Manager, read_only_folder: Path, server: FileServer
) -> None:
    job = manager.create_job("ro")
    with pytest.raises(BitsError) as info:
        job.add_file(server.add_file("a.bin", b"abc"), read_only_folder / "a.bin")
    assert info.value.code == E_ACCESSDENIED
    assert job.files == []
    assert sorted(os.listdir(read_only_folder)) == ["seed.txt"]
