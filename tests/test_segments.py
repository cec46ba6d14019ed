"""Segmented downloads of one large file, against the real loopback server: connections added
while they pay, byte-exact files, the table resumed after SIGKILL, servers that ignore a second
Range, change the file between segments or refuse extra connections, per-host limits, a
straggler's tail taken over, and a known hash verified over the segments."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest
from _support.helpers import temp_files, wait_until
from _support.segmented_kill import resume_killed, stored_table

import bitsnb
from bitsnb import JobState
from bitsnb._segments import (
    check_table,
    contiguous_end,
    done_bytes,
    gained,
    may_add,
    split_point,
    takeover_point,
)
from bitsnb.testing import Fault, FileServer

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
def seg_policy(policy: bitsnb.Policy) -> bitsnb.Policy:
    """The fast test policy with small segments and a short measuring window."""
    policy.min_segment_bytes = 512 * KIB
    policy.segment_window = 0.2
    return policy


def _started(
    mgr: bitsnb.Manager,
    url: str,
    local: Path,
    *,
    known_hash: str | None = None,
    retry_delay: float | None = None,
) -> bitsnb.Job:
    """A job "seg" fetching *url* to *local*, resumed."""
    job = mgr.create_job("seg")
    if retry_delay is not None:
        job.minimum_retry_delay = retry_delay
    job.add_file(url, local, known_hash=known_hash)
    job.resume()
    return job


def _fetch(
    mgr: bitsnb.Manager, url: str, local: Path, known_hash: str | None = None
) -> tuple[bitsnb.Job, int]:
    """Download *url* to *local* in one job; returns the job and the most connections seen."""
    job = _started(mgr, url, local, known_hash=known_hash, retry_delay=0.05)
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, job.files[0].connections)
        return job.state in (JobState.TRANSFERRED, JobState.ERROR)

    wait_until(done, 60, "the transfer's end")
    return job, peak


# -- the rules -----------------------------------------------------------------------------------
def test_table_rules() -> None:
    """A table must tile the file; the written prefix, bytes done, splits and takeovers."""
    assert check_table([[0, 5, 10], [10, 10, 20]], 20) == [(0, 5, 10), (10, 10, 20)]
    assert check_table([[0, 5, 10], [11, 11, 20]], 20) is None  # a gap
    assert check_table([[0, 11, 10]], 10) is None  # done past the end
    assert check_table([[0, 5, 10]], 20) is None  # short of the size
    assert check_table([], 0) is None
    assert contiguous_end([(0, 10, 10), (10, 15, 20), (20, 25, 30)]) == 15
    assert contiguous_end([(0, 3, 10), (10, 20, 20)]) == 3
    assert done_bytes([(0, 10, 10), (10, 15, 20)]) == 15
    assert split_point(0, 2 * MIB - 1, MIB) is None  # less than two minimum segments
    cut = split_point(0, 64 * MIB, MIB)
    assert cut == 32 * MIB and cut % 65536 == 0
    # a straggler at a tenth of a free connection's rate: the free one takes most of the tail
    at = takeover_point(0, 10 * MIB, 1 * MIB, 10 * MIB)
    assert at is not None and 0 < at < MIB
    assert takeover_point(0, 10 * MIB, 10 * MIB, 10 * MIB) == 5 * MIB  # an equal: half
    assert takeover_point(0, 4 * MIB, 10 * MIB, 10 * MIB) is None  # it ends soon anyway
    assert takeover_point(0, 512 * KIB, 1.0, 10 * MIB) is None  # too little to take
    assert may_add(16 * MIB, 8 * MIB, 1, 8) and not may_add(16 * MIB - 1, 8 * MIB, 1, 8)
    assert not may_add(64 * MIB, 8 * MIB, 8, 8)
    assert gained(100.0, 111.0) and not gained(100.0, 109.0)
    assert not gained(100.0, 140.0, 1) and gained(100.0, 150.0, 1)  # early: half a share
    assert gained(100.0, 111.0, 8)


def test_policy_defaults() -> None:
    """Eight connections per file, sixteen per host; segments of at least 8 MiB."""
    p = bitsnb.Policy()
    assert (p.max_connections_per_file, p.max_connections_per_host) == (8, 16)
    assert p.min_segment_bytes == 8 * MIB


# -- downloads -------------------------------------------------------------------------------------
def test_capped_connections_are_segmented_and_the_known_hash_verifies(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A server capping each connection: more connections join, the file is byte-exact and
    its known hash verifies over the segments (hashed in order as the prefix completes)."""
    size = 12 * MIB
    url = server.add_random_file("big.bin", size, seed=1)
    data = server.path("big.bin").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    server.connection_rate = 3_000_000
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job, peak = _fetch(mgr, url, dest / "big.bin", known_hash=f"sha256:{digest}")
        assert job.state is JobState.TRANSFERRED, job.error
        (f,) = job.files
        assert f.hash == f"sha256:{digest}" and f.validation_state
        assert f.connections == 0
        job.complete()
    assert peak >= 2 and server.peak_concurrent >= 2
    ranged = [r for r in server.requests if r.range is not None]
    assert ranged and all(r.if_range and r.if_range.startswith('"') for r in ranged)
    assert (dest / "big.bin").read_bytes() == data
    assert temp_files(dest) == []


def test_capped_connections_double_once_each_pays_a_whole_share(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Each connection capped: a second that pays its whole share is kept early, and the next
    two follow one right after the other (1, 2, 4, as slow start), not one measuring window
    apart: the wait before the fourth is well under the one before the third. The server
    paces in 10 ms pieces: its 50 ms gaps, seen as a hold (one CI run), try three more at once."""
    seg_policy.segment_window = 0.6
    seg_policy.max_connections_per_file = 4
    server.connection_rate = 2_000_000
    server.connection_pace = 0.01
    url = server.add_random_file("big.bin", 24 * MIB, seed=21)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = _started(mgr, url, dest / "big.bin")
        first: dict[int, float] = {}

        def seen(n: int) -> bool:
            now, c = time.monotonic(), job.files[0].connections
            for k in range(1, c + 1):
                first.setdefault(k, now)
            return n in first or job.state in (JobState.TRANSFERRED, JobState.ERROR)

        wait_until(lambda: seen(4), 60, "four connections")
        assert set(first) >= {2, 3, 4}, (first, job.state, job.error)
        gap_third, gap_fourth = first[3] - first[2], first[4] - first[3]
        assert gap_fourth < 0.5 * gap_third, (gap_third, gap_fourth)
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


def test_a_connection_waiting_for_its_first_byte_is_not_taken_over(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """The second connection's answer is held back; the first ends its segment meanwhile. It
    does not take the waiting one's range (no rate yet is not a rate of 0: both would be sent
    it): no byte is sent twice (a range taken whole would be: ~8 MB more; ranges cut once it
    flows overlap in their headers only, one CI run), and the file is byte-exact."""
    seg_policy.max_connections_per_file = 2
    server.connection_rate = 4_000_000
    size = 16 * MIB
    url = server.add_random_file("big.bin", size, seed=22)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = _started(mgr, url, dest / "big.bin")
        wait_until(lambda: len(server.requests) >= 1, 20, "the first request")
        server.inject("big.bin", Fault.stall(4.0))  # the next request: the second connection
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    reqs = server.requests
    seen = [(r.range, r.fault, r.body_bytes_sent) for r in reqs]
    assert any(r.fault == "stall" and r.body_bytes_sent > 0 for r in reqs), seen
    # past a cut the server may have sent a piece or two (200 kB each) before the close
    assert sum(r.body_bytes_sent for r in reqs) <= size + 2 * MIB, seen
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


def test_connections_in_use_are_shown(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """While a file is segmented, its connections show in FileInfo, the files frame, the job
    panel's snapshot and ``bitsnb info``'s JSON; 0 once it is done."""
    from bitsnb._cli_render import job_dict
    from bitsnb.notebook._panels import JobSnapshot

    server.connection_rate = 1_000_000
    url = server.add_random_file("big.bin", 16 * MIB, seed=9)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = _started(mgr, url, dest / "big.bin")
        # each view polled on its own: connections come and go as segments end
        wait_until(lambda: job.files[0].connections >= 2, 30, "a second connection")
        wait_until(lambda: job.files_frame()["connections"].iloc[0] >= 2, 30, "frame")
        wait_until(lambda: JobSnapshot.of(job).connections >= 2, 30, "panel")
        wait_until(lambda: job_dict(job, files=True)["files"][0]["connections"] >= 2, 30, "info")
        server.connection_rate = None
        assert job.wait(timeout=60) is JobState.TRANSFERRED
        assert job.files[0].connections == 0
        assert job.files_frame()["connections"].iloc[0] == 0
        job.complete()


def test_a_wrong_known_hash_fails_a_segmented_file(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """The hash fed from several connections is still checked: a wrong one is a failure."""
    url = server.add_random_file("big.bin", 8 * MIB, seed=2)
    server.connection_rate = 3_000_000
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job, peak = _fetch(mgr, url, dest / "big.bin", known_hash="sha256:" + "0" * 64)
        assert job.state is JobState.ERROR
        assert job.error is not None and job.error.name == "BG_E_VALIDATION_FAILED"
        job.cancel()
    assert peak >= 2


def test_one_connection_per_file_turns_it_off(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """``max_connections_per_file=1``: one GET, as before."""
    url = server.add_random_file("big.bin", 4 * MIB, seed=3)
    server.connection_rate = 8_000_000
    seg_policy.max_connections_per_file = 1
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job, peak = _fetch(mgr, url, dest / "big.bin")
        assert job.state is JobState.TRANSFERRED
        job.complete()
    assert peak == 1 and len(server.requests) == 1


def test_per_host_limit_is_kept_while_segmenting(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Two large files of one host, three connections allowed to it: the server never sees
    more than three requests at once, and both files finish byte-exact."""
    seg_policy.max_connections_per_host = 3
    server.connection_rate = 3_000_000
    urls = [server.add_random_file(f"f{i}.bin", 8 * MIB, seed=10 + i) for i in range(2)]
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = mgr.create_job("two")
        for i, url in enumerate(urls):
            job.add_file(url, dest / f"f{i}.bin")
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED
        job.complete()
    assert server.peak_concurrent == 3  # it did segment, up to the host's limit
    for i in range(2):
        assert (dest / f"f{i}.bin").read_bytes() == server.path(f"f{i}.bin").read_bytes()


def test_a_host_that_refuses_extra_connections_is_not_pressed(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A host answering 503 beyond two connections: the refused segment goes back to the
    connections the file has, no more are tried, and the file completes."""
    server.connection_rate = 3_000_000
    server.max_concurrent = 2
    url = server.add_random_file("big.bin", 12 * MIB, seed=4)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job, _ = _fetch(mgr, url, dest / "big.bin")
        assert job.state is JobState.TRANSFERRED, job.error
        job.complete()
    refused = [r for r in server.requests if r.status == 503]
    assert len(refused) == 1  # one refusal, then the file kept to what it had
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


def test_a_server_that_ignores_the_second_range_keeps_one_connection(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """The second connection's Range is answered with the whole file: dropped, the first
    connection goes on to the end, no error and no more connections."""
    server.connection_rate = 3_000_000
    url = server.add_random_file("big.bin", 12 * MIB, seed=5)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = _started(mgr, url, dest / "big.bin")
        wait_until(lambda: len(server.requests) >= 1, 20, "the first request")
        server.inject("big.bin", Fault.ignore_range())  # for the second request
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    reqs = server.requests
    assert [(r.range is not None, r.status) for r in reqs] == [(False, 200), (True, 200)]
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


def test_a_file_changed_between_segments_starts_again(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Suspended while segmented, the file changes on the server: the resumed segments'
    If-Range fails, the file starts again from zero and ends as the new content."""
    server.connection_rate = 2_000_000
    url = server.add_random_file("big.bin", 8 * MIB, seed=6)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = _started(mgr, url, dest / "big.bin", retry_delay=0.05)
        wait_until(lambda: job.files[0].connections >= 2, 30, "a second connection")
        job.suspend()
        assert stored_table(store, job.id) is not None  # the table was kept
        server.change_file("big.bin")
        server.connection_rate = None
        server.reset_log()
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    first = server.requests[0]
    assert first.range is not None and first.if_range is not None and first.status == 200
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


def test_segments_share_the_jobs_bandwidth_budget(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A job capped at 3 MB/s: a second connection draws from the same budget, so it raises
    nothing and is dropped (no more are tried); the file still completes byte-exact."""
    url = server.add_random_file("big.bin", 8 * MIB, seed=12)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = mgr.create_job("capped")
        job.max_bandwidth = 3_000_000
        job.add_file(url, dest / "big.bin")
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    # the first GET, the trial, and the first one taking over what the trial had left
    assert len(server.requests) <= 3 and server.peak_concurrent <= 2
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


def test_a_straggler_tail_is_taken_over(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """The first connection crawls (the server throttles that one response): the others
    take over what it has left, so it sends a small part of the file."""
    size = 8 * MIB
    url = server.add_random_file("big.bin", size, seed=7)
    server.inject("big.bin", Fault.throttle(400_000))
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job, peak = _fetch(mgr, url, dest / "big.bin")
        assert job.state is JobState.TRANSFERRED, job.error
        job.complete()
    assert peak >= 2
    slow = server.requests[0]
    assert slow.range is None and slow.fault == "throttle"
    assert slow.body_bytes_sent <= size // 4
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


def test_a_retired_trials_rest_is_finished_by_the_first_connection_without_a_new_request(
    store: Path, seg_policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """The second connection crawls (the server throttles that response), so it is retired
    after its trial: the first connection, whose response is the whole file, goes on past the
    cut into the range it left, reading past the bytes the trial wrote, with no third request
    (on a long round trip a new connection's slow start cost 1.5 s). Two connections at most:
    the capped server holds the first back, which would try seven more at once."""
    server.connection_rate = 3_000_000
    seg_policy.max_connections_per_file = 2
    size = 24 * MIB
    url = server.add_random_file("big.bin", size, seed=8)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = _started(mgr, url, dest / "big.bin")
        wait_until(lambda: len(server.requests) >= 1, 20, "the first request")
        server.inject("big.bin", Fault.throttle(100_000))  # for the trial's request
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    reqs = server.requests
    seen = [(r.range, r.status, r.fault, r.body_bytes_sent) for r in reqs]
    assert [(r.range is not None, r.status) for r in reqs] == [(False, 200), (True, 206)], seen
    assert reqs[1].fault == "throttle" and 0 < reqs[1].body_bytes_sent < 2 * MIB
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


# -- a crash ---------------------------------------------------------------------------------------
def test_segments_resume_after_sigkill_byte_exact(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A process fetching a file in segments is SIGKILLed: a new manager resumes every segment
    from the stored table with If-Range, fetches less than the file again, and the file is
    byte-exact."""
    size = 10 * MIB
    server.connection_rate = 500_000  # slow enough to be caught mid-file on a loaded machine
    server.add_random_file("victim.bin", size, seed=8)
    _, reqs = resume_killed(store, policy, server, "victim.bin", dest / "victim.bin")
    assert all(r.if_range and r.if_range.startswith('"') for r in reqs)


def test_a_schema_2_store_gets_the_segment_column(
    store: Path, policy: bitsnb.Policy, dest: Path
) -> None:
    """A store from before segmented downloads opens: its files gain an empty table."""
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("old")
        job.add_file("http://127.0.0.1:9/x", dest / "x")
        job_id = job.id
    db = sqlite3.connect(store)
    db.execute("ALTER TABLE files DROP COLUMN segments")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        (f,) = mgr.get_job(job_id).files
        assert f.connections == 0
    assert stored_table(store, job_id) is None
