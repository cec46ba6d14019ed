"""Child process for the multi-process PostgreSQL tests: one manager on a shared store, until
told.

Usage: python pg_manager.py STORE_URL POLICY_JSON
Opens a Manager with the tests' short timings and the policy fields in POLICY_JSON (an object:
``max_active_jobs``, ``max_connections_per_host``, ``max_bandwidth``…, which override them),
prints ``ready``, then transfers whatever it claims until its stdin closes (bounded: 120 s),
and closes the manager. Started by ``tests/_support/pg_fixtures.py``'s ``manager_procs``.
"""

from __future__ import annotations

import json
import select
import sys

import bitsnb


def main() -> int:
    """Run a manager on the store named on the command line until stdin closes."""
    fields = {
        "min_retry_delay_floor": 0.05,
        "poll_interval": 0.05,
        "lease_seconds": 2.0,
        "checkpoint_interval": 0.1,
        "connect_timeout": 5.0,
        "read_timeout": 60.0,
        **json.loads(sys.argv[2]),
    }
    with bitsnb.Manager(store=sys.argv[1], policy=bitsnb.Policy(**fields)):
        print("ready", flush=True)
        readable, _, _ = select.select([sys.stdin], [], [], 120)
        if readable:
            sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
