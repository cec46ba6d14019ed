"""Files that finish together: one batch of fsyncs (``GroupSync``) and one store commit.

The guarantee stays: a file's bytes are on disk before the store says it is transferred. A
process SIGKILLed while batches are being written leaves no file recorded done whose temporary
file is not whole, and a new process finishes the job without fetching those files again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

import bitsnb
from bitsnb import JobState
from bitsnb._fsyncs import GroupSync, run_through
from bitsnb.testing import FileServer

CHILD = Path(__file__).parent / "_support" / "child_many.py"
KIB = 1024


def test_fsyncs_that_come_together_go_in_one_batch(tmp_path: Path) -> None:
    """Twenty descriptors synced at once take fewer executor jobs than descriptors, and each
    caller gets its own descriptor's outcome (a pipe cannot be fsynced: EINVAL, for it alone)."""
    paths = [tmp_path / f"f{i}" for i in range(20)]
    handles = [open(p, "wb") for p in paths]  # closed below
    r, w = os.pipe()
    try:
        for fh in handles:
            fh.write(b"x" * 4096)
            fh.flush()

        async def run() -> tuple[list[BaseException | None], GroupSync]:
            syncs = GroupSync()
            try:
                fds = [fh.fileno() for fh in handles] + [r]
                out = await asyncio.gather(*(syncs.fsync(fd) for fd in fds), return_exceptions=True)
                return list(out), syncs
            finally:
                syncs.close()

        out, syncs = asyncio.run(run())
    finally:
        for fh in handles:
            fh.close()
        os.close(r)
        os.close(w)
    assert out[:20] == [None] * 20
    assert isinstance(out[20], OSError)
    assert syncs.synced == 21
    assert syncs.batches < 21  # the first batch holds one; the rest wait for it and go together


def test_a_sync_that_takes_long_does_not_hold_the_next_files_back() -> None:
    """Batches run on several threads: while one file's sync is held up, the next file's
    still runs and returns (one thread had been the slowest stage for many small files)."""
    gate = threading.Event()
    order: list[str] = []

    def slow() -> None:
        gate.wait(10)  # bounded: released below
        order.append("slow")

    def quick() -> None:
        order.append("quick")

    async def run() -> bool:
        syncs = GroupSync()
        try:
            held = asyncio.create_task(syncs.run(slow))
            await asyncio.sleep(0.05)  # the slow job is on a worker thread, held by the gate
            try:
                await asyncio.wait_for(syncs.run(quick), 5)
            except TimeoutError:
                return False
            finally:
                gate.set()
            await asyncio.wait_for(held, 10)
            return True
        finally:
            gate.set()
            syncs.close()

    assert asyncio.run(run())
    assert order == ["quick", "slow"]


async def _cancel_twice(task: asyncio.Task[Any]) -> bool:
    """Cancel *task* (held on a thread by a gate), then again while it waits out the first;
    whether it is still waiting after both."""
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    return not task.done()


def test_a_caller_cancelled_twice_still_waits_for_its_job() -> None:
    """A waiter cancelled again while it already waits out a first cancel (a job cancelled
    while its task unwinds) still returns only once its job ran, with the cancel: the
    descriptor it syncs must stay open until then (CI saw an fsync of a closed one, EBADF)."""
    gate = threading.Event()
    ran: list[bool] = []

    def job() -> None:
        gate.wait(10)  # bounded: released below
        ran.append(True)

    async def run() -> tuple[bool, bool, bool]:
        syncs = GroupSync()
        try:
            task = asyncio.create_task(syncs.run(job))
            waited = await _cancel_twice(task)  # the job is on the worker thread, held
            gate.set()
            try:
                await asyncio.wait_for(task, 10)
            except asyncio.CancelledError:
                return waited, True, bool(ran)
            return waited, False, bool(ran)
        finally:
            gate.set()
            syncs.close()

    waited, cancelled, job_ran = asyncio.run(run())
    assert waited  # not done before its job ran
    assert cancelled and job_ran


def test_a_clean_up_runs_to_its_end_through_two_cancels() -> None:
    """A segmented download's stop (its connections' end, the hash read-back, the table's
    sync) runs through ``run_through``: cancelled twice meanwhile, the clean-up still ends
    before the caller goes on (and closes the descriptor), and the cancel comes after it."""
    gate = threading.Event()
    steps: list[str] = []

    async def clean_up() -> None:
        steps.append("began")
        await asyncio.to_thread(gate.wait, 10)  # bounded: released below
        steps.append("synced")
        await asyncio.sleep(0)
        steps.append("ended")

    async def caller() -> None:
        try:
            await run_through(clean_up())
        finally:
            steps.append("closed")

    async def run() -> bool:
        task = asyncio.create_task(caller())
        waited = await _cancel_twice(task)  # the clean-up waits on its thread, held
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        return waited

    try:
        assert asyncio.run(run())
    finally:
        gate.set()
    assert steps == ["began", "synced", "ended", "closed"]


def test_run_through_passes_on_what_the_clean_up_raised() -> None:
    async def fails() -> None:
        raise OSError(5, "EIO")

    with pytest.raises(OSError):
        asyncio.run(run_through(fails()))


def _recorded(store: Path, job_id: uuid.UUID) -> list[tuple[str, str, int | None, int]]:
    """(remote, temp, bytes_total, transferred) of each file row, read with plain sqlite3."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT remote_name, temp_name, bytes_total, transferred FROM files"
            " WHERE job_id=? ORDER BY idx",
            (str(job_id),),
        ).fetchall()
    finally:
        db.close()
    return [(str(a), str(b), c, int(d)) for a, b, c, d in rows]


@pytest.mark.parametrize("say_at", [40, 150])
def test_sigkill_mid_batch_records_no_file_without_its_bytes(
    tmp_path: Path, server: FileServer, say_at: int
) -> None:
    """A job of 300 small files, 8 in flight, SIGKILLed while files finish and are recorded in
    groups: every file the store calls transferred has its whole, exact temporary file; a new
    manager finishes the job without fetching those files again, byte-exact."""
    store, dest = tmp_path / "jobs.db", tmp_path / "dest"
    dest.mkdir()
    urls = [server.add_random_file(f"s{i:03d}.bin", 16 * KIB, seed=i) for i in range(300)]
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(store), str(dest), str(say_at), *urls],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the child exits on its own within 30 s
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    job_id = uuid.UUID(line)
    rows = _recorded(store, job_id)
    done = [r for r in rows if r[3]]
    assert say_at <= len(done) < len(rows)  # killed mid-job, after the ones it said
    for remote, temp, total, _ in done:
        name = remote.rsplit("/", 1)[-1]
        assert total == 16 * KIB
        assert Path(temp).read_bytes() == server.path(name).read_bytes(), name
    done_names = {r[0].rsplit("/", 1)[-1] for r in done}
    before = {r.path for r in server.requests}
    assert done_names <= before

    policy = bitsnb.Policy(lease_seconds=60.0, files_in_flight=8)
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.get_job(job_id)
        assert job.wait(timeout=60) is JobState.TRANSFERRED
        assert job.complete() == 0
    again = [r.path for r in server.requests]
    for name in done_names:
        assert again.count(name) == 1, f"{name} was recorded done but fetched again"
    for i in range(300):
        name = f"s{i:03d}.bin"
        assert (dest / name).read_bytes() == server.path(name).read_bytes(), name
