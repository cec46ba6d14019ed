"""The queue survives its manager: a new Manager sees every job, active jobs continue, a killed
process's transfer is taken over and resumed, and two managers share one store safely."""

from __future__ import annotations

import select
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from _support.helpers import store_state, temp_files, wait_state, wait_until

import bitsnb
from bitsnb import JobPriority, JobState, NotifyFlags, ProxyUsage
from bitsnb.testing import Fault, FileServer

KIB = 1024
MIB = 1024 * KIB
CHILD = Path(__file__).parent / "_support" / "child_transfer.py"


def integrity(store: Path) -> str:
    """``PRAGMA integrity_check`` of the store, read with plain sqlite3."""
    db = sqlite3.connect(store)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def persisted_view(j: bitsnb.Job) -> tuple[object, ...]:
    """Everything about a job that a new Manager on the same store must see again."""
    return (
        j.display_name,
        j.description,
        j.type,
        j.priority,
        j.state,
        j.owner,
        j.files,
        j.progress,
        j.times,
        j.error,
        j.error_count,
        j.minimum_retry_delay,
        j.no_progress_timeout,
        j.maximum_download_time,
        j.notify_flags,
        j.notify_cmd_line,
        j.proxy_settings,
        j.dynamic_content,
        j.high_performance,
    )


def test_new_manager_sees_everything(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path, tmp_path: Path
) -> None:
    """Jobs, settings, files, progress, errors and times come back in a new Manager."""
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        configured = mgr.create_job("configured", priority=JobPriority.HIGH, description="d" * 50)
        configured.minimum_retry_delay = 42
        configured.no_progress_timeout = 4242
        configured.maximum_download_time = 424242
        configured.notify_flags = NotifyFlags.JOB_ERROR | NotifyFlags.FILE_TRANSFERRED
        configured.set_notify_cmd_line("/bin/true", "true --flag")
        configured.set_custom_headers("X-Kept: yes\r\nCookie: gone")
        configured.set_proxy_settings(ProxyUsage.OVERRIDE, "proxy.invalid:3128", "<local>")
        configured.dynamic_content = True
        configured.add_file_set(
            [(server.url(f"later/{i}.bin"), dest / f"later{i}.bin") for i in range(3)]
        )

        done = mgr.create_job("done", priority=JobPriority.LOW)
        done.add_file(server.add_random_file("done.bin", 70 * KIB, seed=1), dest / "done.bin")
        done.resume()
        assert done.wait(timeout=15) is JobState.TRANSFERRED

        failed = mgr.create_job("failed")
        failed.add_file(server.url("missing.bin"), dest / "missing.bin")
        failed.resume()
        assert failed.wait(timeout=15) is JobState.ERROR

        hp = mgr.create_job("hp")
        hp.high_performance = True
        hp.add_file_with_ranges(server.url("r.bin"), dest / "r.bin", [(10, 20), (100, None)])

        finished = mgr.create_job("finished")
        finished.add_file(server.add_random_file("fin.bin", KIB), dest / "fin.bin")
        finished.resume()
        assert finished.wait(timeout=15) is JobState.TRANSFERRED
        finished.complete()

        before = {j.id: persisted_view(j) for j in mgr.enum_jobs()}
        ids = [configured.id, done.id, failed.id, hp.id]
    assert integrity(store) == "ok"

    with bitsnb.Manager(store=store, policy=policy) as mgr2:
        jobs = list(mgr2.enum_jobs())
        assert [j.id for j in jobs] == ids  # creation order, the completed job is gone
        for j in jobs:
            assert persisted_view(j) == before[j.id], j.display_name
        again = mgr2.get_job(configured.id)
        assert again.custom_headers == "X-Kept: yes"  # the cookie lived in memory only
        assert again.minimum_retry_delay == 42
        assert mgr2.get_job(str(done.id)).progress.bytes_transferred == 70 * KIB
        err = mgr2.get_job(failed.id).error
        assert err is not None and err.code == 0x80190194
        with pytest.raises(bitsnb.BitsError) as info:
            mgr2.get_job(finished.id)
        assert info.value.code == 0x80200001
        history = mgr2.enum_jobs(include_finished=True)
        assert finished.id in {j.id for j in history}
        # the transferred job can still be completed by the new manager
        assert mgr2.get_job(done.id).complete() == 0
        assert (dest / "done.bin").read_bytes() == server.path("done.bin").read_bytes()
    assert integrity(store) == "ok"


def test_active_jobs_continue_in_next_manager(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A TRANSFERRING and a QUEUED job at close() continue by themselves in the next manager;
    the transferring one resumes with a Range request."""
    policy.max_active_jobs = 1
    url = server.add_random_file("long.bin", 6 * MIB, seed=2)
    server.inject("long.bin", Fault.stall_after(1 * MIB, 30))
    queued_url = server.add_random_file("queued.bin", 50 * KIB, seed=3)
    mgr = bitsnb.Manager(store=store, policy=policy)
    try:
        running = mgr.create_job("running")
        running.add_file(url, dest / "long.bin")
        running.resume()
        wait_until(lambda: running.progress.bytes_transferred >= 1 * MIB, message="1 MiB")
        waiting = mgr.create_job("waiting")
        waiting.add_file(queued_url, dest / "queued.bin")
        waiting.resume()
        assert waiting.state is JobState.QUEUED
        assert running.state is JobState.TRANSFERRING
    finally:
        mgr.close()
    assert store_state(store, running.id) is JobState.QUEUED
    assert store_state(store, waiting.id) is JobState.QUEUED

    with bitsnb.Manager(store=store, policy=policy) as mgr2:
        r2 = mgr2.get_job(running.id)
        w2 = mgr2.get_job(waiting.id)
        assert r2.wait(timeout=20) is JobState.TRANSFERRED
        assert w2.wait(timeout=20) is JobState.TRANSFERRED
        long_gets = [r for r in server.requests if r.path == "long.bin"]
        assert long_gets[-1].range == f"bytes={1 * MIB}-"
        r2.complete()
        w2.complete()
    assert (dest / "long.bin").read_bytes() == server.path("long.bin").read_bytes()
    assert (dest / "queued.bin").read_bytes() == server.path("queued.bin").read_bytes()
    assert integrity(store) == "ok"


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, waiting at most *timeout* seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"the child said nothing within {timeout} s")
    return proc.stdout.readline().strip()


def test_killed_process_job_is_taken_over_and_resumed(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A process transferring a job is SIGKILLed: a new Manager takes over the dead process's
    lease at once, resumes with a Range request and the file ends byte-exact."""
    size = 6 * MIB
    url = server.add_random_file("victim.bin", size, seed=4)
    server.inject("victim.bin", Fault.stall_after(2 * MIB, 60))
    local = dest / "victim.bin"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(store), url, str(local)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, 30)
        job_id = uuid.UUID(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)  # reaped: its pid is really gone
    assert store_state(store, job_id) in (JobState.CONNECTING, JobState.TRANSFERRING)
    (tmp,) = temp_files(dest)
    on_disk = (dest / tmp).stat().st_size
    assert on_disk > 0

    policy.lease_seconds = 60.0  # takeover must come from the dead pid, not an expired lease
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.get_job(job_id)
        assert job.wait(timeout=20) is JobState.TRANSFERRED
        reqs = [r for r in server.requests if r.path == "victim.bin"]
        assert len(reqs) == 2
        assert reqs[1].range == f"bytes={on_disk}-"
        assert reqs[1].status == 206
        assert server.bytes_sent("victim.bin") < size + 2 * MIB + 1
        assert job.complete() == 0
    assert local.read_bytes() == server.path("victim.bin").read_bytes()
    assert temp_files(dest) == []
    assert integrity(store) == "ok"


def test_two_managers_share_one_store(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Two managers on one store: every job is transferred by exactly one of them, both see
    every job finish, and a suspend() through one is seen by the other."""
    with (
        bitsnb.Manager(store=store, policy=policy) as a,
        bitsnb.Manager(store=store, policy=policy) as b,
    ):
        jobs = []
        for i in range(6):
            mgr = a if i % 2 == 0 else b
            name = f"shared{i}.bin"
            server.inject(name, Fault.stall(0.2))
            job = mgr.create_job(name)
            job.add_file(server.add_random_file(name, 200 * KIB, seed=i), dest / name)
            jobs.append(job)
        for job in jobs:
            job.resume()
        for job in jobs:
            assert job.wait(timeout=20) is JobState.TRANSFERRED
        # both managers see every job, TRANSFERRED
        want = {j.id: JobState.TRANSFERRED for j in jobs}
        for other in (a, b):

            def agrees(other: bitsnb.Manager = other) -> bool:
                return {j.id: j.state for j in other.enum_jobs()} == want

            wait_until(agrees, message="both managers agree")
        full = Counter(r.path for r in server.requests if r.method == "GET" and r.range is None)
        assert full == {f"shared{i}.bin": 1 for i in range(6)}

        # a state change through one manager reaches the other
        server.inject("held.bin", Fault.stall_after(64 * KIB, 30))
        held = a.create_job("held")
        held.add_file(server.add_random_file("held.bin", 1 * MIB, seed=9), dest / "held.bin")
        held.resume()
        wait_until(lambda: held.progress.bytes_transferred > 0, message="held bytes")
        wait_until(lambda: any(j.id == held.id for j in b.enum_jobs()), message="b sees held")
        b.get_job(held.id).suspend()
        wait_state(held, JobState.SUSPENDED)
        assert store_state(store, held.id) is JobState.SUSPENDED
        a_view = a.get_job(held.id)
        assert a_view.state is JobState.SUSPENDED
        # and back: resume through a, b sees it finish
        server.clear_faults()
        a_view.resume()
        b_held = b.get_job(held.id)
        wait_state(b_held, JobState.TRANSFERRED, timeout=20)
        for job in [*jobs, a_view]:
            job.complete()
    for i in range(6):
        name = f"shared{i}.bin"
        assert (dest / name).read_bytes() == server.path(name).read_bytes()
    assert (dest / "held.bin").read_bytes() == server.path("held.bin").read_bytes()
    assert integrity(store) == "ok"


def test_transient_error_retry_survives_restart(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A job waiting to retry (TRANSIENT_ERROR) when its manager closes is retried by the next
    manager once its retry time has come."""
    url = server.add_random_file("later.bin", 20 * KIB, seed=5)
    server.inject("later.bin", Fault.status(503))
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("retry later")
        job.minimum_retry_delay = 0.5
        job.add_file(url, dest / "later.bin")
        job.resume()
        wait_state(job, JobState.TRANSIENT_ERROR)
    assert store_state(store, job.id) is JobState.TRANSIENT_ERROR
    with bitsnb.Manager(store=store, policy=policy) as mgr2:
        again = mgr2.get_job(job.id)
        assert again.error is not None and again.error.code == 0x801901F7
        assert again.wait(timeout=15) is JobState.TRANSFERRED
        assert again.error_count == 1
        again.complete()
    assert (dest / "later.bin").read_bytes() == server.path("later.bin").read_bytes()


def test_suspended_partial_job_resumes_in_next_manager(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Suspended mid-file, closed, reopened, resumed: the rest comes with a Range request."""
    url = server.add_random_file("part.bin", 2 * MIB, seed=6)
    server.inject("part.bin", Fault.stall_after(512 * KIB, 30))
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("part")
        job.add_file(url, dest / "part.bin")
        job.resume()
        wait_until(lambda: job.progress.bytes_transferred >= 512 * KIB, message="half a MiB")
        job.suspend()
    with bitsnb.Manager(store=store, policy=policy) as mgr2:
        again = mgr2.get_job(job.id)
        assert again.state is JobState.SUSPENDED
        assert again.progress.bytes_transferred == 512 * KIB
        again.resume()
        assert again.wait(timeout=15) is JobState.TRANSFERRED
        last = [r for r in server.requests if r.path == "part.bin"][-1]
        assert last.range == f"bytes={512 * KIB}-" and last.status == 206
        again.complete()
    assert (dest / "part.bin").read_bytes() == server.path("part.bin").read_bytes()
    assert integrity(store) == "ok"


def test_scavenged_after_job_lifetime(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A job left alone longer than job_lifetime is cancelled and its temporary files go."""
    policy.job_lifetime = 0.5
    policy.scavenge_interval = 0.1
    url = server.add_random_file("stale.bin", 2 * MIB, seed=7)
    server.inject("stale.bin", Fault.stall_after(256 * KIB, 30))
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("stale")
        job.add_file(url, dest / "stale.bin")
        job.resume()
        wait_until(lambda: job.progress.bytes_transferred > 0, message="bytes")
        job.suspend()
        assert len(temp_files(dest)) == 1
        wait_until(lambda: store_state(store, job.id) is JobState.CANCELLED, message="scavenged")
        assert temp_files(dest) == []
        assert len(mgr.enum_jobs()) == 0
        with pytest.raises(bitsnb.BitsError):
            mgr.get_job(job.id)


def test_other_manager_takes_over_on_close(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Two managers open; the one transferring closes: the other continues the job (Range)."""
    url = server.add_random_file("handover.bin", 2 * MIB, seed=8)
    server.inject("handover.bin", Fault.stall_after(512 * KIB, 30))
    b = bitsnb.Manager(store=store, policy=policy)
    try:
        with bitsnb.Manager(store=store, policy=policy) as a:
            job = a.create_job("handover")
            job.add_file(url, dest / "handover.bin")
            job.resume()
            wait_until(lambda: job.progress.bytes_transferred >= 512 * KIB, message="bytes")
            wait_until(lambda: any(j.id == job.id for j in b.enum_jobs()), message="b sees it")
        on_b = b.get_job(job.id)
        assert on_b.wait(timeout=20) is JobState.TRANSFERRED
        reqs = [r for r in server.requests if r.path == "handover.bin"]
        assert len(reqs) == 2 and reqs[1].range == f"bytes={512 * KIB}-"
        on_b.complete()
    finally:
        b.close()
    assert (dest / "handover.bin").read_bytes() == server.path("handover.bin").read_bytes()


@pytest.mark.parametrize("call", ["cancel", "complete"])
def test_end_job_from_other_manager(
    call: str, store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """cancel()/complete() through the manager that is not transferring: the transferring one
    stops, the job is final in the store and no temporary file is left behind."""
    done_url = server.add_random_file("done.bin", 64 * KIB, seed=1)
    slow_url = server.add_random_file("slow.bin", 2 * MIB, seed=2)
    server.inject("slow.bin", Fault.stall_after(256 * KIB, 30))
    with (
        bitsnb.Manager(store=store, policy=policy) as a,
        bitsnb.Manager(store=store, policy=policy) as b,
    ):
        job = a.create_job("ended elsewhere")
        job.add_file_set([(done_url, dest / "done.bin"), (slow_url, dest / "slow.bin")])
        job.resume()
        wait_until(
            lambda: job.files[0].transferred and job.files[1].progress.bytes_transferred > 0,
            message="one file done, one flowing",
        )
        # b acts on what the store says: wait until the store (seen through b) has file 0 done
        wait_until(
            lambda: any(j.id == job.id and j.files[0].transferred for j in b.enum_jobs()),
            message="b sees file 0 transferred",
        )
        result = getattr(b.get_job(job.id), call)()
        final = JobState.CANCELLED if call == "cancel" else JobState.ACKNOWLEDGED
        assert result == (0 if call == "cancel" else 0x00200017)
        wait_until(lambda: job.state is final, message="a sees the end")
        wait_until(lambda: all(j.id != job.id for j in a.enum_jobs()), message="a forgets it")
        assert store_state(store, job.id) is final
        assert temp_files(dest) == []
    assert store_state(store, job.id) is final
    assert temp_files(dest) == []
    if call == "complete":
        assert sorted(p.name for p in dest.iterdir()) == ["done.bin"]
        assert (dest / "done.bin").read_bytes() == server.path("done.bin").read_bytes()
    else:
        assert list(dest.iterdir()) == []
    assert integrity(store) == "ok"
