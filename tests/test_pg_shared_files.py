"""One job's files spread over three processes on a PostgreSQL store (``fetch_shared_files``):
every file fetched once (requests counted at the test server), the job TRANSFERRED once all
are, and ``complete()`` places them byte-exact, as for a job one manager ran."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from _support.postgres import Postgres

import bitsnb
from bitsnb import JobState
from bitsnb.testing import FileServer

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("distributed")

CHILD = Path(__file__).parent / "_support" / "pg_files_worker.py"
FILES, SIZE, BATCH = 90, 16 * 1024, 3


def test_one_jobs_files_spread_over_three_processes(
    postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    dest = tmp_path / "dest"
    dest.mkdir()
    names = [f"s{i}.bin" for i in range(FILES)]
    passive = bitsnb.Policy(max_active_jobs=0, poll_interval=0.05)
    with bitsnb.Manager(store=url, policy=passive) as mgr:  # queues and watches only
        job = mgr.create_job("spread")
        job.add_file_set(
            [(server.add_random_file(n, SIZE, seed=i), dest / n) for i, n in enumerate(names)]
        )
        job.resume()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        procs = [
            subprocess.Popen(
                [sys.executable, str(CHILD), url, str(job.id), str(BATCH)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(3)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            outs = [p.communicate(timeout=120)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
        assert [p.returncode for p in procs] == [0, 0, 0]
        written = [int(out.split()[-1]) for out in outs]
        assert sum(written) == FILES and all(written), written  # each wrote a share
        assert job.wait(timeout=30) is JobState.TRANSFERRED
        progress = job.progress
        assert progress.files_transferred == FILES
        assert progress.bytes_transferred == FILES * SIZE
        assert job.complete() == 0
    gets = Counter(r.path for r in server.requests if r.method == "GET")
    assert gets == dict.fromkeys(names, 1)  # every file fetched once, by one of them
    for n in names:
        assert (dest / n).read_bytes() == server.path(n).read_bytes(), n
