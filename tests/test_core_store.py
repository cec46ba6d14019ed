"""The core and its store: memory follows the store, and the store never freezes the loop.

Faults are injected in the store itself: a SQLite trigger (created by the test over its own
connection to the same file) that makes every update of a job row fail while it is armed, and
another process that holds the write lock.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import bitsnb
from bitsnb import BitsError, JobPriority, JobState
from bitsnb.testing import Fault, FileServer

E_INVALIDARG = 0x80070057


class StoreFault:
    """Arms and disarms a trigger that refuses every UPDATE of the jobs table."""

    def __init__(self, store: Path) -> None:
        self._db = sqlite3.connect(store, isolation_level=None, timeout=10)
        self._db.execute("CREATE TABLE IF NOT EXISTS fault_switch (armed INTEGER NOT NULL)")
        self._db.execute(
            "INSERT INTO fault_switch SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM fault_switch)"
        )
        self._db.execute(
            "CREATE TRIGGER IF NOT EXISTS fault_jobs BEFORE UPDATE ON jobs"
            " WHEN (SELECT armed FROM fault_switch) = 1"
            " BEGIN SELECT RAISE(ABORT, 'injected store fault'); END"
        )

    def arm(self) -> None:
        self._db.execute("UPDATE fault_switch SET armed = 1")

    def disarm(self) -> None:
        self._db.execute("UPDATE fault_switch SET armed = 0")

    def row(self, job_id: object) -> tuple[int, int]:
        """(state, priority) of the job as the store has it."""
        got = self._db.execute(
            "SELECT state, priority FROM jobs WHERE id=?", (str(job_id),)
        ).fetchone()
        assert got is not None
        return int(got[0]), int(got[1])

    def close(self) -> None:
        self._db.close()


@pytest.fixture
def fault(manager: bitsnb.Manager) -> Iterator[StoreFault]:
    f = StoreFault(Path(manager.store_path))
    try:
        yield f
    finally:
        f.disarm()
        f.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_refused_save_leaves_memory_as_the_store(
    manager: bitsnb.Manager, fault: StoreFault, server: FileServer, dest: Path
) -> None:
    job = manager.create_job("refused")
    job.add_file(server.add_file("a.bin", b"abc"), dest / "a.bin")
    fault.arm()
    with pytest.raises(BitsError) as info:
        job.priority = JobPriority.HIGH
    assert info.value.code == E_INVALIDARG
    assert "injected store fault" in str(info.value)
    assert job.priority is JobPriority.NORMAL  # memory was put back
    assert fault.row(job.id) == (int(JobState.SUSPENDED), int(JobPriority.NORMAL))
    with pytest.raises(BitsError):
        job.add_file(server.add_file("b.bin", b"b"), dest / "b.bin")
    assert [f.local_name for f in job.files] == [str(dest / "a.bin")]  # not half added
    with pytest.raises(BitsError):
        job.resume()
    assert job.state is JobState.SUSPENDED
    fault.disarm()
    job.priority = JobPriority.HIGH
    assert fault.row(job.id) == (int(JobState.SUSPENDED), int(JobPriority.HIGH))


def test_a_run_whose_end_is_refused_runs_again_once_the_store_accepts(
    manager: bitsnb.Manager, fault: StoreFault, server: FileServer, dest: Path
) -> None:
    """The job's task survives: while the store refuses, memory says what the store says;
    once it accepts again, the job finishes by itself."""
    url = server.add_random_file("slow.bin", 300_000)
    server.inject("slow.bin", Fault.throttle(600_000))  # about half a second
    job = manager.create_job("end refused")
    job.add_file(url, dest / "slow.bin")
    job.resume()
    wait_for(lambda: job.progress.bytes_transferred > 0, 10, "the first bytes")
    fault.arm()
    wait_for(lambda: all(r.finished for r in server.requests), 10, "the body to be sent")
    # the file's end, the failure and every restart are refused for a while: at every look,
    # memory and the store agree, and the job is still running, not dead in TRANSIENT_ERROR
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        state, _ = fault.row(job.id)
        assert int(job.state) == state or job.state is JobState.TRANSFERRING
        assert state in (int(JobState.CONNECTING), int(JobState.TRANSFERRING))
        time.sleep(0.05)
    assert job.error_count == 0
    fault.disarm()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    assert fault.row(job.id)[0] == int(JobState.TRANSFERRED)
    assert job.complete() == 0
    assert (dest / "slow.bin").read_bytes() == server.path("slow.bin").read_bytes()


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE jobs SET display_name = display_name")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
print("releasing", flush=True)
db.execute("ROLLBACK")
"""


def test_another_process_holding_the_write_lock_does_not_stop_the_transfer(
    store: Path, server: FileServer, dest: Path
) -> None:
    policy = bitsnb.Policy(
        min_retry_delay_floor=0.05, poll_interval=0.05, checkpoint_interval=0.1, read_timeout=10
    )
    url = server.add_random_file("big.bin", 3_000_000)
    server.inject("big.bin", Fault.throttle(500_000))  # about six seconds
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("locked store")
        job.add_file(url, dest / "big.bin")
        job.resume()
        wait_for(lambda: job.progress.bytes_transferred > 200_000, 10, "the transfer to start")
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(store), "3"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked"
            at_lock = job.progress.bytes_transferred
            assert locker.stdout.readline().strip() == "releasing"
            during = job.progress.bytes_transferred - at_lock
        finally:
            locker.wait(timeout=30)
        # three seconds at 500 kB/s: the bytes kept coming while the store was locked
        # (a loop blocked on the lock would have moved them only after it)
        assert during > 500_000, f"only {during} bytes arrived while the store was locked"
        assert job.state is JobState.TRANSFERRING
        assert job.wait(timeout=30) is JobState.TRANSFERRED
        job.complete()
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()
