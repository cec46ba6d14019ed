"""Resuming interrupted downloads: Range + If-Range from the bytes on disk, changed files restart,
servers that ignore Range, suspend/resume, weak or missing validators."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _support.helpers import suspend_on_first_progress, temp_files, wait_state, wait_until

import bitsnb
from bitsnb import JobState
from bitsnb.testing import Fault, FileServer

BG_E_INSUFFICIENT_RANGE_SUPPORT = 0x80200013
KIB = 1024
SIZE = 512 * KIB


def gets(server: FileServer, name: str) -> list[bitsnb.testing.RequestRecord]:
    """The GET requests for *name*, in order."""
    return [r for r in server.requests if r.method == "GET" and r.path == name]


def range_start(header: str | None) -> int:
    """The first byte of a ``bytes=N-`` header."""
    assert header is not None
    m = re.fullmatch(r"bytes=(\d+)-", header)
    assert m, header
    return int(m.group(1))


def test_drop_resumes_with_range(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """A dropped connection: the retry asks for the rest (Range from the bytes on disk, strong
    ETag in If-Range) and the server sends the file about once in total."""
    url = server.add_random_file("big.bin", SIZE, seed=1)
    server.inject("big.bin", Fault.drop_after(200 * KIB))
    job = manager.create_job("resume")
    job.minimum_retry_delay = 0.05
    job.add_file(url, dest / "big.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    first, second = gets(server, "big.bin")
    assert first.range is None and first.status == 200
    assert 0 < first.body_bytes_sent <= 200 * KIB
    offset = range_start(second.range)
    assert 0 < offset <= first.body_bytes_sent
    assert second.status == 206
    assert second.if_range is not None and second.if_range.startswith('"')  # a strong ETag
    assert second.body_bytes_sent == SIZE - offset
    assert server.bytes_sent("big.bin") < SIZE + 200 * KIB  # not twice the file
    assert job.error_count == 1
    job.complete()
    assert (dest / "big.bin").read_bytes() == server.path("big.bin").read_bytes()


def test_several_drops(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """Three drops in a row: each retry continues where the previous one stopped."""
    url = server.add_random_file("multi.bin", SIZE, seed=2)
    server.inject("multi.bin", Fault.drop_after(100 * KIB, times=3))
    job = manager.create_job("drops")
    job.minimum_retry_delay = 0.05
    job.add_file(url, dest / "multi.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    reqs = gets(server, "multi.bin")
    assert len(reqs) == 4
    starts = [0] + [range_start(r.range) for r in reqs[1:]]
    assert starts == sorted(starts) and len(set(starts)) == 4
    assert server.bytes_sent("multi.bin") == SIZE
    job.complete()
    assert (dest / "multi.bin").read_bytes() == server.path("multi.bin").read_bytes()


def test_changed_file_restarts_from_zero(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """The file changes between requests: If-Range fails, that file starts over and the result
    is the NEW content."""
    url = server.add_random_file("moving.bin", SIZE, seed=3)
    old = server.path("moving.bin").read_bytes()
    server.inject("moving.bin", Fault.drop_after(150 * KIB))
    job = manager.create_job("changed")
    job.minimum_retry_delay = 60  # we retry by hand once the file has changed
    job.add_file(url, dest / "moving.bin")
    job.resume()
    wait_state(job, JobState.TRANSIENT_ERROR)
    server.change_file("moving.bin")
    new = server.path("moving.bin").read_bytes()
    assert new != old and len(new) == len(old)
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    reqs = gets(server, "moving.bin")
    assert reqs[1].range is not None and reqs[1].if_range is not None
    assert reqs[1].status == 200  # If-Range did not match: the whole new file
    job.complete()
    assert (dest / "moving.bin").read_bytes() == new


def test_ignored_range_is_fatal_and_keeps_data(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A server that answers the resume request with the whole file: ERROR
    BG_E_INSUFFICIENT_RANGE_SUPPORT, the partial temporary file stays."""
    url = server.add_random_file("norange.bin", SIZE, seed=4)
    server.inject("norange.bin", Fault.drop_after(100 * KIB))
    server.inject("norange.bin", Fault.ignore_range())
    job = manager.create_job("no range")
    job.minimum_retry_delay = 0.05
    job.add_file(url, dest / "norange.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.ERROR
    err = job.error
    assert err is not None
    assert err.code == BG_E_INSUFFICIENT_RANGE_SUPPORT
    assert err.context is bitsnb.ErrorContext.REMOTE_FILE
    reqs = gets(server, "norange.bin")
    assert reqs[1].range is not None and reqs[1].status == 200
    (tmp,) = temp_files(dest)
    kept = (dest / tmp).stat().st_size
    assert 0 < kept <= 100 * KIB
    assert job.progress.bytes_transferred == kept
    assert (dest / tmp).read_bytes() == server.path("norange.bin").read_bytes()[:kept]


def test_ignored_range_with_dynamic_content_restarts(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """With dynamic_content an interrupted file restarts from zero and completes."""
    url = server.add_random_file("dyn.bin", SIZE, seed=5)
    server.inject("dyn.bin", Fault.drop_after(100 * KIB))
    server.inject("dyn.bin", Fault.ignore_range())
    job = manager.create_job("dynamic")
    job.dynamic_content = True
    job.minimum_retry_delay = 0.05
    job.add_file(url, dest / "dyn.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    second = gets(server, "dyn.bin")[1]
    assert second.range is None  # dynamic content is never resumed with a Range
    with pytest.raises(bitsnb.BitsError) as info:
        job.dynamic_content = False  # read-only after the first resume()
    assert info.value.code == 0x80200062
    job.complete()
    assert (dest / "dyn.bin").read_bytes() == server.path("dyn.bin").read_bytes()


def test_suspend_mid_transfer_then_resume(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """suspend() while bytes flow keeps the data; resume() continues with a Range request."""
    url = server.add_random_file("pause.bin", SIZE, seed=6)
    server.inject("pause.bin", Fault.stall_after(128 * KIB, 30))
    job = manager.create_job("pause")
    job.add_file(url, dest / "pause.bin")
    job.resume()
    wait_until(lambda: job.progress.bytes_transferred >= 128 * KIB, message="first bytes")
    job.suspend()
    assert job.state is JobState.SUSPENDED
    kept = job.progress.bytes_transferred
    (tmp,) = temp_files(dest)
    assert (dest / tmp).stat().st_size == kept == 128 * KIB
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    _, second = gets(server, "pause.bin")
    assert range_start(second.range) == kept
    assert second.if_range is not None and second.status == 206
    job.complete()
    assert (dest / "pause.bin").read_bytes() == server.path("pause.bin").read_bytes()


def test_weak_etag_resumes_with_last_modified(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A weak ETag is never sent in If-Range (it needs a strong validator): Last-Modified is."""
    url = server.add_random_file("weak.bin", 8 * KIB * KIB, seed=7)
    server.inject("weak.bin", Fault.weak_etag(times=-1))
    job = manager.create_job("weak")
    job.add_file(url, dest / "weak.bin")
    with suspend_on_first_progress(manager, job) as fired:
        job.resume()
        wait_until(lambda: bool(fired) and job.state is JobState.SUSPENDED)
    kept = job.progress.bytes_transferred
    assert 0 < kept < 8 * KIB * KIB
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    _, second = gets(server, "weak.bin")
    assert range_start(second.range) == kept
    assert second.if_range is not None
    assert not second.if_range.startswith(("W/", '"'))  # an HTTP date, not the weak tag
    assert second.status == 206
    job.complete()
    assert (dest / "weak.bin").read_bytes() == server.path("weak.bin").read_bytes()


def test_no_validators_restart_from_zero(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Without ETag or Last-Modified a resume cannot be validated: the file starts over
    (no Range) and the result is still byte-exact."""
    url = server.add_random_file("blind.bin", 8 * KIB * KIB, seed=8)
    server.inject("blind.bin", Fault.no_validators(times=-1))
    job = manager.create_job("blind")
    job.add_file(url, dest / "blind.bin")
    with suspend_on_first_progress(manager, job) as fired:
        job.resume()
        wait_until(lambda: bool(fired) and job.state is JobState.SUSPENDED)
    assert job.progress.bytes_transferred > 0
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    _, second = gets(server, "blind.bin")
    assert second.range is None and second.status == 200
    job.complete()
    assert (dest / "blind.bin").read_bytes() == server.path("blind.bin").read_bytes()


def test_close_before_headers_is_retried(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A connection closed before any answer: TRANSIENT_ERROR, then the retry succeeds."""
    url = server.add_random_file("hangup.bin", 64 * KIB, seed=10)
    server.inject("hangup.bin", Fault.close_before_headers())
    job = manager.create_job("hangup")
    job.minimum_retry_delay = 0.05
    job.add_file(url, dest / "hangup.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    assert job.error_count == 1
    job.complete()
    assert (dest / "hangup.bin").read_bytes() == server.path("hangup.bin").read_bytes()


def test_wrong_length_ends_byte_exact(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A server that promises more bytes than it sends: a transient error, and the file still
    ends byte-exact (never padded, never truncated)."""
    url = server.add_random_file("liar.bin", 64 * KIB, seed=11)
    server.inject("liar.bin", Fault.wrong_length(100))
    job = manager.create_job("liar")
    job.minimum_retry_delay = 0.05
    job.add_file(url, dest / "liar.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    assert job.error_count >= 1
    assert job.progress.bytes_total == 64 * KIB
    job.complete()
    assert (dest / "liar.bin").read_bytes() == server.path("liar.bin").read_bytes()


def test_ranges_resume_mid_range(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """A drop inside one of several ranges: the retry asks for the rest of that range only."""
    url = server.add_random_file("ranged.bin", SIZE, seed=12)
    data = server.path("ranged.bin").read_bytes()
    server.inject("ranged.bin", Fault.drop_after(40 * KIB))
    ranges = [(10 * KIB, 100 * KIB), (300 * KIB, 50 * KIB)]
    job = manager.create_job("ranges resume")
    job.minimum_retry_delay = 0.05
    job.add_file_with_ranges(url, dest / "ranged.bin", ranges)
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    got = [r.range for r in gets(server, "ranged.bin")]
    assert got[0] == f"bytes={10 * KIB}-{110 * KIB - 1}"
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", got[1] or "")
    assert m is not None
    assert 10 * KIB < int(m.group(1)) <= 50 * KIB and int(m.group(2)) == 110 * KIB - 1
    assert got[2] == f"bytes={300 * KIB}-{350 * KIB - 1}"
    job.complete()
    expected = data[10 * KIB : 110 * KIB] + data[300 * KIB : 350 * KIB]
    assert (dest / "ranged.bin").read_bytes() == expected


def test_high_performance_resume(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """high_performance files resume from the bytes already in the destination file."""
    url = server.add_random_file("hp.bin", SIZE, seed=13)
    server.inject("hp.bin", Fault.drop_after(100 * KIB))
    job = manager.create_job("hp resume")
    job.high_performance = True
    job.minimum_retry_delay = 0.05
    job.add_file(url, dest / "hp.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    first, second = gets(server, "hp.bin")
    assert range_start(second.range) == first.body_bytes_sent
    assert temp_files(dest) == []
    job.complete()
    assert (dest / "hp.bin").read_bytes() == server.path("hp.bin").read_bytes()
