"""Benchmark: create 10,000 jobs, then build their DataFrame.

Run: ``.venv/bin/python bench/frame_10k.py [N]``. Two ways of creating the jobs are timed:
``AsyncManager.create_job`` awaited in one coroutine, and the blocking ``Manager.create_job``
(one loop-thread round trip per job). Each store gets a quarter of its jobs with one file
(never transferred, so of unknown size) so the nullable columns hold values and ``<NA>``.
The frame is timed after pandas is imported (best of three).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import bitsnb
from bitsnb.frames import jobs_to_frame


def report(
    label: str, n: int, create_s: float, jobs: Sequence[bitsnb.Job | bitsnb.AsyncJob]
) -> None:
    frame_s = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        frame = jobs_to_frame(jobs)
        frame_s = min(frame_s, time.perf_counter() - start)
    rows, cols = frame.shape
    print(f"{label}: created {n} jobs in {create_s:.2f} s ({n / create_s:,.0f} jobs/s)")
    print(f"{label}: jobs_to_frame {frame_s * 1000:.1f} ms for {rows} rows x {cols} columns")


async def with_async(n: int, folder: str) -> None:
    """Create *n* jobs in one coroutine on an AsyncManager."""
    async with bitsnb.AsyncManager(store=os.path.join(folder, "async.db")) as amgr:
        start = time.perf_counter()
        jobs = [
            await amgr.create_job(f"job {i}", priority=bitsnb.JobPriority(i % 4)) for i in range(n)
        ]
        create_s = time.perf_counter() - start
        for i, job in enumerate(jobs[: n // 4]):
            await job.add_file(f"http://127.0.0.1:9/f{i}.bin", os.path.join(folder, f"f{i}.bin"))
        report("AsyncManager", n, create_s, (await amgr.enum_jobs())[:])


def with_sync(n: int, folder: str) -> None:
    """Create *n* jobs through the blocking Manager."""
    with bitsnb.Manager(store=os.path.join(folder, "sync.db")) as mgr:
        start = time.perf_counter()
        jobs = [mgr.create_job(f"job {i}", priority=bitsnb.JobPriority(i % 4)) for i in range(n)]
        create_s = time.perf_counter() - start
        for i, job in enumerate(jobs[: n // 4]):
            job.add_file(f"http://127.0.0.1:9/g{i}.bin", os.path.join(folder, f"g{i}.bin"))
        report("Manager     ", n, create_s, mgr.enum_jobs()[:])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    import pandas  # noqa: F401  (import cost is not the frame's)

    with tempfile.TemporaryDirectory(prefix="bitsnb-bench-") as folder:
        asyncio.run(with_async(n, folder))
        with_sync(n, folder)


if __name__ == "__main__":
    main()
