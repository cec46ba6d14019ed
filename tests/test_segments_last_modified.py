"""Segmented downloads from a server that sends Last-Modified but no ETag: the date serves as
If-Range's validator when the response's Date shows it strong (RFC 9110 §8.8.2.2: at least 60 s
older), never otherwise; segments resume after SIGKILL, and a file changed between segments
starts again. Against the real loopback server with ``send_etag = False``."""

from __future__ import annotations

import email.utils
import os
import time
from pathlib import Path

import pytest
from _support.helpers import wait_until
from _support.segmented_kill import resume_killed, stored_table

import bitsnb
from bitsnb import JobState
from bitsnb._validators import STRONG_DATE_MARGIN, if_range_value, strong_date
from bitsnb.testing import FileServer

KIB = 1024
MIB = 1024 * KIB
HOUR_AGO = 3600.0


@pytest.fixture
def seg_policy(policy: bitsnb.Policy) -> bitsnb.Policy:
    """The fast test policy with small segments and a short measuring window."""
    policy.min_segment_bytes = 512 * KIB
    policy.segment_window = 0.2
    return policy


@pytest.fixture
def lm_server(server: FileServer) -> FileServer:
    """The test server answering with Last-Modified and Accept-Ranges, no ETag."""
    server.send_etag = False
    return server


def _age(server: FileServer, name: str, seconds: float) -> str:
    """Set the served file's mtime *seconds* back; its Last-Modified as the server sends it."""
    when = time.time() - seconds
    os.utime(server.path(name), (when, when))
    return email.utils.formatdate(when, usegmt=True)


def _is_date(value: str | None) -> bool:
    return bool(value) and not value.startswith(('"', "W/"))  # type: ignore[union-attr]


# -- the rule ------------------------------------------------------------------------------------
def test_a_last_modified_is_strong_only_well_before_the_date() -> None:
    date = "Tue, 01 Dec 2026 12:00:00 GMT"
    assert STRONG_DATE_MARGIN == 60.0
    assert strong_date("Tue, 01 Dec 2026 11:00:00 GMT", date)
    assert strong_date("Tue, 01 Dec 2026 11:59:00 GMT", date)  # exactly 60 s
    assert not strong_date("Tue, 01 Dec 2026 11:59:01 GMT", date)
    assert not strong_date("Tue, 01 Dec 2026 12:00:00 GMT", date)
    assert not strong_date("Tue, 01 Dec 2026 11:00:00 GMT", None)  # no Date: cannot tell
    assert not strong_date(None, date)
    assert not strong_date("yesterday", date)
    assert not strong_date("Tue, 01 Dec 2026 11:00:00 GMT", "soon")
    assert if_range_value('"abc"', "Tue, 01 Dec 2026 11:00:00 GMT") == '"abc"'
    assert if_range_value(None, "Tue, 01 Dec 2026 11:00:00 GMT") == "Tue, 01 Dec 2026 11:00:00 GMT"
    assert if_range_value('W/"abc"', "Tue, 01 Dec 2026 11:00:00 GMT") is None  # RFC 9110 §13.1.5
    assert if_range_value(None, None) is None


# -- against the server ---------------------------------------------------------------------------
def _run(mgr: bitsnb.Manager, url: str, local: Path) -> tuple[bitsnb.Job, int]:
    job = mgr.create_job("lm")
    job.minimum_retry_delay = 0.05
    job.add_file(url, local)
    job.resume()
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, job.files[0].connections)
        return job.state in (JobState.TRANSFERRED, JobState.ERROR)

    wait_until(done, 60, "the transfer's end")
    return job, peak


def test_an_old_last_modified_lets_a_file_segment(
    store: Path, seg_policy: bitsnb.Policy, lm_server: FileServer, dest: Path
) -> None:
    """No ETag, a Last-Modified an hour old: more connections, each Range with If-Range on
    that date, answered 206; the file is byte-exact."""
    lm_server.connection_rate = 3_000_000
    url = lm_server.add_random_file("big.bin", 8 * MIB, seed=11)
    modified = _age(lm_server, "big.bin", HOUR_AGO)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job, peak = _run(mgr, url, dest / "big.bin")
        assert job.state is JobState.TRANSFERRED, job.error
        job.complete()
    assert peak >= 2
    ranged = [r for r in lm_server.requests if r.range is not None]
    assert ranged, "no second connection asked for a range"
    assert all(r.if_range == modified and r.status == 206 for r in ranged)
    assert (dest / "big.bin").read_bytes() == lm_server.path("big.bin").read_bytes()


def test_a_fresh_last_modified_keeps_one_connection(
    store: Path, seg_policy: bitsnb.Policy, lm_server: FileServer, dest: Path
) -> None:
    """No ETag and a Last-Modified within a minute of the Date (weak): one GET, no segments."""
    lm_server.connection_rate = 3_000_000
    url = lm_server.add_random_file("new.bin", 4 * MIB, seed=12)  # modified just now
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job, peak = _run(mgr, url, dest / "new.bin")
        assert job.state is JobState.TRANSFERRED, job.error
        job.complete()
    assert peak == 1
    assert [(r.range, r.status) for r in lm_server.requests] == [(None, 200)]
    assert (dest / "new.bin").read_bytes() == lm_server.path("new.bin").read_bytes()


def test_a_file_changed_between_segments_starts_again(
    store: Path, seg_policy: bitsnb.Policy, lm_server: FileServer, dest: Path
) -> None:
    """Suspended while segmented, the file changes (a new, also old, Last-Modified): the
    resumed segments' If-Range fails with a 200, the file starts again and ends as the new
    content."""
    lm_server.connection_rate = 2_000_000
    url = lm_server.add_random_file("big.bin", 8 * MIB, seed=13)
    first_date = _age(lm_server, "big.bin", HOUR_AGO)
    with bitsnb.Manager(store=store, policy=seg_policy) as mgr:
        job = mgr.create_job("lm")
        job.minimum_retry_delay = 0.05
        job.add_file(url, dest / "big.bin")
        job.resume()
        wait_until(lambda: job.files[0].connections >= 2, 30, "a second connection")
        job.suspend()
        assert stored_table(store, job.id) is not None  # the table was kept
        lm_server.change_file("big.bin")
        second_date = _age(lm_server, "big.bin", 2 * HOUR_AGO)
        assert second_date != first_date
        lm_server.connection_rate = None
        lm_server.reset_log()
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    first = lm_server.requests[0]
    assert first.range is not None and first.if_range == first_date and first.status == 200
    assert (dest / "big.bin").read_bytes() == lm_server.path("big.bin").read_bytes()


def test_segments_resume_after_sigkill_with_the_date(
    store: Path, policy: bitsnb.Policy, lm_server: FileServer, dest: Path
) -> None:
    """A process fetching a Last-Modified-only file in segments is SIGKILLed: a new manager
    resumes every open segment with If-Range on the date (206 each), fetches less than the
    file again, and the file is byte-exact."""
    size = 10 * MIB
    lm_server.connection_rate = 500_000
    lm_server.add_random_file("victim.bin", size, seed=14)
    modified = _age(lm_server, "victim.bin", HOUR_AGO)
    _, reqs = resume_killed(store, policy, lm_server, "victim.bin", dest / "victim.bin")
    assert all(_is_date(r.if_range) and r.if_range == modified for r in reqs)
