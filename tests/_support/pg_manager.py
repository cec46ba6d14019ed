"""Child process for the PostgreSQL cluster tests: one manager on a shared store, until told.

Usage: python pg_manager.py STORE_URL
Opens a Manager (one job at a time), prints ``ready``, then transfers whatever it claims until
its stdin closes (bounded: 120 s), and closes the manager.
"""

from __future__ import annotations

import select
import sys

import bitsnb


def main() -> int:
    """Run a manager on the store named on the command line until stdin closes."""
    policy = bitsnb.Policy(
        min_retry_delay_floor=0.05,
        poll_interval=0.05,
        lease_seconds=2.0,
        checkpoint_interval=0.1,
        connect_timeout=5.0,
        read_timeout=60.0,
        max_active_jobs=1,
        files_in_flight=1,
    )
    with bitsnb.Manager(store=sys.argv[1], policy=policy):
        print("ready", flush=True)
        readable, _, _ = select.select([sys.stdin], [], [], 120)
        if readable:
            sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
