"""The soak driver: plan jobs, run worker processes under SIGKILL, then check every byte.

The fault-injecting server runs here, in the driver, so it outlives the kills. Jobs are created
through a Manager that never transfers (``max_active_jobs=0``) and is closed before the first
worker starts; workers (``_worker.py``) just keep a Manager open on the store. At random moments
the driver SIGKILLs a worker and starts another, at times runs two at once, asks a worker to
cancel a job or to complete the TRANSFERRED ones. Then it checks: every job that could finish is
ACKNOWLEDGED with files whose SHA-256 is that of the server's CURRENT content, no temporary
file is left, and the store is sound (SQLite: ``PRAGMA integrity_check``; PostgreSQL: the
checks of ``_store_check``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import bitsnb
from bitsnb import JobPriority, JobState
from bitsnb.testing import FileServer

from ._faulty_server import FaultyFiles
from ._store_check import Store, store_soundness, store_states

WORKER = Path(__file__).with_name("_worker.py")
CANCEL_SUFFIX = "-cancel"  # the worker's sweep leaves these alone
KIB, MIB = 1024, 1024 * 1024
_ACTIVE = frozenset(
    {
        JobState.QUEUED,
        JobState.CONNECTING,
        JobState.TRANSFERRING,
        JobState.TRANSIENT_ERROR,
        JobState.SUSPENDED,
    }
)
BY_DESIGN_CODES = frozenset({0x80200013})  # BG_E_INSUFFICIENT_RANGE_SUPPORT (server ignored Range)


@dataclass
class SoakConfig:
    """What one soak round does; the defaults are the CI version (bounded, seed fixed)."""

    workdir: Path
    seed: int = 20240601
    jobs: int = 150
    min_size: int = 1 * KIB
    max_size: int = 2 * MIB
    kills: int = 8
    kill_gap: tuple[float, float] = (0.2, 0.9)  # seconds between chaos actions
    cancel_share: float = 0.05  # jobs created to be cancelled mid-soak
    no_range_share: float = 0.03  # jobs whose server refuses a resume (fatal by design)
    late_share: float = 0.4  # jobs created SUSPENDED and resumed by a worker during the kills
    overlap_share: float = 0.35  # chance per chaos step of a second manager when one runs
    settle_timeout: float = 150.0  # bound on waiting for every job to settle after the kills
    store: str | None = None  # a ``postgresql://`` URL; None: ``workdir/jobs.db`` (SQLite)
    # PostgreSQL: jobs shared (``share``) instead of resumed, 12-30 files each, whose files the
    # workers claim in batches of ``batch_files`` (each worker runs a ``BatchRunner``)
    shared_share: float = 0.0
    batch_files: int = 4
    round: int = 0


@dataclass
class PlannedJob:
    """A job as the driver planned it."""

    index: int
    name: str
    priority: JobPriority
    files: list[tuple[str, Path]]  # (server name, local path)
    role: str  # "deliver", "cancel" or "no-range"
    late: bool = False  # created SUSPENDED; a worker resumes it while the kills go on
    job_id: uuid.UUID | None = None
    shared: bool = False  # shared (its files claimed in batches), not resumed


@dataclass
class SoakReport:
    """What a soak did and found; ``ok`` only when nothing was lost or corrupted."""

    seed: int
    jobs: int = 0
    files: int = 0
    bytes_total: int = 0
    delivered_jobs: int = 0
    delivered_files: int = 0
    delivered_bytes: int = 0
    completed_during_soak: int = 0
    cancelled_on_purpose: int = 0
    cancelled_during_soak: int = 0
    by_design: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    restarts: int = 0
    overlaps: int = 0  # times a second manager was started while one was running
    shared_jobs: int = 0  # jobs whose files were claimed in batches
    batch_kills: int = 0  # kills of a worker that held a claimed batch
    overlapping_claims: list[str] = field(default_factory=list)  # a file in two live batches
    overlapping_fetches: list[str] = field(default_factory=list)  # a file fetched twice at once
    bytes_sent: int = 0
    bytes_resent: int = 0
    bytes_abandoned: int = 0  # sent for jobs that were cancelled or failed by design
    lost: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    temp_left: list[str] = field(default_factory=list)
    integrity: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kill_phase: float = 0.0  # seconds from the first worker's start to the last kill
    rounds: int = 0

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing corrupted, nothing left behind, the store sound."""
        return (
            not self.lost
            and not self.overlapping_claims
            and not self.overlapping_fetches
            and not self.corrupted
            and not self.temp_left
            and self.integrity == "ok"
            and not self.problems
        )

    def merge(self, other: SoakReport) -> None:
        """Add another round's figures to these."""
        for name in (
            "jobs",
            "files",
            "bytes_total",
            "delivered_jobs",
            "delivered_files",
            "delivered_bytes",
            "completed_during_soak",
            "cancelled_on_purpose",
            "cancelled_during_soak",
            "kills",
            "restarts",
            "overlaps",
            "shared_jobs",
            "batch_kills",
            "bytes_sent",
            "bytes_resent",
            "bytes_abandoned",
            "seconds",
            "kill_phase",
            "rounds",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.by_design.update(other.by_design)
        self.faults.update(other.faults)
        for name in (
            "lost",
            "corrupted",
            "temp_left",
            "problems",
            "overlapping_claims",
            "overlapping_fetches",
        ):
            getattr(self, name).extend(getattr(other, name))
        if self.integrity in ("", "ok"):
            self.integrity = other.integrity

    def format(self) -> str:
        """The human-readable report."""
        faults = "\n".join(f"    {label:<48} {n:>6}" for label, n in sorted(self.faults.items()))
        design = ", ".join(f"{code} x{n}" for code, n in sorted(self.by_design.items())) or "none"
        lines = [
            f"soak seed={self.seed} rounds={self.rounds} time={self.seconds:.1f} s",
            f"  jobs                 {self.jobs} ({self.files} files, {_mib(self.bytes_total)})",
            f"  delivered            {self.delivered_jobs} jobs, {self.delivered_files} files, "
            f"{_mib(self.delivered_bytes)} (SHA-256 of the server's current content)",
            f"    completed by a worker during the soak: {self.completed_during_soak}",
            f"  cancelled on purpose {self.cancelled_on_purpose} "
            f"({self.cancelled_during_soak} by a worker during the soak)",
            f"  could not finish (by design): {sum(self.by_design.values())} [{design}]",
            f"  faults injected (hits)  {sum(self.faults.values())}",
            faults,
            f"  kills {self.kills} (in the first {self.kill_phase:.1f} s), "
            f"restarts {self.restarts}, two managers at once {self.overlaps} times",
            f"  bytes sent {_mib(self.bytes_sent)}; re-sent {_mib(self.bytes_resent)} "
            f"(sent for delivered files beyond one copy); "
            f"abandoned {_mib(self.bytes_abandoned)} (cancelled / by-design jobs)",
            f"  shared jobs {self.shared_jobs} (files claimed in batches); kills of a worker"
            f" holding a batch {self.batch_kills}; a file in two live batches"
            f" {len(self.overlapping_claims)} times, fetched twice at once"
            f" {len(self.overlapping_fetches)} times",
            f"  store sound: {self.integrity}",
            f"  lost {len(self.lost)}, corrupted {len(self.corrupted)}, "
            f"temporary files left {len(self.temp_left)}",
        ]
        for title, items in (
            ("LOST", self.lost),
            ("CORRUPTED", self.corrupted),
            ("TEMP LEFT", self.temp_left),
            ("PROBLEM", self.problems),
            ("CLAIMED TWICE", self.overlapping_claims),
            ("FETCHED TWICE AT ONCE", self.overlapping_fetches),
        ):
            lines.extend(f"  {title}: {item}" for item in items[:20])
        lines.append("  RESULT: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


# -- workers ------------------------------------------------------------------------------------
class Worker:
    """One worker process, its stdout lines collected by a thread, its stderr in a log file."""

    def __init__(self, store: Store, log_path: Path, max_seconds: float, batches: int = 0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost")
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            env.pop(name, None)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(store),
                "--max-seconds",
                str(max_seconds),
                *(["--batches", str(batches)] if batches else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path.with_suffix(".out"), "w") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def send(self, command: str) -> None:
        """Write one command line; a worker that just died is not an error."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL, and reap."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.reap(10)

    def quit(self, timeout: float = 30) -> bool:
        """Ask for a clean close; True if it exited by itself in time (else it is killed)."""
        self.send("quit")
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        self.reap(10)
        return self.proc.returncode == 0

    def reap(self, timeout: float) -> None:
        """Wait for the process and its reader thread; close the log."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self._reader.join(timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        self._log.close()

    def wait_ready(self, timeout: float) -> bool:
        """Wait (bounded) until the worker says its manager is open; False if it did not."""
        deadline = time.monotonic() + timeout
        while self.count("READY") == 0:
            if time.monotonic() > deadline or not self.alive:
                return False
            time.sleep(0.01)
        return True

    def count(self, prefix: str) -> int:
        """How many answer lines start with *prefix*."""
        return len(self.matching(prefix))

    def matching(self, prefix: str) -> list[str]:
        """The answer lines that start with *prefix*."""
        with self._lock:
            return [line for line in self.lines if line.startswith(prefix)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- the soak ------------------------------------------------------------------------------------
def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def plan_jobs(cfg: SoakConfig, files: FaultyFiles, dest: Path) -> list[PlannedJob]:
    """Draw the jobs (priorities, 1-3 files, sizes, roles) and serve their files with faults."""
    rng = random.Random(f"{cfg.seed}:{cfg.round}")
    jobs: list[PlannedJob] = []
    for i in range(cfg.jobs):
        draw = rng.random()
        role = (
            "cancel"
            if draw < cfg.cancel_share
            else "no-range"
            if draw < cfg.cancel_share + cfg.no_range_share
            else "deliver"
        )
        name = f"soak-r{cfg.round}-{i:04d}" + (CANCEL_SUFFIX if role == "cancel" else "")
        # (drawn only in the shared mode: the other soaks' plans stay as they were)
        shared = cfg.shared_share > 0 and role == "deliver" and rng.random() < cfg.shared_share
        nfiles = rng.randint(12, 30) if shared else rng.choices((1, 2, 3), weights=(60, 25, 15))[0]
        pairs: list[tuple[str, Path]] = []
        for j in range(nfiles):
            fname = f"r{cfg.round}-{i:04d}-{j}.bin"
            size = _log_uniform(
                rng, cfg.min_size, min(cfg.max_size, 256 * KIB) if shared else cfg.max_size
            )
            files.add(fname, size, rng, no_range=role == "no-range" and j == 0)
            pairs.append((fname, dest / fname))
        prio = JobPriority(rng.randrange(len(JobPriority)))
        late = rng.random() < cfg.late_share and not shared
        jobs.append(PlannedJob(i, name, prio, pairs, role, late, shared=shared))
    return jobs


def create_jobs(store: Store, server: FileServer, jobs: list[PlannedJob]) -> None:
    """Create every job (and resume the ones not ``late``) through a manager that never
    transfers, then close it."""
    policy = bitsnb.Policy(min_retry_delay_floor=0.05, max_active_jobs=0)
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        for p in jobs:
            job = mgr.create_job(p.name, priority=p.priority)
            job.minimum_retry_delay = 0.2
            job.no_progress_timeout = 300
            job.add_file_set([(server.url(n), str(local)) for n, local in p.files])
            if p.shared:
                from bitsnb.distributed import share

                share(str(store), job.id)
            elif not p.late:
                job.resume()
            p.job_id = job.id


class _Chaos:
    """Kills, restarts and overlapping workers, with the counts the report needs."""

    def __init__(self, cfg: SoakConfig, store: Store, logs: Path) -> None:
        self.cfg = cfg
        self.store = store
        self.logs = logs
        self.rng = random.Random(f"chaos:{cfg.seed}:{cfg.round}")
        self.live: list[Worker] = []
        self.dead: list[Worker] = []
        self.started = 0
        self.kills = 0
        self.overlaps = 0
        self.problems: list[str] = []
        self.watch: _BatchWatch | None = None

    def start(self, wait: bool = True) -> Worker:
        """A new worker; *wait*: until its manager is open (else it may die while starting)."""
        self.started += 1
        w = Worker(
            self.store,
            self.logs / f"r{self.cfg.round}-worker-{self.started:03d}.log",
            max_seconds=self.cfg.settle_timeout + 600,
            batches=self.cfg.batch_files if self.cfg.shared_share > 0 else 0,
        )
        if self.live:
            self.overlaps += 1
        self.live.append(w)
        if wait and not w.wait_ready(30):
            self.problems.append(f"{w.log_path.name} did not open the store within 30 s")
        return w

    def kill_one(self, w: Worker | None = None) -> None:
        w = w if w is not None else self.rng.choice(self.live)
        self.live.remove(w)
        if self.watch is not None:
            self.watch.killing(w.proc.pid)
        w.kill()
        self.dead.append(w)
        self.kills += 1

    def any_live(self) -> Worker:
        """A random running worker (a new one if none runs); one that died by itself is a
        problem: only the driver kills workers."""
        for w in [w for w in self.live if not w.alive]:
            self.live.remove(w)
            w.reap(5)
            self.dead.append(w)
            self.problems.append(f"{w.log_path.name} exited by itself ({w.proc.returncode})")
        if not self.live:
            self.start()
        return self.rng.choice(self.live)

    def stop_all(self) -> list[str]:
        problems = self.problems
        for w in self.live:
            if not w.quit():
                problems.append(f"worker {w.log_path.name} did not close cleanly")
            self.dead.append(w)
        self.live = []
        return problems


class _BatchWatch:
    """Samples, every 20 ms while the chaos runs, the live claimed batches (no file in two at
    once) and the server's unfinished requests for the shared jobs' files (none fetched by two
    at once; a request the server holds in a planned stall is left out: it outlives a killed
    client, whose lease has to run out before another claims the file anyway)."""

    def __init__(self, store: str, server: FileServer, names: set[str], report: SoakReport):
        self.store, self.server, self.names, self.report = store, server, names, report
        self.holders: set[int] = set()  # pids holding a live batch at the last sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def killing(self, pid: int) -> None:
        """A worker is about to be killed: count it if it held a batch."""
        if pid in self.holders:
            self.report.batch_kills += 1

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.store, autocommit=True) as conn:
            while not self._stop.wait(0.02):
                self._sample(conn)

    def _sample(self, conn: Any) -> None:
        rows = conn.execute(
            "SELECT job_id, owner, idxs FROM bitsnb_batches"
            " WHERE expires >= extract(epoch from clock_timestamp())"
        ).fetchall()
        seen: dict[tuple[str, int], str] = {}
        for job_id, owner, idxs in rows:
            for i in idxs:
                other = seen.setdefault((job_id, i), owner)
                if other != owner and len(self.report.overlapping_claims) < 20:
                    self.report.overlapping_claims.append(f"{job_id}#{i}: {other} and {owner}")
        # files parked until their retry is due (``bitsnb:retry``) are held by no process
        self.holders = {int(str(o).split(":")[1]) for _, o, _ in rows if o != "bitsnb:retry"}
        open_gets = Counter(
            r.path
            for r in self.server.requests
            if r.method == "GET"
            and not r.finished
            and r.path in self.names
            and r.fault not in ("stall", "stall_after")
        )
        for path, n in open_gets.items():
            if n > 1 and len(self.report.overlapping_fetches) < 20:
                self.report.overlapping_fetches.append(f"{path}: {n} requests at once")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _settled(states: dict[uuid.UUID, JobState], ids: list[uuid.UUID]) -> bool:
    return all(states.get(i) not in _ACTIVE for i in ids)


def _finish_and_check(
    store: Store, jobs: list[PlannedJob], files: FaultyFiles, dest: Path, report: SoakReport
) -> set[uuid.UUID]:
    """complete() what is TRANSFERRED, cancel the rest, check every file; the delivered ids."""
    refused = files.range_refused()
    delivered: set[uuid.UUID] = set()
    policy = bitsnb.Policy(min_retry_delay_floor=0.05, max_active_jobs=0)
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        handles = {j.id: j for j in mgr.enum_jobs(include_finished=True)}
        for p in jobs:
            job = handles.get(p.job_id) if p.job_id is not None else None
            if job is None:
                report.lost.append(f"{p.name}: not in the store")
                continue
            state = job.state
            if p.role == "cancel":
                if state is not JobState.CANCELLED:
                    if state.is_final:
                        report.problems.append(f"{p.name}: meant to be cancelled, {state.name}")
                        continue
                    job.cancel()
                report.cancelled_on_purpose += 1
                continue
            if state is JobState.ERROR:
                err = job.error
                first = p.files[0][0]
                if (
                    p.role == "no-range"
                    and err is not None
                    and err.code in BY_DESIGN_CODES
                    and first in refused
                ):
                    report.by_design[f"{err.name} 0x{err.code:08X}"] += 1
                else:
                    report.lost.append(f"{p.name}: ERROR {err}")
                job.cancel()
                continue
            if state is JobState.TRANSFERRED:
                rc = job.complete()
                state = job.state
                if rc != 0 or state is not JobState.ACKNOWLEDGED:
                    report.lost.append(f"{p.name}: complete() gave 0x{rc:08X}, {state.name}")
                    continue
            if state is not JobState.ACKNOWLEDGED:
                report.lost.append(f"{p.name}: ended {state.name} ({job.error})")
                if not state.is_final:
                    job.cancel()
                continue
            delivered.add(job.id)
            report.delivered_jobs += 1
            for name, local in p.files:
                report.delivered_files += 1
                report.delivered_bytes += files.files[name].size
                if not local.is_file():
                    report.corrupted.append(f"{p.name}: {local.name} missing")
                elif _sha256(local) != _sha256(files.server.path(name)):
                    report.corrupted.append(
                        f"{p.name}: {local.name} differs from the server's current content"
                    )
    expected = {local.name for p in jobs if p.job_id in delivered for _, local in p.files}
    for entry in sorted(os.listdir(dest)):
        if entry.startswith(".BIT"):
            report.temp_left.append(str(dest / entry))
        elif entry not in expected:
            report.problems.append(f"unexpected file {dest / entry} (cancelled or failed job)")
    return delivered


def run_round(cfg: SoakConfig, server: FileServer, files: FaultyFiles) -> SoakReport:
    """One soak round on ``cfg.store`` or ``cfg.workdir/jobs.db`` (kept across rounds); returns
    its report."""
    t0 = time.monotonic()
    report = SoakReport(seed=cfg.seed, rounds=1)
    store: Store = cfg.store if cfg.store is not None else cfg.workdir / "jobs.db"
    dest = cfg.workdir / "dest" / f"round-{cfg.round}"
    logs = cfg.workdir / "logs"
    dest.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)

    jobs = plan_jobs(cfg, files, dest)
    create_jobs(store, server, jobs)
    ids = [p.job_id for p in jobs if p.job_id is not None]
    report.jobs = len(jobs)
    report.files = sum(len(p.files) for p in jobs)
    report.bytes_total = sum(files.files[n].size for p in jobs for n, _ in p.files)

    chaos = _Chaos(cfg, store, logs)
    shared_names = {n for p in jobs if p.shared for n, _ in p.files}
    report.shared_jobs = sum(p.shared for p in jobs)
    if shared_names and cfg.store is not None:
        chaos.watch = _BatchWatch(cfg.store, server, shared_names, report)
    to_cancel = [p for p in jobs if p.role == "cancel"]
    chaos.rng.shuffle(to_cancel)
    late = [p for p in jobs if p.late]
    chaos.rng.shuffle(late)
    # released a batch per chaos step; the last batch waits for the end of the kills, so the
    # work cannot run out before every kill has happened
    batch = max(1, math.ceil(len(late) / (cfg.kills * 2)))
    to_release = list(late)
    try:
        t_kills = time.monotonic()
        chaos.start()
        # kill phase: a chaos action every kill_gap seconds until the kills are done
        while chaos.kills < cfg.kills:
            time.sleep(chaos.rng.uniform(*cfg.kill_gap))
            if _settled(store_states(store), ids):
                break
            rng = chaos.rng
            if rng.random() < 0.1:
                early = chaos.start(wait=False)  # killed while it opens the store
                time.sleep(rng.uniform(0.05, 0.8))
                chaos.kill_one(early)
            elif chaos.live and rng.random() < 0.75:
                chaos.kill_one()
                if not chaos.live and rng.random() < 0.5:
                    time.sleep(rng.uniform(0.0, 0.6))  # a while with nobody running
            if not chaos.live:
                chaos.start()
            elif len(chaos.live) < 2 and rng.random() < cfg.overlap_share:
                chaos.start()  # two managers on the store at once
            if len(to_release) > batch:
                now, to_release = to_release[:batch], to_release[batch:]
                chaos.any_live().send("resume " + " ".join(str(p.job_id) for p in now))
            if to_cancel and rng.random() < 0.35:
                chaos.any_live().send(f"cancel {to_cancel.pop().job_id}")
            if rng.random() < 0.3:
                chaos.any_live().send("sweep")
        report.kill_phase = time.monotonic() - t_kills
        # settle phase: no more kills; resume what is left, sweep, until every job has settled
        deadline = time.monotonic() + cfg.settle_timeout
        while not _settled(states := store_states(store), ids):
            if time.monotonic() > deadline:
                stuck = Counter(states[i].name for i in ids if states.get(i) in _ACTIVE)
                report.problems.append(f"jobs did not settle in {cfg.settle_timeout} s: {stuck}")
                break
            # late jobs a killed worker never resumed (or not yet released) are asked again
            waiting = [
                p
                for p in late
                if p.job_id is not None and states.get(p.job_id) is JobState.SUSPENDED
            ]
            worker = chaos.any_live()
            if waiting:
                worker.send("resume " + " ".join(str(p.job_id) for p in waiting))
            worker.send("sweep")
            time.sleep(0.5)
        chaos.any_live().send("sweep")  # one more, then the workers are asked to quit
    finally:
        if chaos.watch is not None:
            chaos.watch.stop()
        report.problems.extend(chaos.stop_all())
    report.kills = chaos.kills
    report.restarts = chaos.started - 1
    report.overlaps = chaos.overlaps
    workers = chaos.dead
    completed = [line for w in workers for line in w.matching("completed ")]
    # two managers may both complete a job (both see it TRANSFERRED): count jobs, not calls
    report.completed_during_soak = len({line.split()[1] for line in completed})
    report.problems.extend(
        f"a worker's complete() was partial: {line}"
        for line in completed
        if not line.split()[2] == "0x00000000"
    )
    report.cancelled_during_soak = len(
        {line.split()[1] for w in workers for line in w.matching("cancelled ")}
    )
    for w in workers:
        text = w.log_path.read_text(errors="replace")
        if "Traceback" in text or "ERROR" in text:
            report.problems.append(f"{w.log_path.name} logged errors: {text.strip()[-600:]}")

    delivered = _finish_and_check(store, jobs, files, dest, report)
    if not report.ok:
        with open(logs / f"r{cfg.round}-requests.txt", "w") as fh:
            for rec in server.requests:
                fh.write(
                    f"{rec.path} {rec.method} range={rec.range} if-range={rec.if_range} "
                    f"status={rec.status} fault={rec.fault} body={rec.body_bytes_sent}\n"
                )
    report.integrity = store_soundness(store)

    names = {n for p in jobs for n, _ in p.files}
    report.faults = files.hits()
    sent = {n: server.bytes_sent(n) for n in names}
    report.bytes_sent = sum(sent.values())
    for p in jobs:
        for name, _ in p.files:
            if p.job_id in delivered:
                report.bytes_resent += sent[name] - files.files[name].size
            else:
                report.bytes_abandoned += sent[name]
    report.seconds = time.monotonic() - t0
    return report


def run_soak(
    cfg: SoakConfig, minutes: float | None = None, echo: Callable[[str], None] | None = None
) -> SoakReport:
    """One round (``minutes=None``, the CI version) or rounds until *minutes* have passed.

    One server for every round; each round has new files, new jobs and the same store, and
    stops the soak when it fails. Files of a passed round are deleted to bound the disk used.
    """
    total = SoakReport(seed=cfg.seed)
    t0 = time.monotonic()
    with FileServer() as server:
        files = FaultyFiles(server)
        rnd = 0
        while True:
            files.forget()
            report = run_round(dataclasses.replace(cfg, round=rnd), server, files)
            if echo is not None:
                echo(f"-- round {rnd}\n{report.format()}")
            total.merge(report)
            rnd += 1
            if not report.ok or minutes is None or time.monotonic() - t0 >= minutes * 60:
                break
            shutil.rmtree(cfg.workdir / "dest" / f"round-{rnd - 1}", ignore_errors=True)
    total.seconds = time.monotonic() - t0
    return total
