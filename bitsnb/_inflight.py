"""How many of a job's files to keep in flight: enough requests to cover the host's round trip.

Small files are latency-bound on a real network: 2,000 files at 50 ms take 25 s with 4 requests
in flight and 6 s with 16 (issue 13). On loopback, more in flight only adds contention (httpcore's
pool scan, the loop's own work), so a host whose round trip is within the local work of one file
keeps ``Policy.files_in_flight``. Beyond it, one more request in flight per ``LOCAL_WORK`` of round
trip keeps the loop busy while the requests travel, up to ``max_connections_per_host``.
"""

from __future__ import annotations

import math

__all__ = ["LOCAL_WORK", "files_in_flight"]

LOCAL_WORK = 0.001
"""Seconds of local work per small file (request, write, fsync, record: ~1 ms on loopback)."""


def files_in_flight(base: int, rtt: float | None, cap: int) -> int:
    """Files of one job to have in flight for a host *rtt* seconds away (None: unknown).

    *base* is ``Policy.files_in_flight`` (never fewer), *cap* ``max_connections_per_host``.
    """
    base = max(1, base)
    if rtt is None or rtt <= LOCAL_WORK:
        return base
    want = base + math.ceil(rtt / LOCAL_WORK)
    return max(base, min(want, cap))
