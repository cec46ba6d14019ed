"""Benchmark: the job store on PostgreSQL beside SQLite (issue 16's targets).

Run from the repository root: ``python -m bench.pg_queue [--files N] [--api-files N]
[--jobs N] [--idle S]``. It starts its own PostgreSQL (the tests' helper,
``tests/_support/postgres.py``: Debian's server in a temporary folder, on a unix socket,
``fsync=off``) and stops it at the end. Printed, one line each:

- enqueue N files (default 1,000,000) into one job: the store's save of the job's files (what
  ``add_file_set`` ends in), and ``job.add_file_set`` through a ``Manager`` (smaller N);
- claim + complete with no network: the files of one job claimed and ended in batches of
  1,000 (PostgreSQL's ``claim_files``/``finish_files``), and the job-lease path both stores
  have (claim the job, save each batch of files marked transferred);
- an idle manager's CPU over ``--idle`` seconds (a child process, its own CPU time);
- recovery: a manager process with a file half fetched is SIGKILLed (same host: its dead pid
  frees the lease) or SIGSTOPped (as a machine cut off: only the lease's expiry frees it);
  seconds until another manager's request for that file reaches the server, beside
  2 × ``lease_seconds``;
- the jobs frame of 100,000 jobs: ``bitsnb.jobs_frame(mgr)`` from a manager that runs nothing
  (the client's kernel): one query of the store (``Manager.job_table``) and ``table_to_frame``;
  beside it the job views' way, read from the store (``load_jobs``, what a manager does when
  it opens) and ``jobs_to_frame`` of a manager's jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _support.postgres import Postgres, find_pg_bin, running_postgres  # noqa: E402

import bitsnb  # noqa: E402
from bitsnb._records import FileRecord, JobRecord  # noqa: E402
from bitsnb._store import Store  # noqa: E402
from bitsnb._store_api import JobStore, StoreURL  # noqa: E402
from bitsnb._store_pg import PgStore  # noqa: E402
from bitsnb.testing import Fault, FileServer  # noqa: E402

CHILD = ROOT / "tests" / "_support" / "pg_manager.py"
LEASE_SECONDS = 2.0  # the child manager's (tests/_support/pg_manager.py)
BATCH = 1000
MIB = 1 << 20

IDLE_CHILD = """
import sys, time, bitsnb
with bitsnb.Manager(store=sys.argv[1]):
    time.sleep(1.0)  # opened and settled
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(float(sys.argv[2]))
    print((time.process_time() - cpu) / (time.monotonic() - wall))
"""


def _stores(folder: Path, pg: Postgres) -> Iterator[tuple[str, str]]:
    """(label, store location) of a fresh SQLite file and a fresh PostgreSQL database."""
    yield "SQLite    ", str(folder / f"s{uuid.uuid4().hex[:8]}.db")
    yield "PostgreSQL", pg.new_database()


def _open(location: str, writer: str = "bench:1:a") -> JobStore:
    if location.startswith("postgresql://"):
        return PgStore(StoreURL(location), writer, 10.0)
    return Store(location, writer, 10.0)


def _new_job(store: JobStore, state: bitsnb.JobState = bitsnb.JobState.QUEUED) -> JobRecord:
    rec = JobRecord(id=uuid.uuid4(), display_name="big", type=bitsnb.JobType.DOWNLOAD, owner="me")
    rec.state = state
    store.insert_job(rec)
    return rec


def _files(n: int, folder: str = "/data") -> list[FileRecord]:
    return [
        FileRecord(i, f"http://h.example/f/{i}.bin", f"{folder}/{i}.bin", f"{folder}/.{i}.tmp")
        for i in range(n)
    ]


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} files/s ({n:,} in {seconds:.2f} s)"


def enqueue(folder: Path, pg: Postgres, n: int, api_n: int) -> None:
    """The store's save of *n* new files into one job; ``add_file_set`` of *api_n*."""
    for label, where in _stores(folder, pg):
        store = _open(where)
        rec = _new_job(store)
        files = _files(n)
        start = time.perf_counter()
        assert store.save_job(rec, files)
        print(f"enqueue, store save     {label}: {_rate(n, time.perf_counter() - start)}")
        store.close()
    for label, where in _stores(folder, pg):
        pairs = [
            (f"http://h.example/f/{i}.bin", str(folder / "d" / f"{i}.bin")) for i in range(api_n)
        ]
        with bitsnb.Manager(store=where, policy=bitsnb.Policy(max_active_jobs=0)) as mgr:
            job = mgr.create_job("big")
            start = time.perf_counter()
            job.add_file_set(pairs)
            seconds = time.perf_counter() - start
        print(f"enqueue, add_file_set   {label}: {_rate(api_n, seconds)}")


def _mark(files: list[FileRecord]) -> list[FileRecord]:
    for f in files:
        f.bytes_total = f.bytes_transferred = 16384
        f.transferred = True
    return files


def claim_complete(folder: Path, pg: Postgres, n: int) -> None:
    """Files of one job claimed and ended in batches, no transfer in between."""
    url = pg.new_database()
    store = PgStore(StoreURL(url), "bench:1:a", 10.0)
    rec = _new_job(store)
    assert store.save_job(rec, _files(n))
    start, done, ended = time.perf_counter(), 0, False
    for _ in range(n // BATCH + 3):  # bounded
        token, files = store.claim_files(rec.id, BATCH, 60.0)
        if not files:
            break
        written, ended = store.finish_files(rec.id, token, _mark(files))
        done += written
    seconds = time.perf_counter() - start
    assert ended and done == n
    print(f"claim+complete, files   PostgreSQL: {_rate(done, seconds)}")
    store.close()
    for label, where in _stores(folder, pg):
        store = _open(where)
        rec = _new_job(store)
        files = _files(n)
        assert store.save_job(rec, files)
        start = time.perf_counter()
        version = store.claim(rec.id, 60.0)
        assert version is not None
        rec.version = version
        for first in range(0, n, BATCH):
            assert store.save_job(rec, _mark(files[first : first + BATCH]))
        print(f"claim+complete, job     {label}: {_rate(n, time.perf_counter() - start)}")
        store.close()


def idle_cpu(folder: Path, pg: Postgres, seconds: float) -> None:
    """Each store's idle manager, in a child process of its own, side by side."""
    procs = [
        (
            label,
            subprocess.Popen(
                [sys.executable, "-c", IDLE_CHILD, where, str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
                env=_child_env(),
            ),
        )
        for label, where in _stores(folder, pg)
    ]
    for label, proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        print(
            f"idle manager CPU        {label}: {float(out) * 100:>6.2f} % of a core over {seconds:.0f} s"
        )


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@contextlib.contextmanager
def _manager_process(where: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), where],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _wait(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark's process did not get there")
        time.sleep(0.005)


def recovery(folder: Path, pg: Postgres) -> None:
    """A manager holding a half-fetched file is killed or stopped; the other takes it on."""
    for how in (signal.SIGKILL, signal.SIGSTOP):
        for label, where in _stores(folder, pg):
            bitsnb.Manager(store=where).close()  # the schema, before two processes race for it
            with FileServer() as server:
                server.add_random_file("v.bin", 8 * MIB, seed=1)
                server.inject("v.bin", Fault.stall_after(2 * MIB, 30))
                with _manager_process(where) as first:
                    with bitsnb.Manager(store=where, policy=bitsnb.Policy(max_active_jobs=0)) as m:
                        job = m.create_job("victim")
                        job.add_file(server.url("v.bin"), folder / f"v{uuid.uuid4().hex}.bin")
                        job.resume()
                        _wait(lambda: len(server.requests) == 1, 30)
                        _wait(lambda: server.requests[0].body_bytes_sent >= 2 * MIB, 30)
                        with _manager_process(where):
                            first.send_signal(how)
                            cut = time.monotonic()
                            _wait(lambda: len(server.requests) >= 2, 60)
                            seconds = time.monotonic() - cut
                            with contextlib.suppress(bitsnb.BitsError):
                                job.cancel()
                name = "SIGKILL" if how == signal.SIGKILL else "SIGSTOP"
                print(
                    f"recovery after {name}  {label}: {seconds:>6.2f} s until its file runs"
                    f" again (2 x lease = {2 * LEASE_SECONDS:.0f} s)"
                )


def jobs_frame(folder: Path, pg: Postgres, n: int) -> None:
    """*n* jobs (made in the database by one statement), read back and framed."""
    from bitsnb.frames import jobs_to_frame, table_to_frame

    for label, where in _stores(folder, pg):
        store = _open(where)
        _new_job(store, bitsnb.JobState.SUSPENDED)
        store.close()
        _copy_jobs(where, n - 1)
        store = _open(where, "bench:1:reader")
        start = time.perf_counter()
        loaded = store.load_jobs()
        read_s = time.perf_counter() - start
        store.close()
        assert len(loaded) == n
        with bitsnb.Manager(store=where, policy=bitsnb.Policy(max_active_jobs=0)) as mgr:
            best_read = best_frame = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                table = mgr.job_table(all_users=True)
                mid = time.perf_counter()
                frame = table_to_frame(table)
                end = time.perf_counter()
                if end - start < best_read + best_frame:
                    best_read, best_frame = mid - start, end - mid
            assert len(frame) == n, len(frame)
            print(
                f"jobs_frame(mgr) of {n:,} {label}: job_table {best_read:.2f} s + table_to_frame"
                f" {best_frame:.2f} s = {best_read + best_frame:.2f} s (best of 3)"
            )
            jobs = list(mgr.enum_jobs(all_users=True))
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                frame = jobs_to_frame(jobs)
                best = min(best, time.perf_counter() - start)
        assert len(frame) == n, (len(frame), len(jobs))
        print(
            f"views' frame of {n:,} {label}: load_jobs {read_s:.2f} s + jobs_to_frame {best:.2f} s"
            f" = {read_s + best:.2f} s"
        )


def _copy_jobs(where: str, n: int) -> None:
    """*n* copies of the one job row, each with an id of its own."""
    if where.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(where, autocommit=True) as conn:
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name='jobs'"
                    " AND column_name NOT IN ('id', 'seq') ORDER BY ordinal_position"
                )
            ]
            names = ", ".join(cols)
            conn.execute(
                f"INSERT INTO jobs (id, {names}) SELECT gen_random_uuid()::text, {names}"
                " FROM jobs, generate_series(1, %s)",
                (n,),
            )
        return
    import sqlite3

    db = sqlite3.connect(where)
    cols = [r[1] for r in db.execute("PRAGMA table_info(jobs)") if r[1] != "id"]
    names = ", ".join(cols)
    h = "lower(hex(randomblob(16)))"
    uid = (
        "substr(h,1,8)||'-'||substr(h,9,4)||'-'||substr(h,13,4)||'-'||substr(h,17,4)||'-'"
        "||substr(h,21,12)"
    )
    db.execute(
        f"INSERT INTO jobs (id, {names}) SELECT {uid}, {names} FROM jobs,"
        f" (WITH RECURSIVE g(k) AS (SELECT 1 UNION ALL SELECT k+1 FROM g WHERE k < ?)"
        f" SELECT k, {h} AS h FROM g)",
        (n,),
    )
    db.commit()
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_queue", description=__doc__)
    parser.add_argument("--files", type=int, default=1_000_000, help="files enqueued in one job")
    parser.add_argument("--api-files", type=int, default=100_000, help="files by add_file_set")
    parser.add_argument("--claim-files", type=int, default=200_000, help="files claimed+ended")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in the frame")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    parser.add_argument(
        "--only",
        choices=["enqueue", "claim", "idle", "recovery", "frame"],
        action="append",
        help="run only these workloads (repeatable; default: all)",
    )
    args = parser.parse_args()
    bin_dir = find_pg_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed (apt-get install postgresql)")
    os.environ.pop("BITSNB_STORE", None)
    with (
        tempfile.TemporaryDirectory(prefix="bitsnb-pgq-") as tmp,
        running_postgres(bin_dir) as pg,
    ):
        folder = Path(tmp)
        os.environ["BITSNB_HOME"] = str(folder / "home")
        (folder / "d").mkdir()
        print(f"bitsnb {bitsnb.__file__}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
        only = set(args.only or ["enqueue", "claim", "idle", "recovery", "frame"])
        if "enqueue" in only:
            enqueue(folder, pg, args.files, args.api_files)
        if "claim" in only:
            claim_complete(folder, pg, args.claim_files)
        if "idle" in only:
            idle_cpu(folder, pg, args.idle)
        if "recovery" in only:
            recovery(folder, pg)
        if "frame" in only:
            jobs_frame(folder, pg, args.jobs)


if __name__ == "__main__":
    main()
