"""Benchmark runner for a big queue: create N idle jobs, frame them, and measure idle CPU.

``python -m bench._run_queue --jobs 10000 --idle 30 URL``: creates N SUSPENDED jobs of one file
each (``create_job`` + ``add_file``), times ``enum_jobs()`` and ``enum_jobs().to_frame()`` (if
``bitsnb.frames`` exists; pandas is imported first and timed apart), then measures the process CPU time (all threads) spent while the
queue sits idle, then reopens the store to time a manager start with N jobs. Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import bitsnb


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the phases, print one JSON line."""
    ap = argparse.ArgumentParser(prog="python -m bench._run_queue", description=__doc__)
    ap.add_argument("url", help="the URL every job's file points at (never fetched)")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bitsnb-bench-queue-"))
    out: dict[str, object] = {"jobs": args.jobs, "idle_seconds": args.idle}
    try:
        store = tmp / "jobs.db"
        dest = tmp / "dest"
        dest.mkdir()
        with bitsnb.Manager(store=store) as mgr:
            create = add = 0.0
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            for i in range(args.jobs):
                a = time.perf_counter()
                job = mgr.create_job(f"queued-{i}")
                b = time.perf_counter()
                job.add_file(args.url, str(dest / f"f{i}.bin"))
                add += time.perf_counter() - b
                create += b - a
            out["create_s"] = time.perf_counter() - t0
            out["create_cpu_s"] = time.process_time() - cpu0  # all threads of this process
            out["create_job_only_s"] = create
            out["add_file_only_s"] = add
            t0 = time.perf_counter()
            jobs = mgr.enum_jobs()
            out["enum_s"] = time.perf_counter() - t0
            out["enum_count"] = len(jobs)
            if importlib.util.find_spec("bitsnb.frames") is not None:
                # pandas' own import (~0.5 s) is not bitsnb's cost: a notebook has it loaded
                t0 = time.perf_counter()
                importlib.import_module("bitsnb.frames")  # imports pandas

                out["pandas_import_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                frame = mgr.enum_jobs().to_frame()
                out["frame_s"] = time.perf_counter() - t0
                out["frame_rows"] = len(frame)
                t0 = time.perf_counter()
                mgr.enum_jobs().to_frame()
                out["frame_again_s"] = time.perf_counter() - t0
                del frame
            else:
                out["frame_skipped"] = "bitsnb.frames does not exist"
            out["threads"] = threading.active_count()
            time.sleep(1.0)  # let anything triggered by the creation settle
            c0, w0 = time.process_time(), time.monotonic()
            time.sleep(args.idle)
            c1, w1 = time.process_time(), time.monotonic()
            out["idle_cpu_s"] = c1 - c0
            out["idle_wall_s"] = w1 - w0
            out["idle_core_fraction"] = (c1 - c0) / (w1 - w0)
            t0 = time.perf_counter()
        out["close_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with bitsnb.Manager(store=store) as mgr:
            out["reopen_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            out["reopen_enum_count"] = len(mgr.enum_jobs())
            out["reopen_enum_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
