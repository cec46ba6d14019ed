"""A soak worker: one process that keeps a ``bitsnb.Manager`` open on a store until it is killed.

Usage: ``python tests/soak/_worker.py STORE [--max-seconds N] [--batches N]``. Jobs already in
the store continue by themselves when the manager opens it; with ``--batches`` (PostgreSQL), the
worker also claims the shared jobs' files N at a time, as a worker of ``serve()`` does
(``bitsnb.distributed.BatchRunner``). Commands arrive one per line on stdin:
``sweep`` (complete every TRANSFERRED job except those named ``*-cancel``), ``cancel JOB_ID``,
``resume JOB_ID...`` and ``quit`` (close the manager cleanly); end of input also quits. Each answer is one stdout line.
The driver SIGKILLs this process at random moments; ``--max-seconds`` bounds its life anyway.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

import bitsnb

CANCEL_SUFFIX = "-cancel"


def worker_policy() -> bitsnb.Policy:
    """Fast timings: short leases so a killed worker's jobs move on quickly, a short read timeout
    so stalls longer than 2 s become transient timeouts."""
    return bitsnb.Policy(
        min_retry_delay_floor=0.05,
        lease_seconds=2.0,
        poll_interval=0.1,
        checkpoint_interval=0.2,
        connect_timeout=5.0,
        read_timeout=2.0,
    )


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _sweep(mgr: bitsnb.Manager) -> None:
    """complete() every TRANSFERRED job this manager sees (not the ones meant to be cancelled)."""
    done = 0
    for job in mgr.enum_jobs():
        try:
            if job.state is bitsnb.JobState.TRANSFERRED and not job.display_name.endswith(
                CANCEL_SUFFIX
            ):
                p = job.progress
                seen = f"{p.files_transferred}/{p.files_total} files"
                rc = job.complete()
                _say(f"completed {job.id} 0x{rc:08X} (saw TRANSFERRED, {seen})")
                done += 1
        except bitsnb.BitsError as exc:  # changed meanwhile by the other manager: fine
            _say(f"complete-refused {job.id} 0x{exc.code:08X}")
    _say(f"swept {done}")


def _cancel(mgr: bitsnb.Manager, job_id: str) -> None:
    try:
        rc = mgr.get_job(job_id).cancel()
    except bitsnb.BitsError as exc:
        _say(f"cancel-refused {job_id} 0x{exc.code:08X}")
        return
    _say(f"cancelled {job_id} 0x{rc:08X}")


def _resume(mgr: bitsnb.Manager, job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            mgr.get_job(job_id).resume()
        except bitsnb.BitsError as exc:
            _say(f"resume-refused {job_id} 0x{exc.code:08X}")
            continue
        _say(f"resumed {job_id}")


def main(argv: list[str] | None = None) -> int:
    """Open the manager, answer commands until ``quit`` or end of input, then close it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("store")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--batches", type=int, default=0, help="claim shared jobs' files")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # never outlive the driver by much, whatever happens to our stdin
    timer = threading.Timer(args.max_seconds, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    mgr = bitsnb.Manager(store=args.store, policy=worker_policy())
    runner = None
    if args.batches:
        from bitsnb._store_api import StoreURL
        from bitsnb.distributed import BatchRunner

        runner = BatchRunner(StoreURL(args.store), worker_policy(), args.batches)
    _say(f"READY {os.getpid()}")
    try:
        for raw in sys.stdin:
            words = raw.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            if words[0] == "sweep":
                _sweep(mgr)
            elif words[0] == "cancel" and len(words) == 2:
                _cancel(mgr, words[1])
            elif words[0] == "resume":
                _resume(mgr, words[1:])
            else:
                _say(f"unknown {raw.strip()!r}")
    finally:
        if runner is not None:
            runner.close()
        mgr.close()
    _say("BYE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
