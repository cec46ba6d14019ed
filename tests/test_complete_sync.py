"""complete()'s folder sync: after the renames, before the call returns; shared between
concurrent calls on one folder, done in the caller's thread by the blocking API."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import bitsnb
from bitsnb import JobState
from bitsnb import _completion as completion_module
from bitsnb.testing import FileServer


def test_folder_syncs_are_shared_and_start_after_each_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Callers that arrive while a sync runs wait for the next one, which serves them all."""
    started: list[float] = []

    def slow_fsync(folder: str) -> None:
        started.append(time.monotonic())
        time.sleep(0.05)

    monkeypatch.setattr(completion_module, "_fsync_dir", slow_fsync)

    async def main() -> list[tuple[float, float]]:
        folders = completion_module.FolderSync(asyncio.get_running_loop())

        async def caller(delay: float) -> tuple[float, float]:
            await asyncio.sleep(delay)
            called = time.monotonic()
            await folders.sync(["/some/folder"])
            return called, time.monotonic()

        return await asyncio.gather(*(caller(0.01 * i) for i in range(10)))

    calls = asyncio.run(main())
    assert len(started) < len(calls)  # shared: ten callers, fewer syncs
    for called, returned in calls:
        # each caller returned after a sync that started after it called had ended
        assert any(called <= s and s + 0.05 <= returned + 1e-3 for s in started)


def test_blocking_complete_syncs_in_the_calling_thread(
    manager: bitsnb.Manager,
    server: FileServer,
    dest: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, str]] = []
    real = completion_module._fsync_dir

    def recording(folder: str) -> None:
        seen.append((folder, threading.current_thread().name))
        real(folder)

    monkeypatch.setattr(completion_module, "_fsync_dir", recording)
    server.add_random_file("a.bin", 4096, seed=1)
    job = manager.create_job("one")
    job.add_file(server.url("a.bin"), dest / "a.bin")
    job.resume()
    assert job.wait(timeout=15) is JobState.TRANSFERRED
    assert job.complete() == 0
    assert job.state is JobState.ACKNOWLEDGED
    assert seen == [(str(dest), threading.current_thread().name)]
    assert (dest / "a.bin").read_bytes() == server.path("a.bin").read_bytes()


def test_async_completes_of_many_jobs_in_one_folder(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    names = [f"f{i}.bin" for i in range(12)]
    for i, name in enumerate(names):
        server.add_random_file(name, 2048, seed=i)

    async def main() -> list[int]:
        async with bitsnb.AsyncManager(store, policy=policy) as mgr:
            jobs = []
            for name in names:
                job = await mgr.create_job(name)
                await job.add_file(server.url(name), dest / name)
                await job.resume()
                jobs.append(job)
            for job in jobs:
                assert await job.wait(15) is JobState.TRANSFERRED
            return list(await asyncio.gather(*(job.complete() for job in jobs)))

    assert asyncio.run(main()) == [0] * len(names)
    for name in names:
        assert (dest / name).read_bytes() == server.path(name).read_bytes()
    assert not list(dest.glob(".BIT*"))
