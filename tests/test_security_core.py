"""Security in the core (issue 18): temporary files that a planted link cannot redirect."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import bitsnb
from bitsnb import JobState
from bitsnb.testing import Fault, FileServer

E_ACCESSDENIED = 0x80070005


def test_a_link_planted_at_the_temporary_name_is_not_written_through(
    manager: bitsnb.Manager, server: FileServer, dest: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    job = manager.create_job("planted")
    job.add_file(server.add_file("a.bin", b"payload" * 100), dest / "a.bin")
    temp = Path(job.files[0].temporary_name)
    os.symlink(victim, temp)  # another local user guessed (or read) the name
    job.resume()
    assert job.wait(timeout=20) is JobState.ERROR
    assert job.error is not None and job.error.code == E_ACCESSDENIED
    assert "symbolic link" in job.error.message
    assert victim.read_bytes() == b"precious"
    assert temp.is_symlink()  # left as it was; complete() never moves it into place


def test_a_link_swapped_in_for_a_partial_temporary_file_is_refused(
    manager: bitsnb.Manager, server: FileServer, dest: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    url = server.add_random_file("b.bin", 400_000)
    server.inject("b.bin", Fault.drop_after(100_000))
    job = manager.create_job("swapped")
    job.add_file(url, dest / "b.bin")
    job.minimum_retry_delay = 30  # stay in TRANSIENT_ERROR while the link is planted
    job.resume()
    deadline = time.monotonic() + 20
    while job.state is not JobState.TRANSIENT_ERROR:
        assert time.monotonic() < deadline, job.state
        time.sleep(0.02)
    temp = Path(job.files[0].temporary_name)
    assert temp.stat().st_size > 0
    temp.unlink()
    os.symlink(victim, temp)
    job.resume()
    assert job.wait(timeout=20) is JobState.ERROR
    assert job.error is not None and job.error.code == E_ACCESSDENIED
    assert victim.read_bytes() == b"precious"


def test_temporary_files_are_private(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("c.bin", 300_000)
    server.inject("c.bin", Fault.throttle(300_000))
    job = manager.create_job("private")
    job.add_file(url, dest / "c.bin")
    job.resume()
    temp = Path(job.files[0].temporary_name)
    deadline = time.monotonic() + 20
    while not temp.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert stat.S_IMODE(temp.stat().st_mode) == 0o600
    assert job.wait(timeout=20) is JobState.TRANSFERRED
