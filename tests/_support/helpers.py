"""Bounded waits, a job-event recorder and snapshots of the store and folders, for the core tests."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bitsnb

TIMEOUT = 15.0  # bound on every wait in the core tests


def wait_until(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, message: str = "condition"
) -> None:
    """Poll *predicate* until it is true; AssertionError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        time.sleep(0.005)


def wait_state(
    job: bitsnb.Job, *states: bitsnb.JobState, timeout: float = TIMEOUT
) -> bitsnb.JobState:
    """Wait until *job* is in one of *states* (any state, not only the ones job.wait knows)."""
    wait_until(lambda: job.state in states, timeout, f"job in {[s.name for s in states]}")
    return job.state


@dataclass(frozen=True)
class Seen:
    """One job event as the recorder saw it."""

    job_id: uuid.UUID
    kind: str
    state: bitsnb.JobState
    at: float


class Recorder:
    """Subscribes to a manager and keeps every job event (thread-safe), with its time."""

    def __init__(self, mgr: bitsnb.Manager) -> None:
        self._lock = threading.Lock()
        self.events: list[Seen] = []
        self.unsubscribe = mgr.subscribe(self._on_event)

    def _on_event(self, event: bitsnb.JobEvent) -> None:
        with self._lock:
            self.events.append(Seen(event.job_id, event.kind, event.state, time.monotonic()))

    def mark(self) -> int:
        """Position in the log, to look only at later events."""
        with self._lock:
            return len(self.events)

    def states(self, job_id: uuid.UUID, since: int = 0) -> list[bitsnb.JobState]:
        """States the job entered ("state" events), oldest first."""
        with self._lock:
            return [
                e.state for e in self.events[since:] if e.job_id == job_id and e.kind == "state"
            ]

    def state_events(self, job_id: uuid.UUID | None = None) -> list[Seen]:
        """Every "state" event (of one job, or all)."""
        with self._lock:
            return [
                e
                for e in self.events
                if e.kind == "state" and (job_id is None or e.job_id == job_id)
            ]


def store_rows(store: os.PathLike[str] | str, job_id: uuid.UUID) -> tuple[Any, ...]:
    """The job's row (without the lease columns) and its file rows, read with plain sqlite3."""
    db = sqlite3.connect(f"file:{os.fspath(store)}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id=?", (str(job_id),)).fetchone()
        job = None
        if row is not None:
            job = {k: row[k] for k in row.keys() if k not in ("lease_owner", "lease_expires")}
        files = [
            tuple(r)
            for r in db.execute("SELECT * FROM files WHERE job_id=? ORDER BY idx", (str(job_id),))
        ]
        return job, files
    finally:
        db.close()


def store_state(store: os.PathLike[str] | str, job_id: uuid.UUID) -> bitsnb.JobState:
    """The state the store holds for a job."""
    job, _ = store_rows(store, job_id)
    assert job is not None, f"job {job_id} not in the store"
    return bitsnb.JobState(job["state"])


def folder(path: Path) -> dict[str, int]:
    """Names in *path* (temporary files included) with their sizes."""
    return {p.name: p.stat().st_size for p in sorted(path.iterdir())}


def temp_files(path: Path) -> list[str]:
    """BITS temporary files (``.BIT*.tmp``) in *path*."""
    return sorted(p.name for p in path.iterdir() if p.name.startswith(".BIT"))


def visible_files(path: Path) -> list[str]:
    """Names in *path* that are not BITS temporary files."""
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(".BIT"))


def queue_snapshot(mgr: bitsnb.Manager) -> list[tuple[Any, ...]]:
    """Every job in the queue with its state and files, for before/after comparisons."""
    return [
        (j.id, j.state, j.display_name, tuple((f.remote_name, f.local_name) for f in j.files))
        for j in mgr.enum_jobs()
    ]


@contextmanager
def suspend_on_first_progress(mgr: bitsnb.Manager, job: bitsnb.Job) -> Iterator[list[int]]:
    """Suspend *job* on the loop as soon as its first body bytes arrive (a deterministic
    mid-transfer interruption); yields a list that receives the bytes on disk at that point."""
    fired: list[int] = []
    ajob = job.async_job

    def listener(event: bitsnb.JobEvent) -> None:
        if fired or event.job_id != job.id or event.kind != "progress":
            return
        p = ajob.progress
        if event.state is bitsnb.JobState.TRANSFERRING and 0 < p.bytes_transferred:
            fired.append(p.bytes_transferred)
            mgr.loop.create_task(ajob.suspend())

    unsubscribe = mgr.subscribe(listener)
    try:
        yield fired
    finally:
        unsubscribe()


@contextmanager
def loopback_received(nbytes: int) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection (client, peer) whose client has read exactly *nbytes* the
    peer sent: a socket whose ``TCP_INFO`` has seen data."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()) as client:
            peer, _ = srv.accept()
            with peer:
                peer.sendall(b"x" * nbytes)
                got = 0
                while got < nbytes:  # bounded: the peer sent exactly this much
                    got += len(client.recv(65536))
                yield client, peer
