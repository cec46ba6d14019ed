"""Benchmark: what cluster-wide limits cost the PostgreSQL store (issue 16, point 4).

Run from the repository root: ``python -m bench.pg_limits [--managers 3,20,50] [--rounds N]``.
It starts its own PostgreSQL (the tests' helper, ``tests/_support/postgres.py``) and stops it
at the end. For each number of managers, every manager (a ``PgStore`` of its own, one thread
each) refreshes its shares of one host's slots and of the background cap *rounds* times as
fast as it can, all at once: printed, the refreshes per second the store took together, the
median and p95 of one refresh (the turns under the advisory lock included), and whether the
shares held at the end add up to more than the limits.
A manager refreshes every ``lease_seconds / 3`` (5 s by default): 50 managers ask for 10 a
second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _support.postgres import Postgres, find_pg_bin, running_postgres  # noqa: E402

import bitsnb  # noqa: E402
from bitsnb._limit_shares import BANDWIDTH, Want, host_key  # noqa: E402
from bitsnb._store_api import StoreURL  # noqa: E402
from bitsnb._store_pg import PgStore  # noqa: E402

SLOTS, CAP = 8, 10_000_000.0
HOST = host_key("http://mirror.example:80")


def _wants(demand: int, in_use: int) -> list[Want]:
    return [
        Want(HOST, SLOTS, demand, in_use, whole=True),
        Want(BANDWIDTH, CAP, demand, 0.0, whole=False),
    ]


def refreshes(pg: Postgres, managers: int, rounds: int) -> None:
    """*managers* stores refreshing *rounds* times each, all at once."""
    url = pg.new_database()
    bitsnb.Manager(store=url).close()
    stores = [PgStore(StoreURL(url), f"m{i}", 10.0) for i in range(managers)]
    times: list[float] = []
    over: list[str] = []
    lock = threading.Lock()

    def run(i: int, store: PgStore) -> None:
        granted = 0.0
        for r in range(rounds):
            demand = 1 + (i + r) % 4
            t0 = time.perf_counter()
            got = store.share_limits(_wants(demand, int(min(granted, demand))), 15.0)
            took = time.perf_counter() - t0
            granted = got[HOST]
            with lock:
                times.append(took)

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(stores)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    import psycopg

    with psycopg.connect(url) as conn:
        for key, held in conn.execute("SELECT key, sum(held) FROM bitsnb_limits GROUP BY key"):
            limit = SLOTS if key == HOST else CAP
            if held > limit + 1e-6:
                over.append(f"{key}: {held} > {limit}")
    for s in stores:
        s.close()
    times.sort()
    p95 = times[int(0.95 * (len(times) - 1))]
    print(
        f"{managers:3d} managers × {rounds} refreshes: {len(times) / wall:7.0f} refreshes/s"
        f" together; one refresh median {statistics.median(times) * 1e3:.2f} ms,"
        f" p95 {p95 * 1e3:.2f} ms; over the limit at the end: {over or 'never'}"
    )


def main() -> None:
    """Start PostgreSQL, run each size, stop it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", default="3,20,50", help="comma-separated counts")
    parser.add_argument("--rounds", type=int, default=200, help="refreshes per manager")
    args = parser.parse_args()
    bin_dir = find_pg_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed (apt-get install postgresql)")
    os.environ.pop("BITSNB_STORE", None)
    with tempfile.TemporaryDirectory(prefix="bitsnb-pgl-") as tmp, running_postgres(bin_dir) as pg:
        os.environ["BITSNB_HOME"] = str(Path(tmp) / "home")
        print(f"bitsnb {bitsnb.__file__}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
        for n in (int(x) for x in args.managers.split(",")):
            refreshes(pg, n, args.rounds)


if __name__ == "__main__":
    main()
