"""Child process for the persistence tests: start a download, say so, then wait to be killed.

Usage: python child_transfer.py STORE URL LOCAL_PATH
Prints the job id (one line) once body bytes are flowing, then sleeps (bounded) until SIGKILLed.
"""

from __future__ import annotations

import sys
import time

import bitsnb


def main() -> int:
    """Create the job, resume it, print its id when bytes flow, then wait for the parent."""
    store, url, local = sys.argv[1:4]
    policy = bitsnb.Policy(
        min_retry_delay_floor=0.05,
        poll_interval=0.05,
        lease_seconds=2.0,
        checkpoint_interval=0.2,
        connect_timeout=5.0,
        read_timeout=60.0,
    )
    mgr = bitsnb.Manager(store=store, policy=policy)
    job = mgr.create_job("child transfer")
    job.minimum_retry_delay = 0.05
    job.add_file(url, local)
    job.resume()
    deadline = time.monotonic() + 30
    while job.progress.bytes_transferred == 0:
        if time.monotonic() > deadline or job.state is bitsnb.JobState.ERROR:
            print(f"FAILED {job.state.name}", flush=True)
            return 1
        time.sleep(0.01)
    print(job.id, flush=True)
    time.sleep(60)  # the parent kills us long before this
    return 2


if __name__ == "__main__":
    sys.exit(main())
