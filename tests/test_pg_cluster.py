"""Three managers in separate processes on one PostgreSQL store, against the real test file
server: every file fetched once (requests counted at the server), byte-exact; one manager
SIGKILLed mid-transfer, its job taken over by the others and resumed with a Range request.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from subprocess import Popen

import pytest
from _support.helpers import wait_until
from _support.pg_fixtures import ManagerProcs, schema_database
from _support.postgres import Postgres

import bitsnb
from bitsnb import JobState
from bitsnb.testing import Fault, FileServer

psycopg = pytest.importorskip("psycopg")

KIB = 1024
JOBS, FILES_PER_JOB, SIZE = 12, 4, 48 * KIB
VICTIM, STALL = 6 * 1024 * KIB, 2 * 1024 * KIB
ONE_AT_A_TIME: dict[str, object] = {"max_active_jobs": 1, "files_in_flight": 1}


@pytest.fixture
def children(postgres: Postgres, manager_procs: ManagerProcs) -> tuple[str, list[Popen[str]]]:
    """A fresh database and three manager processes on it (one job, one file at a time each)."""
    url = schema_database(postgres)
    return url, manager_procs.start_many(url, 3, ONE_AT_A_TIME)


def _temp_of(url: str, job_id: object) -> Path:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT temp_name FROM files WHERE job_id=%s", (str(job_id),)).fetchone()
    assert row is not None
    return Path(row[0])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _lease_owner(url: str, job_id: object) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT lease_owner FROM jobs WHERE id=%s", (str(job_id),)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def test_three_managers_share_the_queue_and_take_over_a_killed_ones_job(
    children: tuple[str, list[Popen[str]]], server: FileServer, tmp_path: Path
) -> None:
    url, procs = children
    dest = tmp_path / "dest"
    dest.mkdir()
    names = []
    # the victim: its holder is stuck mid-file (2 MiB sent, then nothing) when it is killed;
    # over 4 MiB, so its validators are recorded at once (a resume may use its bytes on disk)
    victim_url = server.add_random_file("victim.bin", VICTIM, seed=99)
    server.inject("victim.bin", Fault.stall_after(STALL, 60))
    passive = bitsnb.Policy(max_active_jobs=0, poll_interval=0.05)
    with bitsnb.Manager(store=url, policy=passive) as mgr:  # creates, watches, transfers nothing
        victim = mgr.create_job("victim", priority=bitsnb.JobPriority.HIGH)
        victim.add_file(victim_url, dest / "victim.bin")
        jobs = [victim]
        for j in range(JOBS):
            job = mgr.create_job(f"job{j}")
            files = []
            for i in range(FILES_PER_JOB):
                name = f"j{j}f{i}.bin"
                names.append(name)
                files.append((server.add_random_file(name, SIZE, seed=j * 100 + i), dest / name))
            job.add_file_set(files)
            jobs.append(job)
        for job in jobs:
            job.resume()
        # the victim's holder has bytes on disk and waits for more: kill it
        temp = _temp_of(url, victim.id)
        wait_until(lambda: _size(temp) > 0, timeout=30, message="victim bytes on disk")
        owner = _lease_owner(url, victim.id)
        assert owner is not None
        pid = int(owner.split(":")[1])
        (killed,) = [p for p in procs if p.pid == pid]
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        on_disk = _size(temp)
        for job in jobs:
            assert job.wait(timeout=60) is JobState.TRANSFERRED, job.display_name
        taker = _lease_owner(url, victim.id)
        for job in jobs:
            assert job.complete() == 0
    assert taker is None or f":{pid}:" not in taker
    full = Counter(r.path for r in server.requests if r.method == "GET" and r.range is None)
    assert full == dict.fromkeys([*names, "victim.bin"], 1)  # every file fetched once
    (_, resumed) = [r for r in server.requests if r.path == "victim.bin"]
    assert resumed.range == f"bytes={on_disk}-" and resumed.status == 206  # where it stopped
    assert server.bytes_sent("victim.bin") < VICTIM + STALL + 1
    for name in [*names, "victim.bin"]:
        assert (dest / name).read_bytes() == server.path(name).read_bytes(), name
    survivors = [p for p in procs if p is not killed]
    assert all(p.poll() is None for p in survivors)


def _row(url: str, job_id: object) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT state, version, writer, lease_owner FROM jobs WHERE id=%s", (str(job_id),)
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_manager_paused_past_its_lease_commits_nothing_when_it_resumes(
    postgres: Postgres,
    manager_procs: ManagerProcs,
    server: FileServer,
    tmp_path: Path,
) -> None:
    """A is SIGSTOPped mid-file; B takes the job over once A's lease expires and finishes it;
    A, resumed (SIGCONT), finds its lease gone: its run stops and nothing it writes lands
    (the fencing token), though its copy of the job is as new as the row it last saw."""
    url = schema_database(postgres)
    dest = tmp_path / "dest"
    dest.mkdir()
    job_url = server.add_random_file("paused.bin", VICTIM, seed=7)
    server.inject("paused.bin", Fault.stall_after(STALL, 4))  # A's answer stops, then ends
    a = manager_procs.start(url, ONE_AT_A_TIME)
    with bitsnb.Manager(store=url, policy=bitsnb.Policy(max_active_jobs=0)) as mgr:
        job = mgr.create_job("paused")
        job.add_file(job_url, dest / "paused.bin")
        job.resume()
        temp = _temp_of(url, job.id)
        wait_until(lambda: _size(temp) > 0, timeout=30, message="A's bytes on disk")
        assert f":{a.pid}:" in str(_lease_owner(url, job.id))
        a.send_signal(signal.SIGSTOP)
        b = manager_procs.start(url, ONE_AT_A_TIME)
        assert job.wait(timeout=30) is JobState.TRANSFERRED
        done = _row(url, job.id)
        assert f":{b.pid}:" in str(done[2])  # B wrote the end
        a.send_signal(signal.SIGCONT)
        wait_until(lambda: server.requests[0].finished, timeout=20, message="A's answer ended")
        manager_procs.stop([a])  # A closes: puts back what it ran, gives up its leases
        assert a.returncode == 0
        assert _row(url, job.id) == done  # nothing of A's landed
        assert job.state is JobState.TRANSFERRED
        assert job.complete() == 0
    reqs = [r for r in server.requests if r.path == "paused.bin"]
    assert [r.range is None for r in reqs] == [True, False]  # A's, then B's resume
    assert (dest / "paused.bin").read_bytes() == server.path("paused.bin").read_bytes()
