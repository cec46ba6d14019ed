"""How many comm messages do the panels send while many jobs transfer at full speed?

Runs N concurrent download jobs (default 100 × 2 MiB) against a loopback ``FileServer`` with a
queue panel (and optionally job panels) whose comms only count messages, then prints messages
per second, in total and per panel, and the elapsed time.

    python bench/panel_messages.py [--jobs 100] [--size-mib 2] [--job-panels 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bitsnb
from bitsnb.notebook import job_panel, queue_panel
from bitsnb.notebook._commlog import counting_comms, model_ids
from bitsnb.testing import FileServer


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--size-mib", type=float, default=2.0)
    ap.add_argument("--job-panels", type=int, default=0, help="also show this many job panels")
    ap.add_argument("--max-active", type=int, default=100)
    ap.add_argument("--per-host", type=int, default=16)
    args = ap.parse_args()
    size = int(args.size_mib * 1024 * 1024)

    with (
        tempfile.TemporaryDirectory(prefix="bitsnb-bench-") as tmp,
        FileServer() as server,
        counting_comms() as log,
    ):
        folder = Path(tmp)
        urls = [server.add_random_file(f"f{i}.bin", size, seed=i) for i in range(args.jobs)]
        policy = bitsnb.Policy(
            max_active_jobs=args.max_active, max_connections_per_host=args.per_host
        )
        with bitsnb.Manager(folder / "jobs.db", policy=policy) as mgr:
            queue = queue_panel(mgr)
            created_at = time.monotonic()
            jobs = []
            for i, url in enumerate(urls):
                job = mgr.create_job(f"job {i:03d}")
                job.add_file(url, str(folder / f"f{i}.bin"))
                jobs.append(job)
            _wait(lambda: len(queue.jobs) == len(jobs), timeout=10)
            creating = time.monotonic() - created_at
            creating_msgs = log.count(model_ids(queue), since=created_at)
            panels = [job_panel(j) for j in jobs[: args.job_panels]]
            start = time.monotonic()
            for job in jobs:
                job.resume()
            for job in jobs:
                state = job.wait(timeout=300)
                if state is not bitsnb.JobState.TRANSFERRED:
                    raise SystemExit(f"{job.display_name} ended {state.name}")
            transferred = time.monotonic() - start
            shown = _wait(
                lambda: (
                    all(s.state is bitsnb.JobState.TRANSFERRED for s in queue.jobs)
                    and len(queue.jobs) == len(jobs)
                    and all(p.state_label.value == "TRANSFERRED" for p in panels)
                ),
                timeout=10,
            )
            elapsed = time.monotonic() - start
            queue_msgs = log.count(model_ids(queue), since=start)
            job_msgs = [log.count(model_ids(p), since=start) for p in panels]
            total = log.count(since=start)
            threads = log.threads()
            for p in panels:
                p.close()
            queue.close()

    mib = args.jobs * size / 2**20
    print(f"jobs: {args.jobs} x {args.size_mib:g} MiB = {mib:.0f} MiB, job panels: {len(panels)}")
    print(
        f"creating the jobs: {creating:.2f} s, queue panel {creating_msgs} messages = "
        f"{creating_msgs / creating:.1f} msg/s"
    )
    print(f"transfer time: {transferred:.2f} s, elapsed until panels final: {elapsed:.2f} s")
    print(f"panels showed the final state: {shown}")
    print(f"comm messages while transferring: {total} total = {total / elapsed:.1f} msg/s")
    print(f"  queue panel: {queue_msgs} = {queue_msgs / elapsed:.1f} msg/s")
    if job_msgs:
        per = sum(job_msgs) / len(job_msgs)
        print(
            f"  job panels: {sum(job_msgs)} = {sum(job_msgs) / elapsed:.1f} msg/s "
            f"({per / elapsed:.1f} msg/s per panel, max {max(job_msgs) / elapsed:.1f})"
        )
    print(f"  sent from threads: {sorted(threads)}")


if __name__ == "__main__":
    main()
