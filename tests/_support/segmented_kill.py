"""A segmented download killed mid-file: the child that runs it, and the table it left.

``kill_when_split(store, url, local)`` starts a child process that fetches *url* in segments
(checkpointing often), waits until the store holds a table with two segments under way, then
SIGKILLs it and returns the job's id and that table, for the test to resume in a new manager;
``resume_killed`` does both and checks what every such resume must show.
"""

from __future__ import annotations

import json
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import bitsnb
from _support.helpers import wait_until
from bitsnb import JobState
from bitsnb._segments import done_bytes
from bitsnb.testing import FileServer, RequestRecord

__all__ = ["kill_when_split", "resume_killed", "stored_table"]

_MIB = 1024 * 1024

_CHILD = textwrap.dedent(
    """
    import sys, time
    import bitsnb
    store, url, local = sys.argv[1:4]
    known = sys.argv[4] if len(sys.argv) > 4 else None
    policy = bitsnb.Policy(min_retry_delay_floor=0.05, poll_interval=0.05, lease_seconds=2.0,
                           checkpoint_interval=0.1, min_segment_bytes=512 * 1024,
                           segment_window=0.2)
    mgr = bitsnb.Manager(store=store, policy=policy)
    job = mgr.create_job("child")
    job.add_file(url, local, known_hash=known)
    job.resume()
    print(job.id, flush=True)
    time.sleep(60)  # the parent kills us long before this
    """
)


def stored_table(store: Path, job_id: uuid.UUID) -> list[list[int]] | None:
    """The segment table the SQLite *store* holds for the job's (only) file, if any."""
    db = sqlite3.connect(store)
    try:
        row = db.execute("SELECT segments FROM files WHERE job_id=?", (str(job_id),)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row and row[0] else None


def kill_when_split(
    store: Path, url: str, local: Path, known_hash: str | None = None
) -> tuple[uuid.UUID, list[list[int]]]:
    """Run the child until two segments are checkpointed, SIGKILL it: (job id, its table)."""
    args = [sys.executable, "-c", _CHILD, str(store), url, str(local)]
    if known_hash is not None:
        args.append(known_hash)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the child said nothing"
        job_id = uuid.UUID(proc.stdout.readline().strip())

        def split_and_checkpointed() -> bool:
            table = stored_table(store, job_id)
            return table is not None and sum(d > s for s, d, _ in table) >= 2

        wait_until(split_and_checkpointed, 30, "a checkpointed table of two segments")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    table = stored_table(store, job_id)
    assert table is not None
    return job_id, table


def resume_killed(
    store: Path, policy: bitsnb.Policy, server: FileServer, name: str, local: Path
) -> tuple[list[list[int]], list[RequestRecord]]:
    """Kill a child fetching *name* once it is split, resume the job in a new manager (which
    takes over the dead child's lease) at full speed, and check: every request a 206, every
    open segment resumed where the table left it, less than the file fetched again, the file
    byte-exact. Returns the table at the kill and the requests of the resume."""
    size = server.path(name).stat().st_size
    job_id, table = kill_when_split(store, server.url(name), local)
    kept = done_bytes([(s, d, e) for s, d, e in table])
    server.connection_rate = None
    server.reset_log()
    policy.lease_seconds = 60.0  # taken over from the dead pid
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.get_job(job_id)
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    reqs = server.requests
    assert reqs and all(r.range is not None and r.status == 206 for r in reqs)
    starts = {int(r.range.split("=")[1].split("-")[0]) for r in reqs if r.range}
    assert {d for s, d, e in table if d < e} <= starts  # every open segment resumed
    sent = server.bytes_sent(name)
    assert sent <= size - kept + 2 * _MIB, (
        sent,
        size,
        kept,
        table,
        [(r.range, r.body_bytes_sent) for r in reqs],
    )
    assert local.read_bytes() == server.path(name).read_bytes()
    return table, reqs
