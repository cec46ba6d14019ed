"""Bandwidth caps and schedules on real jobs (issue 14): a job's cap, the manager's cap, a
limit of 0 that blocks background jobs until its window ends, FOREGROUND never capped by policy.

Caps are checked as lower bounds on the time a transfer takes (a cap can only slow it down),
measured from the server's side: the request's start and the job's end."""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path

import pytest

import bitsnb
from bitsnb import BitsError, JobPriority, JobState
from bitsnb.testing import FileServer

BG_E_BLOCKED_BY_POLICY = 0x8020003E
E_INVALIDARG = 0x80070057


def fast_policy(**kw: object) -> bitsnb.Policy:
    return bitsnb.Policy(min_retry_delay_floor=0.05, poll_interval=0.05, **kw)  # type: ignore[arg-type]


def timed_download(
    mgr: bitsnb.Manager, url: str, dest: Path, **job: object
) -> tuple[bitsnb.Job, float]:
    j = mgr.create_job("capped", **job)  # type: ignore[arg-type]
    j.add_file(url, dest)
    began = time.monotonic()
    j.resume()
    assert j.wait(timeout=60) is JobState.TRANSFERRED
    return j, time.monotonic() - began


def test_a_jobs_cap_slows_it_to_the_rate_and_survives_a_restart(
    store: Path, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("a.bin", 600_000)
    with bitsnb.Manager(store=store, policy=fast_policy()) as mgr:
        job = mgr.create_job("capped")
        job.set_max_bandwidth(200_000)
        job.add_file(url, dest / "a.bin")
        began = time.monotonic()
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED
        took = time.monotonic() - began
        job_id = job.id
    # 600 kB at 200 kB/s: about 3 s; the first burst is at most max(32 KiB, 50 ms of the rate)
    assert took >= (600_000 - 64 * 1024) / 200_000, took
    with bitsnb.Manager(store=store, policy=fast_policy()) as mgr:
        assert mgr.get_job(job_id).max_bandwidth == 200_000


@pytest.mark.parametrize("bad", [-1, math.nan, "fast", math.inf])
def test_a_bad_cap_is_refused_and_nothing_changes(manager: bitsnb.Manager, bad: object) -> None:
    job = manager.create_job("bad cap")
    with pytest.raises(BitsError) as info:
        job.set_max_bandwidth(bad)  # type: ignore[arg-type]
    assert info.value.code == E_INVALIDARG
    assert job.max_bandwidth is None


def test_the_managers_cap_holds_background_jobs_not_foreground(
    store: Path, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("b.bin", 400_000)
    with bitsnb.Manager(store=store, policy=fast_policy(max_bandwidth=200_000)) as mgr:
        _, fg = timed_download(mgr, url, dest / "fg.bin", priority=JobPriority.FOREGROUND)
        _, bg = timed_download(mgr, url, dest / "bg.bin", priority=JobPriority.NORMAL)
        assert bg >= (400_000 - 64 * 1024) / 200_000, bg
        assert fg < bg  # FOREGROUND is not under the background cap
        mgr.set_max_bandwidth(None)
        _, free = timed_download(mgr, url, dest / "free.bin")
        assert free < bg


class Clock:
    """A local-time clock the test moves (the schedule reads it each housekeeping round)."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def wait_for(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_limit_of_zero_blocks_background_jobs_until_the_window_ends(
    store: Path, server: FileServer, dest: Path
) -> None:
    clock = Clock(dt.datetime(2026, 12, 1, 9, 0))  # a Tuesday, inside the window
    window = bitsnb.BandwidthWindow(days="mon-fri", start="08:00", end="18:00", limit=0)
    policy = fast_policy(bandwidth_schedule=(window,), local_time=clock)
    url = server.add_random_file("c.bin", 50_000)
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("blocked")
        job.add_file(url, dest / "c.bin")
        job.resume()
        wait_for(lambda: job.state is JobState.TRANSIENT_ERROR)
        assert job.error is not None and job.error.code == BG_E_BLOCKED_BY_POLICY
        assert job.error_count == 0
        fg = mgr.create_job("fg", priority=JobPriority.FOREGROUND)
        fg.add_file(server.add_random_file("fg.bin", 1000), dest / "fg.bin")
        fg.resume()
        assert fg.wait(timeout=20) is JobState.TRANSFERRED  # FOREGROUND is not blocked
        assert job.state is JobState.TRANSIENT_ERROR
        clock.now = dt.datetime(2026, 12, 1, 18, 0, 1)  # the window ended
        assert job.wait(timeout=20) is JobState.TRANSFERRED
        assert job.error_count == 0


def test_overlapping_windows_are_refused() -> None:
    a = bitsnb.BandwidthWindow(days="mon-fri", start="08:00", end="18:00", limit=1000)
    b = bitsnb.BandwidthWindow(days="wed", start="17:00", end="19:00", limit=0)
    with pytest.raises(BitsError) as info:
        bitsnb.Policy(bandwidth_schedule=(a, b))
    assert info.value.code == E_INVALIDARG
