"""A queue panel over 10,000 jobs: comm messages per second and the kernel CPU it costs.

Creates N jobs (default 10,000; a quarter with one file of unknown size, never started) in a
fresh store, shows a queue panel whose comms only count messages, then lets K of them (default
50) transfer slowly from a loopback ``FileServer`` for about D seconds (stalled pieces, so they
stay active). It prints the panel's messages per second and the CPU time per second of the
panels' pump thread (from ``/proc/self/task/<tid>/stat``) and of the whole process.

    python bench/panel_queue_10k.py [--jobs 10000] [--active 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import bitsnb
from bitsnb.notebook import queue_panel
from bitsnb.notebook._commlog import counting_comms, model_ids
from bitsnb.notebook._pump import default_pump
from bitsnb.testing import Fault, FileServer


def _thread_cpu(tid: int) -> float:
    """CPU seconds (user + system) of one thread of this process."""
    with open(f"/proc/self/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--active", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bitsnb-bench-") as tmp,
        FileServer() as server,
        counting_comms() as log,
    ):
        folder = Path(tmp)
        policy = bitsnb.Policy(
            max_active_jobs=args.active,
            max_connections_per_host=args.active,
            min_retry_delay_floor=0.1,
        )
        with bitsnb.Manager(folder / "jobs.db", policy=policy) as mgr:
            start = time.monotonic()
            for i in range(args.jobs - args.active):
                job = mgr.create_job(f"idle {i:05d}")
                if i % 4 == 0:
                    job.add_file(f"http://127.0.0.1:9/f{i}.bin", str(folder / f"f{i}.bin"))
            size = 4_000_000
            active = []
            for i in range(args.active):
                url = server.add_random_file(f"a{i}.bin", size, seed=i)
                job = mgr.create_job(f"active {i:03d}")
                job.minimum_retry_delay = 0.2
                job.add_file(url, str(folder / f"a{i}.bin"))
                active.append(job)
            # each request gets 20 kB, a 0.5 s stall, then a dropped connection: the jobs stay
            # active (TRANSFERRING, short TRANSIENT_ERROR retries) through the window
            server.inject("a*.bin", Fault.stall_after(20_000, 0.5, times=-1))
            print(f"created {args.jobs} jobs in {time.monotonic() - start:.1f} s")

            built = time.monotonic()
            queue = queue_panel(mgr)
            build_s = time.monotonic() - built
            print(f"queue panel over {len(queue.jobs)} jobs built in {build_s:.2f} s")
            pump = default_pump()
            thread = pump.thread
            assert thread is not None and thread.native_id is not None
            tid = thread.native_id
            for job in active:
                job.resume()
            time.sleep(1.0)  # let the burst of QUEUED → CONNECTING → TRANSFERRING pass
            ids = model_ids(queue)
            t0, c0, p0 = time.monotonic(), _thread_cpu(tid), time.process_time()
            m0 = log.count(ids)
            time.sleep(args.seconds)
            t1, c1, p1 = time.monotonic(), _thread_cpu(tid), time.process_time()
            msgs = log.count(ids) - m0
            moving = sum(1 for s in queue.jobs if s.state is bitsnb.JobState.TRANSFERRING)
            span = t1 - t0
            print(f"window {span:.1f} s, {moving} jobs transferring at the end; {queue.counts}")
            print(f"queue panel messages: {msgs} = {msgs / span:.2f} msg/s")
            print(f"pump thread CPU: {(c1 - c0) * 1000 / span:.1f} ms per second")
            print(f"whole process CPU (transfers included): {(p1 - p0) * 1000 / span:.1f} ms/s")
            print(f"queue renders: {queue.renders}")
            queue.close()


if __name__ == "__main__":
    main()
