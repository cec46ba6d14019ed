"""Benchmark: ``bitsnb.distributed.serve`` on a ``distributed.LocalCluster`` over PostgreSQL
beside one manager on SQLite (issue 16's Dask targets).

Run from the repository root under the bench lock: ``flock -x /work/bench.lock python -m
bench.pg_queue_dask [--files N] [--size BYTES] [--workers N] [--idle S] [--only …]``. It starts
its own PostgreSQL (``tests/_support/postgres.py``), an nginx on 127.0.0.1 serving N random
files (``bench/_nginx.py``) and a LocalCluster of worker processes (one thread each), and
stops them at the end. Printed, one line each:

- ``sqlite``: one ``Manager`` on a SQLite file fetches one job of the N files (default
  ``Policy()``): seconds from ``resume()`` to TRANSFERRED, and to ``complete()`` returned;
- ``dask``: the same job on PostgreSQL, ``share(url, job.id)`` in place of ``resume()``, fetched
  by the workers' batches; the ratio to SQLite; each worker's share and CPU, and the CPU of
  PostgreSQL's and nginx's processes over the run (what bounds it);
- ``whole``: the same job ``resume()``d: one worker's manager leases it whole;
- ``idle``: each worker's CPU over ``--idle`` seconds with nothing to claim, with and without
  ``serve()`` (the Dask worker's own cost is the second);
- ``recovery``: a worker holding batches of a shared job is SIGKILLed; seconds until every file
  of its batches is claimed again by another worker (or transferred), beside 2 × lease.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402
import psycopg  # noqa: E402
from _support.postgres import Postgres, find_pg_bin, running_postgres  # noqa: E402
from distributed import Client, LocalCluster, Worker  # noqa: E402

import bitsnb  # noqa: E402
from bitsnb.distributed import serve, share  # noqa: E402

from ._nginx import Nginx  # noqa: E402

PASSIVE = bitsnb.Policy(max_active_jobs=0)  # the notebook's manager: queues and watches only
LEASE = 2.0  # the recovery run's lease_seconds


def _cpu(dask_worker: Worker) -> tuple[int, float]:
    """The worker process's pid and CPU seconds so far (all its threads)."""
    return os.getpid(), time.process_time()


def _written(dask_worker: Worker) -> int:
    plugin = dask_worker.plugins.get("bitsnb-manager")
    runner = getattr(plugin, "batches", None)
    return int(getattr(runner, "written", 0))


def _server_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def _postgres_pids(pg: Postgres) -> list[int]:
    """The bench's own PostgreSQL: its postmaster and every backend it started."""
    main = psutil.Process(int((pg.data / "postmaster.pid").read_text().split()[0]))
    return [main.pid, *(c.pid for c in main.children(recursive=True))]


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


class Bench:
    """The served files, the servers and the cluster of one run."""

    def __init__(self, folder: Path, pg: Postgres, nginx: Nginx, names: list[str]) -> None:
        self.folder = folder
        self.pg = pg
        self.nginx = nginx
        self.names = names
        self.runs = 0

    def pairs(self) -> tuple[Path, list[tuple[str, str]]]:
        """A fresh absolute destination folder and the job's (url, local name) pairs."""
        self.runs += 1
        dest = self.folder / f"dest{self.runs}"
        dest.mkdir()
        return dest, [(self.nginx.url(n), str(dest / n)) for n in self.names]

    def check(self, dest: Path, size: int) -> None:
        """Every file there with its size; a sample of them byte-exact."""
        for n in self.names:
            assert (dest / n).stat().st_size == size, n
        for n in random.Random(1).sample(self.names, min(200, len(self.names))):
            assert (dest / n).read_bytes() == (self.folder / "www" / n).read_bytes(), n
        shutil.rmtree(dest)

    def requests(self) -> Counter[str]:
        """GET requests per file in nginx's access log so far."""
        counts: Counter[str] = Counter()
        for line in self.nginx.access_log.read_text().splitlines():
            counts[line.split(" ", 1)[0].lstrip("/")] += 1
        return counts


def run_sqlite(b: Bench, size: int) -> float:
    dest, pairs = b.pairs()
    with bitsnb.Manager(store=str(b.folder / "one.db")) as mgr:
        job = mgr.create_job("sqlite")
        job.add_file_set(pairs)
        start = time.perf_counter()
        job.resume()
        assert job.wait(timeout=900) is bitsnb.JobState.TRANSFERRED
        moved = time.perf_counter() - start
        assert job.complete() == 0
        done = time.perf_counter() - start
    b.check(dest, size)
    n = len(pairs)
    print(
        f"one manager, SQLite         : {moved:6.2f} s to TRANSFERRED ({n / moved:,.0f} files/s),"
        f" {done:6.2f} s to complete()",
        flush=True,
    )
    return done


def run_cluster(b: Bench, client: Client, size: int, *, shared: bool, sqlite_s: float) -> None:
    url = b.pg.new_database()
    dest, pairs = b.pairs()
    with serve(client, url, bitsnb.Policy()), bitsnb.Manager(store=url, policy=PASSIVE) as mgr:
        job = mgr.create_job("dask")
        job.add_file_set(pairs)
        before = dict(client.run(_cpu).values())
        pg_pids = _postgres_pids(b.pg)
        server0 = _server_cpu(pg_pids), _server_cpu([b.nginx.pid or 0])
        start = time.perf_counter()
        if shared:
            share(url, job.id)
        else:
            job.resume()
        assert job.wait(timeout=900) is bitsnb.JobState.TRANSFERRED
        moved = time.perf_counter() - start
        after = dict(client.run(_cpu).values())
        server1 = _server_cpu(pg_pids), _server_cpu([b.nginx.pid or 0])
        written = sorted(client.run(_written).values())
        assert job.complete() == 0
        done = time.perf_counter() - start
    b.check(dest, size)
    n = len(pairs)
    label = "4 workers, shared job (PG) " if shared else "4 workers, job resumed (PG)"
    cpu = [after[p] - before[p] for p in sorted(before) if p in after]
    print(
        f"{label}: {moved:6.2f} s to TRANSFERRED ({n / moved:,.0f} files/s), {done:6.2f} s to"
        f" complete(); {sqlite_s / done:.2f} x one SQLite manager",
        flush=True,
    )
    print(
        f"    files by batch per worker {written}; worker CPU s {[round(c, 1) for c in cpu]};"
        f" PostgreSQL CPU {server1[0] - server0[0]:.1f} s; nginx CPU {server1[1] - server0[1]:.1f} s",
        flush=True,
    )


def _idle_cpu(client: Client, seconds: float) -> list[float]:
    time.sleep(1.0)  # settled
    before = dict(client.run(_cpu).values())
    wall = time.monotonic()
    time.sleep(seconds)
    after = dict(client.run(_cpu).values())
    elapsed = time.monotonic() - wall
    return [100 * (after[p] - before[p]) / elapsed for p in sorted(before) if p in after]


def run_idle(b: Bench, client: Client, seconds: float) -> None:
    plain = _idle_cpu(client, seconds)
    url = b.pg.new_database()
    with serve(client, url, bitsnb.Policy()):
        served = _idle_cpu(client, seconds)
    print(
        f"idle worker CPU over {seconds:.0f} s, % of a core: with serve() "
        f"{[round(c, 2) for c in served]}; the Dask worker alone {[round(c, 2) for c in plain]}",
        flush=True,
    )


def run_recovery(b: Bench, client: Client, size: int) -> None:
    url = b.pg.new_database()
    dest, pairs = b.pairs()
    policy = bitsnb.Policy(lease_seconds=LEASE)
    with serve(client, url, policy), bitsnb.Manager(store=url, policy=PASSIVE) as mgr:
        job = mgr.create_job("recovery")
        job.add_file_set(pairs)
        share(url, job.id)
        with psycopg.connect(url, autocommit=True) as conn:

            def batches() -> list[tuple[str, list[int]]]:
                return [(str(o), list(i)) for o, i in conn.execute(_BATCHES)]

            def done() -> int:
                row = conn.execute(_DONE, (str(job.id),)).fetchone()
                return int(row[0]) if row else 0

            _wait(lambda: done() >= len(pairs) // 4 and bool(batches()), 300, "a quarter")
            held = batches()
            victim_owner = held[0][0]
            pid = int(victim_owner.split(":")[1])
            files = {i for o, idxs in held if o == victim_owner for i in idxs}
            os.kill(pid, signal.SIGKILL)
            cut = time.monotonic()

            def running_again() -> bool:
                others = {i for o, idxs in batches() if o != victim_owner for i in idxs}
                left = files - others
                if not left:
                    return True
                rows = conn.execute(_TRANSFERRED, (str(job.id), sorted(left))).fetchone()
                return rows is not None and int(rows[0]) == len(left)

            _wait(running_again, 120, "the killed worker's files claimed again")
            seconds = time.monotonic() - cut
        assert job.wait(timeout=900) is bitsnb.JobState.TRANSFERRED
        assert job.complete() == 0
    b.check(dest, size)
    print(
        f"recovery after SIGKILL of a worker holding {len(files)} files: {seconds:.2f} s until"
        f" they run again (2 x lease = {2 * LEASE:.0f} s)",
        flush=True,
    )


_BATCHES = "SELECT owner, idxs FROM bitsnb_batches"
_DONE = "SELECT count(*) FROM files WHERE job_id=%s AND transferred=1"
_TRANSFERRED = "SELECT count(*) FROM files WHERE job_id=%s AND idx = ANY(%s) AND transferred=1"


@contextmanager
def _cluster(workers: int) -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_queue_dask", description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=16 * 1024)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument(
        "--only", choices=["sqlite", "dask", "whole", "idle", "recovery"], action="append"
    )
    args = parser.parse_args()
    only = set(args.only or ["sqlite", "dask", "whole", "idle", "recovery"])
    bin_dir = find_pg_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed (apt-get install postgresql)")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    os.environ.pop("BITSNB_STORE", None)
    with (
        tempfile.TemporaryDirectory(prefix="bitsnb-pgd-") as tmp,
        running_postgres(bin_dir) as pg,
    ):
        folder = Path(tmp)
        os.environ["BITSNB_HOME"] = str(folder / "home")
        www = folder / "www"
        www.mkdir()
        names = [f"f{i:05d}.bin" for i in range(args.files)]
        for n in names:
            (www / n).write_bytes(os.urandom(args.size))
        nginx = Nginx(nginx_bin, www, folder / "nginx").start()
        try:
            print(
                f"bitsnb {bitsnb.__file__}; {os.cpu_count()} cores; load"
                f" {os.getloadavg()[0]:.1f}; {args.files:,} x {args.size:,} B",
                flush=True,
            )
            b = Bench(folder, pg, nginx, names)
            sqlite_s = run_sqlite(b, args.size) if only & {"sqlite", "dask", "whole"} else 1.0
            with _cluster(args.workers) as client:
                if "dask" in only:
                    run_cluster(b, client, args.size, shared=True, sqlite_s=sqlite_s)
                if "whole" in only:
                    run_cluster(b, client, args.size, shared=False, sqlite_s=sqlite_s)
                if "idle" in only:
                    run_idle(b, client, args.idle)
                if "recovery" in only:
                    run_recovery(b, client, args.size)
            print(f"load at the end {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            nginx.stop()


if __name__ == "__main__":
    main()
