"""A shared job keeps BITS's meaning when a file fails (real PostgreSQL, a real test server, a
``BatchRunner`` claiming batches): a 404 puts the job in ERROR with that file's error, its
other files transferred and the failing one fetched once (not retried for ever); ``resume()``
or ``share()`` again continues it to TRANSFERRED. A transient failure waits the job's
``minimum_retry_delay`` in TRANSIENT_ERROR (nothing else progresses), then transfers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from _support.helpers import wait_until
from _support.postgres import Postgres

import bitsnb
from bitsnb import ErrorContext, JobState
from bitsnb._codes import ERROR_WINHTTP_CONNECTION_ERROR, http_error
from bitsnb._store_api import StoreURL
from bitsnb.testing import Fault, FileServer

pytest.importorskip("distributed")
psycopg = pytest.importorskip("psycopg")
from bitsnb.distributed import BatchRunner, share  # noqa: E402

KIB = 1024
PASSIVE = bitsnb.Policy(max_active_jobs=0, poll_interval=0.05, min_retry_delay_floor=0.0)
RUNNER = bitsnb.Policy(lease_seconds=10.0, files_in_flight=2, poll_interval=0.05)


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _gets(server: FileServer) -> Counter[str]:
    return Counter(r.path for r in server.requests if r.method == "GET")


@pytest.mark.parametrize("how", ["resume", "share"])
def test_a_missing_file_puts_the_shared_job_in_error_until_resumed(
    how: str, postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    names = [f"e{i}.bin" for i in range(7)]
    good = {n: server.add_random_file(n, 16 * KIB, seed=i) for i, n in enumerate(names[:-1])}
    missing = names[-1]  # the last index: every other batch is claimed before it fails
    pairs = [(good[n], tmp_path / n) for n in names[:-1]]
    pairs.append((server.url(missing), tmp_path / missing))
    with bitsnb.Manager(store=url, policy=PASSIVE) as mgr:
        job = mgr.create_job("one missing")
        job.add_file_set(pairs)
        share(url, job.id)
        runner = BatchRunner(StoreURL(url), RUNNER, batch=2)
        try:
            assert job.wait(timeout=60) is JobState.ERROR
            error = job.error
            assert error is not None
            assert error.code == http_error(404) and error.name == "BG_E_HTTP_ERROR_404"
            assert error.context is ErrorContext.REMOTE_FILE
            assert error.file is not None and error.file.remote_name == server.url(missing)
            assert error.file.local_name == str(tmp_path / missing)
            assert job.error_count == 1
            # the batches in flight end (their files written), and nothing more is claimed
            wait_until(
                lambda: _rows(url, "SELECT token FROM bitsnb_batches") == [],
                timeout=30,
                message="the batches in flight ended",
            )
            done = _rows(url, "SELECT idx FROM files WHERE transferred=1 ORDER BY idx")
            assert done == [(i,) for i in range(len(names) - 1)]
            assert _gets(server)[missing] == 1  # fetched once, not retried for ever
            assert _rows(url, "SELECT state FROM jobs") == [(int(JobState.ERROR),)]

            server.add_random_file(missing, 16 * KIB, seed=99)  # the server serves it now
            if how == "resume":
                job.resume()
            else:
                share(url, job.id)  # written by another process: this manager hears of it
                wait_until(lambda: job.state is not JobState.ERROR, message="the job shared again")
            assert job.wait(timeout=60) is JobState.TRANSFERRED
        finally:
            runner.close()
        assert job.complete() == 0
    gets = _gets(server)
    assert gets == {**dict.fromkeys(names[:-1], 1), missing: 2}
    for n in names:
        assert (tmp_path / n).read_bytes() == server.path(n).read_bytes(), n
    assert _rows(url, "SELECT token FROM bitsnb_batches") == []


def test_a_transient_failure_waits_the_retry_delay_in_transient_error(
    postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    src = server.add_random_file("t.bin", 16 * KIB, seed=3)
    server.inject("t.bin", Fault.close_before_headers())  # once: a broken connection
    with bitsnb.Manager(store=url, policy=PASSIVE) as mgr:
        job = mgr.create_job("flaky")
        job.add_file(src, tmp_path / "t.bin")
        job.minimum_retry_delay = 1.0
        share(url, job.id)
        runner = BatchRunner(StoreURL(url), RUNNER, batch=2)
        try:
            wait_until(
                lambda: job.state is JobState.TRANSIENT_ERROR,
                timeout=30,
                message="the job waits on its retry",
            )
            error = job.error
            assert error is not None and error.code == ERROR_WINHTTP_CONNECTION_ERROR
            assert error.file is not None and error.file.local_name == str(tmp_path / "t.bin")
            held = _rows(url, "SELECT owner FROM bitsnb_batches")
            assert held == [("bitsnb:retry",)]  # parked until the retry is due
            assert mgr.job_workers() == {}  # a parked file is nobody's
            assert job.wait(timeout=60) is JobState.TRANSFERRED
        finally:
            runner.close()
        assert job.complete() == 0
    assert (tmp_path / "t.bin").read_bytes() == server.path("t.bin").read_bytes()
    assert _rows(url, "SELECT first_failure_at, retry_at FROM jobs") == [(None, None)]


def test_a_transient_failure_past_the_no_progress_timeout_is_an_error(
    postgres: Postgres, server: FileServer, tmp_path: Path
) -> None:
    """As BITS: with no time left to make progress (``no_progress_timeout`` 0), a transient
    failure puts the shared job in ERROR, not TRANSIENT_ERROR; nothing is parked."""
    url = postgres.new_database()
    src = server.add_random_file("n.bin", 16 * KIB, seed=4)
    server.inject("n.bin", Fault.close_before_headers())
    with bitsnb.Manager(store=url, policy=PASSIVE) as mgr:
        job = mgr.create_job("no time")
        job.add_file(src, tmp_path / "n.bin")
        job.no_progress_timeout = 0
        share(url, job.id)
        runner = BatchRunner(StoreURL(url), RUNNER, batch=2)
        try:
            assert job.wait(timeout=60) is JobState.ERROR
        finally:
            runner.close()
        error = job.error
        assert error is not None and error.code == ERROR_WINHTTP_CONNECTION_ERROR
        assert _rows(url, "SELECT token FROM bitsnb_batches") == []
        assert _rows(url, "SELECT transferred FROM files") == [(0,)]
