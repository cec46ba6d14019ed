"""Child process for the group-commit test: a job of many small files, killed mid-run.

Usage: python child_many.py STORE DEST COUNT_BEFORE_SAY URL...
Prints the job id (one line) once COUNT_BEFORE_SAY files are recorded transferred, then keeps
transferring (bounded) until SIGKILLed.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import bitsnb


def main() -> int:
    """Create the job, resume it, print its id when enough files are done, then go on."""
    store, dest, say_at, *urls = sys.argv[1:]
    policy = bitsnb.Policy(files_in_flight=8, lease_seconds=2.0, poll_interval=0.05)
    mgr = bitsnb.Manager(store=store, policy=policy)
    job = mgr.create_job("many small files")
    job.add_file_set([(u, str(Path(dest) / u.rsplit("/", 1)[-1])) for u in urls])
    job.resume()
    deadline = time.monotonic() + 30
    # counted in the store, not in memory: another thread may see a record changed a moment
    # before the store's commit of it (the parent kills us as soon as we speak)
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    query = "SELECT COUNT(*) FROM files WHERE job_id=? AND transferred=1"
    while db.execute(query, (str(job.id),)).fetchone()[0] < int(say_at):
        if time.monotonic() > deadline or job.state is bitsnb.JobState.ERROR:
            print(f"FAILED {job.state.name}", flush=True)
            return 1
        time.sleep(0.002)
    db.close()
    print(job.id, flush=True)
    time.sleep(60)  # the parent kills us long before this
    return 2


if __name__ == "__main__":
    sys.exit(main())
