"""Child process for the shared-files test: fetches files of one job with others, until none
is left. Usage: python pg_files_worker.py STORE_URL JOB_ID BATCH. Prints ``ready`` once
imported, waits for a line on stdin (so that all start together), then prints how many files
it wrote."""

from __future__ import annotations

import sys

import bitsnb
from bitsnb.distributed import fetch_shared_files


def main() -> int:
    """Wait for the go, fetch what this process claims, print how many it wrote."""
    policy = bitsnb.Policy(lease_seconds=5.0, poll_interval=0.05, files_in_flight=1)
    print("ready", flush=True)
    sys.stdin.readline()
    written = fetch_shared_files(
        sys.argv[1], sys.argv[2], policy, batch=int(sys.argv[3]), timeout=120
    )
    print(written, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
