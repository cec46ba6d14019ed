"""Downloads end to end against the loopback server: byte-exact files, temporary files and
complete(), scheduling, notifications, headers and credentials, errors and retries."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _support.helpers import (
    Recorder,
    temp_files,
    visible_files,
    wait_state,
    wait_until,
)

import bitsnb
from bitsnb import ErrorContext, JobPriority, JobState, NotifyFlags
from bitsnb.testing import Fault, FileServer

S_OK = 0
BG_S_PARTIAL_COMPLETE = 0x00200017
BG_E_MISSING_FILE_SIZE = 0x80200011
BG_E_MAXDOWNLOAD_TIMEOUT = 0x80200054
ERROR_PATH_NOT_FOUND = 0x80070003
HTTP_404 = 0x80190194
HTTP_503 = 0x801901F7
KIB = 1024


def files_of(server: FileServer, names: list[str]) -> dict[str, bytes]:
    """The served content of *names*."""
    return {n: server.path(n).read_bytes() for n in names}


def get_paths(server: FileServer) -> list[str]:
    """Paths of the GET requests, in arrival order."""
    return [r.path for r in server.requests if r.method == "GET"]


# -- files, temporary files, complete and cancel -------------------------------------------------
@pytest.fixture
def sequential(store: Path, policy: bitsnb.Policy) -> Any:
    """A manager that transfers a job's files strictly one after the other (as BITS does)."""
    policy.files_in_flight = 1
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        yield mgr


def test_several_files_byte_exact_in_order(
    sequential: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Files of one job arrive byte-exact, one after the other in the order they were added;
    until complete() only hidden temporary files are in the folder."""
    manager = sequential
    names = [f"f{i}.bin" for i in range(5)]
    sizes = [0, 1, 100 * KIB, 3 * KIB * KIB + 7, 257 * KIB]
    urls = [
        server.add_random_file(n, s, seed=i)
        for i, (n, s) in enumerate(zip(names, sizes, strict=True))
    ]
    job = manager.create_job("several")
    job.add_file_set([(u, dest / n) for u, n in zip(urls, names, strict=True)])
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    assert get_paths(server) == names
    assert all(r.range is None for r in server.requests)
    assert visible_files(dest) == []
    assert len(temp_files(dest)) == len(names)
    for f in job.files:
        assert Path(f.temporary_name).parent == dest
        assert Path(f.temporary_name).name.startswith(".BIT")
        assert f.temporary_name.endswith(".tmp")
        assert f.transferred and not f.progress.completed
    assert job.complete() == S_OK
    assert temp_files(dest) == []
    assert visible_files(dest) == sorted(names)
    for n, data in files_of(server, names).items():
        assert (dest / n).read_bytes() == data


def test_many_files_overlapped_byte_exact(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """With the default policy (a few files in flight) every file still arrives byte-exact,
    each fetched exactly once."""
    names = [f"m{i:02}.bin" for i in range(12)]
    job = manager.create_job("many")
    job.add_file_set(
        [(server.add_random_file(n, 1000 * i + 1, seed=i), dest / n) for i, n in enumerate(names)]
    )
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    assert sorted(get_paths(server)) == names
    # files start in order, but a few run at once, so requests may reach the server a
    # little out of order: the first file is among the first files_in_flight requests
    assert names[0] in get_paths(server)[: manager.policy.files_in_flight]
    assert job.complete() == S_OK
    for n, data in files_of(server, names).items():
        assert (dest / n).read_bytes() == data


def test_existing_destination_replaced_only_at_complete(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """An existing file at the destination is untouched until complete() renames over it."""
    url = server.add_random_file("new.bin", 50 * KIB, seed=3)
    target = dest / "new.bin"
    target.write_bytes(b"old content")
    job = manager.create_job("replace")
    job.add_file(url, target)
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert target.read_bytes() == b"old content"
    inode_before = target.stat().st_ino
    assert job.complete() == S_OK
    assert target.read_bytes() == server.path("new.bin").read_bytes()
    assert target.stat().st_ino != inode_before  # renamed over, not rewritten in place
    assert job.files[0].progress.completed


def test_partial_complete_keeps_finished_files(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """complete() before the last file is done: BG_S_PARTIAL_COMPLETE, only finished files kept,
    no temporary file left."""
    done_url = server.add_random_file("done.bin", 40 * KIB, seed=1)
    slow_url = server.add_random_file("slow.bin", 40 * KIB, seed=2)
    server.inject("slow.bin", Fault.stall_after(10 * KIB, 30))
    job = manager.create_job("partial")
    job.add_file(done_url, dest / "done.bin")
    job.add_file(slow_url, dest / "slow.bin")
    job.resume()
    wait_until(lambda: job.files[0].transferred and job.files[1].progress.bytes_transferred > 0)
    assert job.state.name == "TRANSFERRING"
    assert job.complete() == BG_S_PARTIAL_COMPLETE
    assert job.state is JobState.ACKNOWLEDGED
    assert visible_files(dest) == ["done.bin"]
    assert temp_files(dest) == []
    assert (dest / "done.bin").read_bytes() == server.path("done.bin").read_bytes()


def test_cancel_removes_every_temp_file(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """cancel() deletes finished and partial temporary files and creates no destination."""
    a = server.add_random_file("a.bin", 30 * KIB, seed=1)
    b = server.add_random_file("b.bin", 30 * KIB, seed=2)
    server.inject("b.bin", Fault.stall_after(5 * KIB, 30))
    job = manager.create_job("cancel me")
    job.add_file_set([(a, dest / "a.bin"), (b, dest / "b.bin")])
    job.resume()
    # one finished and one partial temp file: the files overlap, so wait for both states
    wait_until(lambda: job.files[0].transferred and job.files[1].progress.bytes_transferred > 0)
    assert len(temp_files(dest)) == 2
    assert job.cancel() == S_OK
    assert job.state is JobState.CANCELLED
    assert os.listdir(dest) == []


def test_failed_rename_keeps_job_transferred(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """complete() that cannot rename one file: BitsError (LOCAL_FILE), the job stays
    TRANSFERRED, files already renamed stay; a second complete() after the fix succeeds."""
    a = server.add_random_file("a.bin", 10 * KIB, seed=1)
    b = server.add_random_file("b.bin", 10 * KIB, seed=2)
    job = manager.create_job("rename")
    job.add_file_set([(a, dest / "a.bin"), (b, dest / "b.bin")])
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    (dest / "b.bin").mkdir()
    (dest / "b.bin" / "blocker").write_text("x")  # a non-empty folder cannot be replaced
    with pytest.raises(bitsnb.BitsError) as info:
        job.complete()
    assert info.value.context is ErrorContext.LOCAL_FILE
    assert "b.bin" in str(info.value)
    assert job.state.name == "TRANSFERRED"
    done = {Path(f.local_name).name: f.progress.completed for f in job.files}
    assert done == {"a.bin": True, "b.bin": False}
    assert (dest / "a.bin").read_bytes() == server.path("a.bin").read_bytes()
    shutil.rmtree(dest / "b.bin")
    assert job.complete() == S_OK
    assert job.state is JobState.ACKNOWLEDGED
    assert (dest / "b.bin").read_bytes() == server.path("b.bin").read_bytes()
    assert temp_files(dest) == []


def test_file_added_while_running_is_picked_up(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """add_file while the job transfers: the new file is fetched too, then TRANSFERRED."""
    first = server.add_random_file("first.bin", 10 * KIB, seed=1)
    server.inject("first.bin", Fault.stall(0.3))
    job = manager.create_job("grow")
    job.add_file(first, dest / "first.bin")
    job.resume()
    wait_state(job, JobState.CONNECTING)
    job.add_file(server.add_random_file("second.bin", 10 * KIB, seed=2), dest / "second.bin")
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert job.progress.files_transferred == 2
    assert job.complete() == S_OK
    for n in ("first.bin", "second.bin"):
        assert (dest / n).read_bytes() == server.path(n).read_bytes()


def test_cancel_transferred_job_deletes_finished_files(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A TRANSFERRED job that is cancelled leaves nothing behind (spec §1.3 Cancel)."""
    url = server.add_random_file("t.bin", 10 * KIB)
    job = manager.create_job("t")
    job.add_file(url, dest / "t.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert job.cancel() == S_OK
    assert os.listdir(dest) == []


# -- scheduling ----------------------------------------------------------------------------------
@pytest.fixture
def one_slot(store: Path, policy: bitsnb.Policy) -> Any:
    """A manager that transfers one job at a time, one file at a time."""
    policy.max_active_jobs = 1
    policy.files_in_flight = 1
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        yield mgr


def hold_slot(mgr: bitsnb.Manager, server: FileServer, dest: Path) -> bitsnb.Job:
    """A job that occupies a transfer slot (its server stalls) until it is cancelled."""
    url = server.add_random_file("blocker.bin", KIB)
    server.inject("blocker.bin", Fault.stall(30))
    blocker = mgr.create_job("blocker", priority=JobPriority.HIGH)
    blocker.add_file(url, dest / "blocker.bin")
    blocker.resume()
    wait_state(blocker, JobState.CONNECTING)
    return blocker


def test_foreground_before_low(one_slot: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """With the one slot taken, a FOREGROUND job queued after LOW, NORMAL and HIGH jobs starts
    at once (it takes no slot); the background jobs follow by priority once the slot is free."""
    blocker = hold_slot(one_slot, server, dest)
    jobs = []
    for prio in (JobPriority.LOW, JobPriority.NORMAL, JobPriority.HIGH, JobPriority.FOREGROUND):
        name = f"{prio.name.lower()}.bin"
        job = one_slot.create_job(prio.name, priority=prio)
        job.add_file(server.add_random_file(name, 8 * KIB, seed=int(prio)), dest / name)
        job.resume()
        jobs.append(job)
    assert jobs[-1].wait(timeout=15) is JobState.TRANSFERRED  # while the blocker holds the slot
    assert blocker.state is JobState.CONNECTING
    assert all(j.state is JobState.QUEUED for j in jobs[:-1])
    blocker.cancel()
    for job in jobs:
        assert job.wait(timeout=15) is JobState.TRANSFERRED
    order = [p for p in get_paths(server) if p != "blocker.bin"]
    assert order == ["foreground.bin", "high.bin", "normal.bin", "low.bin"]


def test_priority_change_reorders_queue(
    one_slot: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Raising a queued job's priority moves it ahead."""
    blocker = hold_slot(one_slot, server, dest)
    first = one_slot.create_job("first", priority=JobPriority.LOW)
    second = one_slot.create_job("second", priority=JobPriority.LOW)
    first.add_file(server.add_random_file("first.bin", KIB), dest / "first.bin")
    second.add_file(server.add_random_file("second.bin", KIB), dest / "second.bin")
    first.resume()
    second.resume()
    second.priority = JobPriority.HIGH
    assert second.priority is JobPriority.HIGH
    blocker.cancel()
    assert first.wait(timeout=15) is JobState.TRANSFERRED
    assert second.wait(timeout=15) is JobState.TRANSFERRED
    assert [p for p in get_paths(server) if p != "blocker.bin"] == ["second.bin", "first.bin"]


def test_foreground_runs_beside_the_job_holding_the_slot(
    one_slot: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A FOREGROUND job does not wait for the LOW job holding the only slot, nor pre-empt it:
    it runs beside it (FOREGROUND takes no slot)."""
    low = one_slot.create_job("low", priority=JobPriority.LOW)
    names = [f"low{i}.bin" for i in range(3)]
    for i, n in enumerate(names):
        server.inject(n, Fault.stall(0.3))
        low.add_file(server.add_random_file(n, 4 * KIB, seed=i), dest / n)
    rec = Recorder(one_slot)
    low.resume()
    wait_state(low, JobState.CONNECTING, JobState.TRANSFERRING)
    fg = one_slot.create_job("fg", priority=JobPriority.FOREGROUND)
    fg.add_file(server.add_random_file("fg.bin", 4 * KIB, seed=9), dest / "fg.bin")
    fg.resume()
    assert fg.wait(timeout=10) is JobState.TRANSFERRED
    assert low.wait(timeout=10) is JobState.TRANSFERRED
    paths = get_paths(server)
    assert paths.index("fg.bin") < paths.index("low1.bin")  # fg ran before low had finished
    low_states = rec.states(low.id)
    assert JobState.QUEUED not in low_states[1:]  # low kept its slot all along
    low_data = sum(len(server.path(n).read_bytes()) for n in names)
    assert server.bytes_sent("low*.bin") >= low_data
    low.complete()
    for n in names:
        assert (dest / n).read_bytes() == server.path(n).read_bytes()


def test_preempted_job_does_not_refetch_finished_bytes(
    one_slot: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Pre-emption right after a file's last byte arrived must not download that file again."""
    low = one_slot.create_job("low", priority=JobPriority.LOW)
    names = [f"low{i}.bin" for i in range(2)]
    for i, n in enumerate(names):
        server.inject(n, Fault.stall(0.3))
        low.add_file(server.add_random_file(n, 4 * KIB, seed=i), dest / n)
    low.resume()
    wait_state(low, JobState.CONNECTING, JobState.TRANSFERRING)
    fg = one_slot.create_job("high", priority=JobPriority.HIGH)  # pre-empts LOW
    fg.add_file(server.add_random_file("fg.bin", 4 * KIB, seed=9), dest / "fg.bin")
    fg.resume()
    assert fg.wait(timeout=10) is JobState.TRANSFERRED
    assert low.wait(timeout=10) is JobState.TRANSFERRED
    full = [r.path for r in server.requests if r.path == "low0.bin" and r.range is None]
    assert full == ["low0.bin"]
    assert server.bytes_sent("low0.bin") == 4 * KIB


def test_round_robin_same_priority(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """With a short time slice and one slot, same-priority jobs take turns: each job's first
    file is fetched before any job's last file."""
    policy.max_active_jobs = 1
    policy.files_in_flight = 1
    policy.time_slice = 0.05
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        jobs = []
        for j in range(3):
            job = mgr.create_job(f"rr{j}")
            for i in range(3):
                name = f"rr{j}-{i}.bin"
                server.inject(name, Fault.stall(0.1))  # each file takes longer than a slice
                job.add_file(server.add_random_file(name, 2 * KIB, seed=10 * j + i), dest / name)
            jobs.append(job)
        for job in jobs:
            job.resume()
        for job in jobs:
            assert job.wait(timeout=10) is JobState.TRANSFERRED
        paths = get_paths(server)
        firsts = [paths.index(f"rr{j}-0.bin") for j in range(3)]
        lasts = [paths.index(f"rr{j}-2.bin") for j in range(3)]
        assert max(firsts) < min(lasts)
        assert len(paths) == 9


def test_max_active_jobs_respected(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """No more than max_active_jobs jobs are CONNECTING/TRANSFERRING at once, and the limit is used."""
    policy.max_active_jobs = 2
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        lock = threading.Lock()
        running: set[Any] = set()
        peak = [0]

        def listener(event: bitsnb.JobEvent) -> None:
            with lock:
                if event.state in (JobState.CONNECTING, JobState.TRANSFERRING):
                    running.add(event.job_id)
                else:
                    running.discard(event.job_id)
                peak[0] = max(peak[0], len(running))

        mgr.subscribe(listener)
        jobs = []
        for j in range(5):
            name = f"c{j}.bin"
            server.inject(name, Fault.stall(0.2))
            job = mgr.create_job(name)
            job.add_file(server.add_random_file(name, 4 * KIB, seed=j), dest / name)
            jobs.append(job)
        for job in jobs:
            job.resume()
        for job in jobs:
            assert job.wait(timeout=30) is JobState.TRANSFERRED
        assert peak[0] == 2


# -- notifications -------------------------------------------------------------------------------
class SyncCallbacks:
    """A notify interface with plain methods (run in a worker thread by the sync facade)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.transferred = threading.Event()
        self.errored = threading.Event()
        self.complete_result: list[int] = []
        self.complete_in_callback = False

    def job_transferred(self, job: bitsnb.Job) -> None:
        self.calls.append(("job_transferred", job.state))
        if self.complete_in_callback:
            self.complete_result.append(job.complete())
        self.transferred.set()

    def job_error(self, job: bitsnb.Job, error: bitsnb.ErrorInfo) -> None:
        self.calls.append(("job_error", error))
        self.errored.set()

    def file_transferred(self, job: bitsnb.Job, file: bitsnb.FileInfo) -> None:
        self.calls.append(("file_transferred", Path(file.local_name).name))

    def job_modification(self, job: bitsnb.Job) -> None:
        self.calls.append(("job_modification", None))


class AsyncCallbacks:
    """The same interface written as coroutines."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.transferred = threading.Event()
        self.errored = threading.Event()

    async def job_transferred(self, job: Any) -> None:
        await asyncio.sleep(0)
        self.calls.append(("job_transferred", job.state))
        self.transferred.set()

    async def job_error(self, job: Any, error: bitsnb.ErrorInfo) -> None:
        self.calls.append(("job_error", error))
        self.errored.set()

    async def file_transferred(self, job: Any, file: bitsnb.FileInfo) -> None:
        self.calls.append(("file_transferred", Path(file.local_name).name))

    async def job_modification(self, job: Any) -> None:
        self.calls.append(("job_modification", None))


ALL_FLAGS = (
    NotifyFlags.JOB_TRANSFERRED
    | NotifyFlags.JOB_ERROR
    | NotifyFlags.FILE_TRANSFERRED
    | NotifyFlags.JOB_MODIFICATION
)


@pytest.mark.parametrize("kind", [SyncCallbacks, AsyncCallbacks], ids=["sync", "async"])
def test_notify_interface_transferred(
    kind: type[Any], manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """job_transferred, file_transferred (per file) and job_modification are delivered."""
    cb = kind()
    job = manager.create_job("notify")
    job.set_notify_interface(cb)
    job.notify_flags = ALL_FLAGS  # a property change: job_modification
    assert job.notify_flags == ALL_FLAGS
    for n in ("n1.bin", "n2.bin"):
        job.add_file(server.add_random_file(n, 8 * KIB), dest / n)
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert cb.transferred.wait(10)
    wait_until(lambda: ("file_transferred", "n2.bin") in cb.calls)
    names = [c[0] for c in cb.calls]
    assert ("file_transferred", "n1.bin") in cb.calls
    assert ("job_transferred", JobState.TRANSFERRED) in cb.calls
    assert "job_modification" in names
    assert "job_error" not in names


@pytest.mark.parametrize("kind", [SyncCallbacks, AsyncCallbacks], ids=["sync", "async"])
def test_notify_interface_error(
    kind: type[Any], manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """job_error receives the ErrorInfo of a fatal error."""
    cb = kind()
    job = manager.create_job("notify error")
    job.set_notify_interface(cb)
    job.add_file(server.url("missing.bin"), dest / "missing.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    assert cb.errored.wait(10)
    (error,) = [c[1] for c in cb.calls if c[0] == "job_error"]
    assert error.code == HTTP_404
    assert error.context is ErrorContext.REMOTE_FILE


class Direct:
    """Plain methods set on the async job: they run on the loop, in event order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def job_transferred(self, job: Any) -> None:
        self.calls.append("job_transferred")

    def job_error(self, job: Any, error: Any) -> None:
        self.calls.append("job_error")

    def file_transferred(self, job: Any, file: Any) -> None:
        self.calls.append("file_transferred")


def test_notify_flags_filter(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """Only the events selected by notify_flags are delivered; DISABLE silences everything."""
    for flags, expect in (
        (NotifyFlags.JOB_ERROR, set()),
        (NotifyFlags.JOB_TRANSFERRED | NotifyFlags.DISABLE, set()),
        (NotifyFlags.FILE_TRANSFERRED, {"file_transferred"}),
        (NotifyFlags.JOB_TRANSFERRED, {"job_transferred"}),
    ):
        direct = Direct()
        job = manager.create_job(f"flags {int(flags)}")
        job.notify_flags = flags
        on_loop(manager, job.async_job.set_notify_interface(direct))
        name = f"flags{int(flags)}.bin"
        job.add_file(server.add_random_file(name, KIB), dest / name)
        job.resume()
        assert job.wait(timeout=15) is JobState.TRANSFERRED
        on_loop(manager, settle())  # deliveries were scheduled before the state change we saw
        assert set(direct.calls) == expect


async def settle() -> None:
    """A few loop turns: tasks scheduled earlier on the loop run first."""
    for _ in range(5):
        await asyncio.sleep(0)


def on_loop(mgr: bitsnb.Manager, coro: Any) -> Any:
    """Run *coro* on the manager's loop thread and wait (bounded) for its result."""
    return asyncio.run_coroutine_threadsafe(coro, mgr.loop).result(15)


def test_notify_registered_after_transfer_is_delivered(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """As in BITS, an event that already happened is delivered on registration."""
    job = manager.create_job("late")
    job.add_file(server.add_random_file("late.bin", KIB), dest / "late.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    cb = SyncCallbacks()
    job.set_notify_interface(cb)
    assert cb.transferred.wait(10)


def test_sync_callback_may_complete_job(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A plain job_transferred callback may call job.complete() (it runs in a worker thread)."""
    cb = SyncCallbacks()
    cb.complete_in_callback = True
    job = manager.create_job("complete in callback")
    job.set_notify_interface(cb)
    job.add_file(server.add_random_file("cb.bin", 16 * KIB), dest / "cb.bin")
    job.resume()
    assert cb.transferred.wait(15)
    assert cb.complete_result == [S_OK]
    assert job.state is JobState.ACKNOWLEDGED
    assert (dest / "cb.bin").read_bytes() == server.path("cb.bin").read_bytes()


def test_notify_command_line(
    manager: bitsnb.Manager, server: FileServer, dest: Path, tmp_path: Path
) -> None:
    """The notify command line runs on TRANSFERRED; parameters start with the program name."""
    marker = tmp_path / "marker.txt"
    job = manager.create_job("cmd")
    job.set_notify_cmd_line("/bin/sh", f"sh -c 'echo done > {marker}'")
    assert job.notify_cmd_line == ("/bin/sh", f"sh -c 'echo done > {marker}'")
    job.add_file(server.add_random_file("cmd.bin", KIB), dest / "cmd.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    wait_until(lambda: marker.exists() and marker.read_text() == "done\n")


def test_notify_command_line_on_error(
    manager: bitsnb.Manager, server: FileServer, dest: Path, tmp_path: Path
) -> None:
    """The command line also runs when the job enters ERROR."""
    marker = tmp_path / "err.txt"
    job = manager.create_job("cmd error")
    job.set_notify_cmd_line("/bin/sh", f"sh -c 'echo failed > {marker}'")
    job.add_file(server.url("nope.bin"), dest / "nope.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    wait_until(lambda: marker.exists() and marker.read_text() == "failed\n")


# -- headers, credentials -----------------------------------------------------------------------
def test_custom_headers_sent(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """Custom headers go out on every request of the job."""
    job = manager.create_job("headers")
    job.set_custom_headers("X-Bits-Test: one\r\nX-Other: two")
    for n in ("h1.bin", "h2.bin"):
        job.add_file(server.add_random_file(n, KIB), dest / n)
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    reqs = [r for r in server.requests if r.method == "GET"]
    assert len(reqs) == 2
    for r in reqs:
        assert r.headers.get("X-Bits-Test") == "one"
        assert r.headers.get("X-Other") == "two"
    job.set_custom_headers({"X-Dict": "3"})
    assert job.custom_headers == "X-Dict: 3"


def _db_bytes(store: Path) -> bytes:
    return b"".join(p.read_bytes() for p in store.parent.glob(store.name + "*"))


def test_basic_credentials_sent_not_stored(
    manager: bitsnb.Manager, server: FileServer, dest: Path, store: Path
) -> None:
    """Basic credentials reach the server but never the SQLite file or the job's repr."""
    password = "s3cr3t-PASSWORD-4711"
    job = manager.create_job("auth")
    job.set_credentials(bitsnb.AuthTarget.SERVER, bitsnb.AuthScheme.BASIC, "alice", password)
    job.set_custom_headers({"Cookie": "session=cookie-secret-99", "X-Plain": "visible"})
    job.add_file(server.add_random_file("auth.bin", 64 * KIB), dest / "auth.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    (req,) = [r for r in server.requests if r.method == "GET"]
    expected = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    assert req.headers.get("Authorization") == expected
    assert req.headers.get("Cookie") == "session=cookie-secret-99"
    assert req.headers.get("X-Plain") == "visible"
    job.description = "force another write"
    raw = _db_bytes(store)
    assert password.encode() not in raw
    assert base64.b64encode(f"alice:{password}".encode()) not in raw
    assert b"cookie-secret-99" not in raw
    assert b"visible" in raw  # the public header is kept
    assert password not in repr(job)
    assert "cookie-secret-99" not in repr(job) and "cookie-secret-99" not in (
        job.custom_headers or ""
    )


# -- progress, times, errors ---------------------------------------------------------------------
def test_progress_and_times(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """Progress totals are unknown (None) until sizes are known, then exact; times are UTC."""
    sizes = {"p1.bin": 10 * KIB, "p2.bin": 20 * KIB}
    job = manager.create_job("progress")
    start = dt.datetime.now(dt.UTC)
    for n, s in sizes.items():
        job.add_file(server.add_random_file(n, s), dest / n)
    p = job.progress
    assert p.bytes_total is None and p.bytes_transferred == 0
    assert p.files_total == 2 and p.files_transferred == 0
    assert p.percent is None
    t = job.times
    assert t.creation.tzinfo is not None and t.creation.utcoffset() == dt.timedelta(0)
    assert t.transfer_completion is None
    assert t.creation <= t.modification
    assert abs((t.creation - start).total_seconds()) < 60
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    p = job.progress
    assert p.bytes_total == p.bytes_transferred == sum(sizes.values())
    assert p.files_transferred == p.files_total == 2
    assert p.percent == 100.0
    t2 = job.times
    assert t2.transfer_completion is not None
    assert t.creation == t2.creation <= t2.transfer_completion <= t2.modification
    for f in job.files:
        assert (
            f.progress.bytes_total == f.progress.bytes_transferred == sizes[Path(f.local_name).name]
        )


def test_error_count_increments_and_retry(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Two 503 answers: TRANSIENT_ERROR twice (error_count 2), then TRANSFERRED."""
    url = server.add_random_file("flaky.bin", 8 * KIB)
    server.inject("flaky.bin", Fault.status(503, times=2))
    job = manager.create_job("flaky")
    job.minimum_retry_delay = 0.05
    rec = Recorder(manager)
    job.add_file(url, dest / "flaky.bin")
    assert job.error_count == 0
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert job.error_count == 2
    assert rec.states(job.id).count(JobState.TRANSIENT_ERROR) == 2
    assert job.error is None  # no error outside ERROR/TRANSIENT_ERROR
    with pytest.raises(bitsnb.BitsError) as info:
        job.get_error()
    assert info.value.code == 0x8020000F


def test_http_404_is_fatal(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """404 → ERROR with 0x80190194, context REMOTE_FILE and the failing file."""
    job = manager.create_job("404")
    job.add_file(server.url("absent.bin"), dest / "absent.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    err = job.error
    assert err is not None
    assert err.code == HTTP_404
    assert err.context is ErrorContext.REMOTE_FILE
    assert err.file is not None and err.file.remote_name == server.url("absent.bin")
    assert err.name == "BG_E_HTTP_ERROR_404"
    assert "404" in err.description or "not found" in err.description.lower()
    assert err.context_description
    assert job.error_count == 1
    assert job.get_error() == err


def test_failing_file_among_many(
    sequential: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Files one after the other (BITS's order): a missing file stops the job (ERROR names that
    file, later files are not fetched); complete() keeps the files before it."""
    manager = sequential
    names = ["ok0.bin", "gone.bin", "ok1.bin"]
    job = manager.create_job("one bad apple")
    for i, n in enumerate(names):
        url = server.url(n) if n == "gone.bin" else server.add_random_file(n, 8 * KIB, seed=i)
        job.add_file(url, dest / n)
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    err = job.error
    assert err is not None and err.code == HTTP_404
    assert err.file is not None and err.file.index == 1
    assert err.file.remote_name == server.url("gone.bin")
    finished = {Path(f.local_name).name for f in job.files if f.transferred}
    assert finished == {"ok0.bin"}
    assert get_paths(server) == ["ok0.bin", "gone.bin"]
    assert job.complete() == BG_S_PARTIAL_COMPLETE
    assert visible_files(dest) == sorted(finished)
    assert temp_files(dest) == []
    for n in finished:
        assert (dest / n).read_bytes() == server.path(n).read_bytes()


def test_503_retry_after_then_transferred(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """503 with Retry-After: TRANSIENT_ERROR, retried no sooner than Retry-After, TRANSFERRED."""
    url = server.add_random_file("busy.bin", 8 * KIB)
    server.inject("busy.bin", Fault.status(503, retry_after=1))
    job = manager.create_job("busy")
    job.minimum_retry_delay = 0.05
    rec = Recorder(manager)
    job.add_file(url, dest / "busy.bin")
    job.resume()
    wait_state(
        job, JobState.TRANSIENT_ERROR, JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRED
    )
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    events = rec.state_events(job.id)
    te = next(e for e in events if e.state is JobState.TRANSIENT_ERROR)
    after = next(e for e in events if e.at > te.at and e.state is JobState.QUEUED)
    assert after.at - te.at >= 0.9
    assert [r.status for r in server.requests] == [503, 200]


TRANSIENT_STATUS = [408, 409, 425, 429, 500, 502, 503, 504, 507]
FATAL_STATUS = [400, 401, 403, 404, 405, 410, 416, 451, 501, 505]


@pytest.mark.parametrize("status", TRANSIENT_STATUS + FATAL_STATUS)
def test_http_status_classification(
    status: int, manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Each status gives 0x80190000 + status in REMOTE_FILE: TRANSIENT_ERROR for 408, 409,
    425, 429 and 5xx except 501/505; ERROR for the rest (spec decisions table)."""
    name = f"s{status}.bin"
    url = server.add_random_file(name, KIB)
    server.inject(name, Fault.status(status))
    job = manager.create_job(name)
    job.minimum_retry_delay = 60
    job.add_file(url, dest / name)
    job.resume()
    want = JobState.TRANSIENT_ERROR if status in TRANSIENT_STATUS else JobState.ERROR
    assert wait_state(job, JobState.TRANSIENT_ERROR, JobState.ERROR) is want
    err = job.error
    assert err is not None
    assert err.code == 0x80190000 + status
    assert err.context is ErrorContext.REMOTE_FILE
    assert err.name == f"BG_E_HTTP_ERROR_{status}"
    assert job.error_count == 1


def test_503_transient_error_info(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """While in TRANSIENT_ERROR the error says 0x801901F7 (HTTP 503)."""
    url = server.add_random_file("te.bin", KIB)
    server.inject("te.bin", Fault.status(503))
    job = manager.create_job("te")
    job.minimum_retry_delay = 60
    job.add_file(url, dest / "te.bin")
    job.resume()
    wait_state(job, JobState.TRANSIENT_ERROR)
    err = job.error
    assert err is not None and err.code == HTTP_503 and err.context is ErrorContext.REMOTE_FILE


def test_no_progress_timeout_turns_transient_into_error(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Repeated 503s without progress: ERROR once no_progress_timeout has passed."""
    url = server.add_random_file("down.bin", KIB)
    server.inject("down.bin", Fault.status(503, times=-1))
    job = manager.create_job("down")
    job.minimum_retry_delay = 0.05
    job.no_progress_timeout = 0.5
    job.add_file(url, dest / "down.bin")
    started = time.monotonic()
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    assert time.monotonic() - started >= 0.45
    assert job.error is not None and job.error.code == HTTP_503
    assert job.error_count >= 2


def test_no_progress_timeout_zero_fails_at_once(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """no_progress_timeout = 0: the first transient error is fatal."""
    url = server.add_random_file("once.bin", KIB)
    server.inject("once.bin", Fault.status(503, times=-1))
    job = manager.create_job("once")
    job.no_progress_timeout = 0
    job.minimum_retry_delay = 0.05
    rec = Recorder(manager)
    job.add_file(url, dest / "once.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    assert JobState.TRANSIENT_ERROR not in rec.states(job.id)
    assert job.error_count == 1
    assert len(server.requests) == 1


def test_progress_resets_no_progress_timer(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Failures that each made progress never add up to no_progress_timeout: the job finishes
    although the failures together last longer than the timeout."""
    url = server.add_random_file("steps.bin", 1024 * KIB, seed=6)
    server.inject("steps.bin", Fault.drop_after(100 * KIB, times=6))
    job = manager.create_job("steps")
    job.minimum_retry_delay = 0.2
    job.no_progress_timeout = 0.5
    job.add_file(url, dest / "steps.bin")
    started = time.monotonic()
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    assert time.monotonic() - started > 0.5 * 2  # longer than the timeout, twice over
    assert job.error_count == 6
    job.complete()
    assert (dest / "steps.bin").read_bytes() == server.path("steps.bin").read_bytes()


def test_retry_delay_longer_than_no_progress_timeout(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """minimum_retry_delay > no_progress_timeout: the first transient error is fatal."""
    url = server.add_random_file("never.bin", KIB)
    server.inject("never.bin", Fault.status(503))
    job = manager.create_job("never")
    job.minimum_retry_delay = 10
    job.no_progress_timeout = 5
    job.add_file(url, dest / "never.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    assert job.error is not None and job.error.code == HTTP_503


def test_maximum_download_time(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """A transfer running longer than maximum_download_time: ERROR BG_E_MAXDOWNLOAD_TIMEOUT."""
    url = server.add_random_file("slow.bin", KIB)
    server.inject("slow.bin", Fault.stall(30))
    job = manager.create_job("slow")
    job.maximum_download_time = 0.3
    assert job.maximum_download_time == pytest.approx(0.3)
    job.add_file(url, dest / "slow.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    assert job.error is not None
    assert job.error.code == BG_E_MAXDOWNLOAD_TIMEOUT
    assert job.error.name == "BG_E_MAXDOWNLOAD_TIMEOUT"


def test_destination_folder_removed(
    manager: bitsnb.Manager, server: FileServer, tmp_path: Path
) -> None:
    """The folder disappears after add_file: ERROR, LOCAL_FILE, ERROR_PATH_NOT_FOUND."""
    folder = tmp_path / "gone"
    folder.mkdir()
    job = manager.create_job("gone")
    job.add_file(server.add_random_file("g.bin", KIB), folder / "g.bin")
    shutil.rmtree(folder)
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    err = job.error
    assert err is not None
    assert err.code == ERROR_PATH_NOT_FOUND
    assert err.context is ErrorContext.LOCAL_FILE
    assert err.file is not None and err.file.local_name == str(folder / "g.bin")


def test_missing_content_length(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """No Content-Length: ERROR BG_E_MISSING_FILE_SIZE ..."""
    url = server.add_random_file("chunked.bin", 100 * KIB)
    server.inject("chunked.bin", Fault.no_length(times=-1))
    job = manager.create_job("chunked")
    job.add_file(url, dest / "chunked.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    assert job.error is not None and job.error.code == BG_E_MISSING_FILE_SIZE


def test_missing_content_length_dynamic(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """... unless dynamic_content is set: then the file downloads and its size is learnt."""
    url = server.add_random_file("chunked.bin", 100 * KIB + 3)
    server.inject("chunked.bin", Fault.no_length(times=-1))
    job = manager.create_job("chunked dyn")
    job.dynamic_content = True
    job.add_file(url, dest / "chunked.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert job.progress.bytes_total == 100 * KIB + 3
    job.complete()
    assert (dest / "chunked.bin").read_bytes() == server.path("chunked.bin").read_bytes()


# -- ranges, high performance, re-pointing -------------------------------------------------------
def test_add_file_with_ranges(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """Only the given ranges are fetched, and written back to back."""
    url = server.add_random_file("ranged.bin", 200 * KIB, seed=5)
    data = server.path("ranged.bin").read_bytes()
    ranges = [(0, 100), (50 * KIB, 4 * KIB), (150 * KIB, None)]
    job = manager.create_job("ranges")
    job.add_file_with_ranges(url, dest / "ranged.bin", ranges)
    assert [(r.offset, r.length) for r in job.files[0].ranges] == ranges
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert [r.range for r in server.requests] == [
        "bytes=0-99",
        f"bytes={50 * KIB}-{54 * KIB - 1}",
        f"bytes={150 * KIB}-",
    ]
    expected = data[:100] + data[50 * KIB : 54 * KIB] + data[150 * KIB :]
    assert job.progress.bytes_total == len(expected)
    assert job.complete() == S_OK
    assert (dest / "ranged.bin").read_bytes() == expected


def test_high_performance_writes_destination(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """high_performance: no temporary file; bytes go straight into the destination."""
    url = server.add_random_file("hp.bin", 300 * KIB, seed=8)
    job = manager.create_job("hp")
    job.high_performance = True
    job.add_file(url, dest / "hp.bin")
    assert job.files[0].temporary_name == str(dest / "hp.bin")
    with pytest.raises(bitsnb.BitsError) as info:
        job.high_performance = False
    assert info.value.code == 0x80200061
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert temp_files(dest) == []
    assert (dest / "hp.bin").read_bytes() == server.path("hp.bin").read_bytes()
    assert job.complete() == S_OK
    assert (dest / "hp.bin").read_bytes() == server.path("hp.bin").read_bytes()


def test_set_remote_name_repoints_file(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A file that failed (404) is re-pointed with set_remote_name and the job resumed."""
    good = server.add_random_file("right.bin", 5 * KIB, seed=4)
    job = manager.create_job("repoint")
    job.add_file(server.url("wrong.bin"), dest / "right.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.ERROR
    job.set_remote_name(0, good)
    assert job.files[0].remote_name == good
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    job.complete()
    assert (dest / "right.bin").read_bytes() == server.path("right.bin").read_bytes()


def test_replace_remote_prefix(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """replace_remote_prefix re-points every matching file; False when nothing matched."""
    for n in ("a.bin", "b.bin"):
        server.add_random_file(f"new/{n}", 3 * KIB, seed=ord(n[0]))
    job = manager.create_job("prefix")
    job.add_file_set([(server.url(f"old/{n}"), dest / n) for n in ("a.bin", "b.bin")])
    assert job.replace_remote_prefix(server.url("nothing/"), server.url("new/")) is False
    assert job.replace_remote_prefix(server.url("old/"), server.url("new/")) is True
    assert [f.remote_name for f in job.files] == [server.url("new/a.bin"), server.url("new/b.bin")]
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert sorted(get_paths(server)) == ["new/a.bin", "new/b.bin"]  # files overlap: any order
    job.complete()
    for n in ("a.bin", "b.bin"):
        assert (dest / n).read_bytes() == server.path(f"new/{n}").read_bytes()


def test_foreground_does_not_wait_behind_four_busy_background_jobs(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Four LOW jobs on one slow host fill the background slots and the host's connections; a
    FOREGROUND job on that host starts and finishes while all four are still transferring."""
    lows = []
    for i in range(4):
        name = f"slow{i}.bin"
        url = server.add_random_file(name, 2_000_000, seed=i)
        server.inject(name, Fault.throttle(250_000))  # ~8 s each
        job = manager.create_job(name, priority=JobPriority.LOW)
        job.add_file(url, dest / name)
        job.resume()
        lows.append(job)
    for job in lows:
        wait_state(job, JobState.TRANSFERRING)
    fg = manager.create_job("fg", priority=JobPriority.FOREGROUND)
    fg.add_file(server.add_random_file("fg.bin", 64 * KIB, seed=99), dest / "fg.bin")
    fg.resume()
    assert fg.wait(timeout=30) is JobState.TRANSFERRED
    assert all(j.state is JobState.TRANSFERRING for j in lows)
    for job in lows:
        job.cancel()
