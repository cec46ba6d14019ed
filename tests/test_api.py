"""The public surface: ``__all__``, enums with BITS's numbers, the enumerators, AsyncManager in
plain asyncio, and a light import (no pandas, no ipywidgets)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bitsnb
from bitsnb import (
    AuthScheme,
    AuthTarget,
    ErrorContext,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    ProxyUsage,
)
from bitsnb.testing import FileServer


def _isort_key(name: str) -> tuple[int, list[object]]:
    """ruff's RUF022 order: CONSTANTS, then CamelCase, then the rest, each in natural order."""
    if name.upper() == name and any(c.isalpha() for c in name):
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    parts = re.split(r"(\d+)", name)
    return kind, [int(p) if p.isdigit() else p for p in parts]


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted (the repo's ruff order), unique, and every name exists."""
    names = bitsnb.__all__
    assert list(names) == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(bitsnb, name), name
    for name in ("Manager", "AsyncManager", "Job", "AsyncJob", "BitsError", "JobState", "Policy"):
        assert name in names
    assert bitsnb.Manager.__module__ == "bitsnb"


@pytest.mark.parametrize(
    ("enum", "values"),
    [
        (
            JobState,
            {
                "QUEUED": 0,
                "CONNECTING": 1,
                "TRANSFERRING": 2,
                "SUSPENDED": 3,
                "ERROR": 4,
                "TRANSIENT_ERROR": 5,
                "TRANSFERRED": 6,
                "ACKNOWLEDGED": 7,
                "CANCELLED": 8,
            },
        ),
        (JobPriority, {"FOREGROUND": 0, "HIGH": 1, "NORMAL": 2, "LOW": 3}),
        (JobType, {"DOWNLOAD": 0, "UPLOAD": 1, "UPLOAD_REPLY": 2}),
        (
            NotifyFlags,
            {
                "JOB_TRANSFERRED": 0x1,
                "JOB_ERROR": 0x2,
                "DISABLE": 0x4,
                "JOB_MODIFICATION": 0x8,
                "FILE_TRANSFERRED": 0x10,
                "FILE_RANGES_TRANSFERRED": 0x20,
            },
        ),
        (ProxyUsage, {"PRECONFIG": 0, "NO_PROXY": 1, "OVERRIDE": 2, "AUTODETECT": 3}),
        (
            ErrorContext,
            {
                "NONE": 0,
                "UNKNOWN": 1,
                "GENERAL_QUEUE_MANAGER": 2,
                "QUEUE_MANAGER_NOTIFICATION": 3,
                "LOCAL_FILE": 4,
                "REMOTE_FILE": 5,
                "GENERAL_TRANSPORT": 6,
                "REMOTE_APPLICATION": 7,
                "SERVER_CERTIFICATE_CALLBACK": 8,
            },
        ),
        (AuthTarget, {"SERVER": 1, "PROXY": 2}),
        (
            AuthScheme,
            {"BASIC": 1, "DIGEST": 2, "NTLM": 3, "NEGOTIATE": 4, "PASSPORT": 5},
        ),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_enums_carry_bits_numbers(enum: type, values: dict[str, int]) -> None:
    """Every enum member has the number BITS gives it (and nothing else is there)."""
    assert {m.name: int(m) for m in enum} == values  # type: ignore[attr-defined]
    for name, number in values.items():
        assert getattr(enum, name) == number


def test_enum_conveniences() -> None:
    """Flags combine; priorities order; state classes."""
    both = NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR
    assert int(both) == 3 and NotifyFlags.JOB_ERROR in both
    assert JobPriority.FOREGROUND < JobPriority.LOW
    assert JobState(6) is JobState.TRANSFERRED
    assert bitsnb.BG_SIZE_UNKNOWN == 0xFFFFFFFFFFFFFFFF


def test_job_enumerator(manager: bitsnb.Manager) -> None:
    """enum_jobs: len, iteration, next(n), skip, reset, clone, indexing."""
    jobs = [manager.create_job(f"e{i}") for i in range(5)]
    en = manager.enum_jobs()
    assert len(en) == en.count == 5
    assert [j.id for j in en] == [j.id for j in jobs]  # creation order
    assert list(en) == []  # the cursor is at the end
    en.reset()
    assert [j.id for j in en.next(2)] == [jobs[0].id, jobs[1].id]
    clone = en.clone()
    assert en.skip(2) is True
    assert [j.id for j in en.next(5)] == [jobs[4].id]  # fewer at the end
    assert en.next(1) == []
    assert en.skip(1) is False
    assert [j.id for j in clone.next(1)] == [jobs[2].id]  # the clone kept its own cursor
    assert next(clone).id == jobs[3].id
    assert en[0].id == jobs[0].id and [j.id for j in en[1:3]] == [jobs[1].id, jobs[2].id]
    clone.reset()
    assert len(list(clone)) == 5
    jobs[0].cancel()
    assert len(en) == 5  # a snapshot
    assert len(manager.enum_jobs()) == 4
    assert len(manager.enum_jobs(include_finished=True)) == 5
    with pytest.raises(StopIteration):
        next(en)


def test_file_enumerator(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """enum_files works the same way and holds FileInfo snapshots."""
    job = manager.create_job("files")
    job.add_file_set([(server.url(f"{i}.bin"), dest / f"{i}.bin") for i in range(3)])
    files = job.enum_files()
    assert len(files) == 3
    first = next(files)
    assert isinstance(first, bitsnb.FileInfo) and first.index == 0
    assert first.local_name == str(dest / "0.bin") and first.remote_name == server.url("0.bin")
    assert [f.index for f in files] == [1, 2]
    assert job.files == list(job.enum_files())


def test_manager_basics(manager: bitsnb.Manager, store: Path) -> None:
    """repr, store path, policy, closed flag; a closed manager refuses calls."""
    assert Path(manager.store_path) == store
    assert manager.policy.min_retry_delay_floor == 0.05
    assert "Manager" in repr(manager) and not manager.closed
    job = manager.create_job("x")
    assert repr(job).startswith("<bitsnb.Job 'x'")
    assert job.manager is manager
    assert job.async_job.id == job.id
    assert manager.get_job(job.id) == job and hash(manager.get_job(job.id)) == hash(job)
    manager.close()
    assert manager.closed
    with pytest.raises(RuntimeError):
        manager.create_job("after close")
    manager.close()  # twice is fine


def test_default_store_uses_bitsnb_home(tmp_path: Path) -> None:
    """Without a store argument the queue lives in $BITSNB_HOME/jobs.db (set by conftest)."""
    path = bitsnb.default_store_path()
    assert path.name == "jobs.db" and path.parent.name == "bitsnb-home"
    with bitsnb.Manager() as mgr:
        assert Path(mgr.store_path) == path
    assert path.exists()


def test_async_manager_in_asyncio_run(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """AsyncManager straight inside asyncio.run: create, add, resume, await wait, complete."""
    url = server.add_random_file("async.bin", 200_000, seed=3)

    async def main() -> tuple[JobState, int, JobState]:
        async with bitsnb.AsyncManager(store=store, policy=policy) as amgr:
            job = await amgr.create_job("async", priority=JobPriority.HIGH)
            assert isinstance(job, bitsnb.AsyncJob)
            await job.add_file(url, dest / "async.bin")
            await job.resume()
            state = await job.wait(timeout=15)
            again = await amgr.get_job(job.id)
            assert again is job
            assert [j.id for j in await amgr.enum_jobs()] == [job.id]
            result = await job.complete()
            return state, result, job.state

    state, result, final = asyncio.run(main())
    assert state is JobState.TRANSFERRED
    assert result == 0 and final is JobState.ACKNOWLEDGED
    assert (dest / "async.bin").read_bytes() == server.path("async.bin").read_bytes()


def test_async_manager_start_aclose(store: Path, policy: bitsnb.Policy) -> None:
    """start()/aclose() by hand; a closed manager cannot reopen; unstarted ones refuse calls."""

    async def main() -> None:
        amgr = bitsnb.AsyncManager(store=store, policy=policy)
        with pytest.raises(RuntimeError, match="not started"):
            await amgr.create_job("too early")
        await amgr.start()
        assert await amgr.start() is amgr  # idempotent
        await amgr.create_job("x")
        await amgr.aclose()
        with pytest.raises(RuntimeError):
            await amgr.start()

    asyncio.run(main())


def test_wait_async_from_another_loop(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """job.wait_async() can be awaited from any running loop (a notebook cell's, say)."""
    job = manager.create_job("wait async")
    job.add_file(server.add_random_file("wa.bin", 10_000), dest / "wa.bin")
    job.resume()
    assert asyncio.run(job.wait_async(timeout=15)) is JobState.TRANSFERRED


def test_wait_timeout(manager: bitsnb.Manager) -> None:
    """wait() on a SUSPENDED job times out with TimeoutError (bounded)."""
    job = manager.create_job("idle")
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.1)


def test_import_is_light() -> None:
    """Importing bitsnb does not import pandas or ipywidgets."""
    code = (
        "import bitsnb, sys; "
        "assert 'pandas' not in sys.modules, 'pandas'; "
        "assert 'ipywidgets' not in sys.modules, 'ipywidgets'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_subscribe_event_kinds(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """Listeners see created, modified, state, progress and removed events; unsubscribe works."""
    seen: list[tuple[str, JobState]] = []
    unsubscribe = manager.subscribe(lambda e: seen.append((e.kind, e.state)))
    job = manager.create_job("events")
    job.add_file(server.add_random_file("ev.bin", 100_000), dest / "ev.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    job.complete()
    kinds = [k for k, _ in seen]
    assert kinds[0] == "created"
    assert "modified" in kinds and "progress" in kinds
    assert kinds[-1] == "removed"
    states = [s for k, s in seen if k == "state"]
    assert states[0] is JobState.QUEUED and JobState.TRANSFERRED in states
    assert states[-1] is JobState.ACKNOWLEDGED
    unsubscribe()
    count = len(seen)
    manager.create_job("unheard")
    assert len(seen) == count


def test_policy_limits_machine_and_ranges(store: Path, policy: bitsnb.Policy, dest: Path) -> None:
    """max_jobs_per_machine and max_ranges_per_file raise their BITS codes."""
    policy.max_jobs_per_machine = 1
    policy.max_ranges_per_file = 2
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("only")
        with pytest.raises(bitsnb.BitsError) as info:
            mgr.create_job("second")
        assert info.value.code == 0x80200050
        with pytest.raises(bitsnb.BitsError) as info:
            job.add_file_with_ranges(
                "http://127.0.0.1/x", dest / "x.bin", [(0, 1), (10, 1), (20, 1)]
            )
        assert info.value.code == 0x80200052
        assert job.files == []
        assert len(mgr.enum_jobs()) == 1


def test_windows_defaults() -> None:
    """Policy.windows_defaults() carries BITS's limits."""
    p = bitsnb.Policy.windows_defaults()
    assert (p.max_jobs_per_user, p.max_jobs_per_machine, p.max_files_per_job) == (60, 300, 200)
    assert p.max_ranges_per_file == 500
