"""When a segmented download tries its first extra connection: a sender that holds the
connection back (a server capping each connection sends its allowance and waits) is tried
after one short window, not after two level seconds; an idle path's growth is not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _support.helpers import loopback_received, wait_until

import bitsnb
from bitsnb import JobState
from bitsnb._segment_ramp import JUDGE_SECONDS, Ramp
from bitsnb._segments import sender_holds
from bitsnb._tcpinfo import tcp_info, tcp_info_available
from bitsnb.testing import FileServer

KIB, MIB = 1024, 1024 * 1024


def test_a_sender_holds_when_idle_for_round_trips_with_nothing_unread() -> None:
    assert sender_holds(0.11, 0.05, 0)  # nginx limit_rate at 50 ms: idle 0.18 s between sends
    assert not sender_holds(0.09, 0.05, 0)  # under two round trips: slow start's own gaps
    assert not sender_holds(0.5, 0.05, 4096)  # bytes wait unread: the reader is behind, not it
    assert not sender_holds(0.02, 0.00005, 0)  # loopback: the scheduler's noise is not a hold
    assert sender_holds(0.05, 0.00005, 0)
    assert not sender_holds(1.0, None, 0) and not sender_holds(1.0, 0.0, 0)  # no round trip


def _ramp_until_added(held: bool, rate: float = 10e6, tick: float = 0.05) -> float | None:
    """Feed a ramp a level *rate* from one flowing connection; when it first adds one."""
    ramp: Ramp[object] = Ramp(segment_window=0.3)
    for i in range(200):  # bounded: 10 s of ticks
        now = i * tick
        step = ramp.step(now, int(rate * now), 0.0, flowing=True, conns=1, trial_got=0, held=held)
        if step.add:
            return now
    return None


def test_a_held_connection_is_tried_after_one_short_window() -> None:
    held = _ramp_until_added(held=True)
    level = _ramp_until_added(held=False)
    assert held is not None and level is not None
    assert held < JUDGE_SECONDS  # one segment_window (0.3 s) after the window began
    assert level >= 2 * JUDGE_SECONDS  # a first second, then a level one


def test_a_held_first_connection_is_tried_with_seven_more_at_once() -> None:
    """A sender holding its one connection back caps each connection: the first trial asks
    for eight in all (the file's default cap), not for one more; a level one asks for one."""
    for held, more in ((True, 7), (False, 1)):
        ramp: Ramp[object] = Ramp(segment_window=0.3)
        for i in range(200):  # bounded: 10 s of ticks
            now = i * 0.05
            step = ramp.step(
                now, int(10e6 * now), 0.0, flowing=True, conns=1, trial_got=0, held=held
            )
            if step.add:
                break
        assert step.add == more, (held, step)


def test_a_growing_connection_that_is_not_held_is_not_tried() -> None:
    ramp: Ramp[object] = Ramp(segment_window=0.3)
    for i in range(100):  # bounded: 5 s of a rate that doubles each second (slow start)
        now = i * 0.05
        step = ramp.step(
            now, int(1e6 * 2**now), 0.0, flowing=True, conns=1, trial_got=0, held=False
        )
        assert not step.add, now


@pytest.mark.skipif(not tcp_info_available(), reason="TCP_INFO is Linux-only")
def test_tcp_info_says_how_long_since_data_came() -> None:
    with loopback_received(1000) as (client, _peer):
        fresh = tcp_info(client)
        time.sleep(0.3)  # the idleness itself is what is measured
        later = tcp_info(client)
    assert fresh is not None and later is not None
    assert fresh.last_data_recv < 0.2
    assert 0.25 <= later.last_data_recv < 10.0  # milliseconds in the struct, seconds here


def test_a_capped_server_gets_its_second_connection_within_a_second(
    tmp_path: Path, server: FileServer
) -> None:
    """The test server caps each connection, sending 50 ms of its rate at a time: the second
    connection's request comes before the first has sent one second's worth (two level
    seconds were waited for before: two seconds' worth at least)."""
    policy = bitsnb.Policy(
        background="full",
        min_segment_bytes=512 * KIB,
        segment_window=0.2,
        max_connections_per_file=2,
    )
    rate = 2_000_000
    server.connection_rate = rate
    url = server.add_random_file("big.bin", 12 * MIB, seed=31)
    dest = tmp_path / "big.bin"
    with bitsnb.Manager(store=tmp_path / "jobs.db", policy=policy) as mgr:
        job = mgr.create_job("held")
        job.add_file(url, str(dest))
        job.resume()
        wait_until(
            lambda: len(server.requests) >= 2 or job.state is JobState.TRANSFERRED, 30, "two"
        )
        first = server.requests[0].body_bytes_sent
        assert len(server.requests) >= 2
        assert first < rate, first
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    assert dest.read_bytes() == server.path("big.bin").read_bytes()


def test_a_kept_trial_under_a_holding_sender_quadruples() -> None:
    """Kept early while a sender still held a connection back: the path has room for more
    than a doubling (two connections → eight, the first of them alone); without a hold, two
    more."""
    for held, more in ((True, 6), (False, 2)):
        ramp: Ramp[object] = Ramp(segment_window=0.3)
        ramp.base_rate = 10e6
        ramp.started(object(), 1)  # the trial: a second connection
        step = ramp.step(0.0, 0, 0.0, flowing=True, conns=2, trial_got=0, held=held)  # begins
        assert not step.add
        step = ramp.step(  # 20 MB/s, half of it the trial's own
            0.3, 6_000_000, 0.0, flowing=True, conns=2, held=held, trial_got=3_000_000
        )
        assert step.add == more, (held, step)


def test_a_trial_is_kept_only_for_what_it_brings_itself() -> None:
    """The file's rate rose by two thirds in the trial's window, but the trial crawled (100 KB/s
    beside 3 MB/s): the rise was the first connection's own (a lull before it), so the trial
    is neither kept early nor after a second; it is retired and the file stays at one."""
    ramp: Ramp[object] = Ramp(segment_window=0.2)
    ramp.base_rate = 3e6
    trial = object()
    ramp.started(trial, 1)
    assert not ramp.step(0.0, 0, 0.0, flowing=True, conns=2, trial_got=0).add
    step = None
    for i in range(1, 30):  # bounded: 1.45 s of ticks at 5 MB/s, 100 KB/s of it the trial's
        now = i * 0.05
        step = ramp.step(now, int(5e6 * now), 0.0, flowing=True, conns=2, trial_got=int(1e5 * now))
        assert not step.add, now
        if step.retire:
            break
    assert step is not None and step.retire == (trial,) and step.cap == 1


def test_a_trial_that_ended_in_its_window_is_credited_with_its_bytes() -> None:
    """One of two trials wrote its segment and ended mid-window: what it brought still counts
    (its bytes leave the trial's count and its start alike), so the pair is kept."""
    ramp: Ramp[object] = Ramp(segment_window=0.3)
    ramp.base_rate = 10e6
    a, b = object(), object()
    ramp.started(a, 2)
    ramp.started(b, 1)
    assert not ramp.step(0.0, 0, 0.0, flowing=True, conns=3, trial_got=0).add
    ramp.ended(a, 2_000_000)  # 20 MB/s for 0.1 s, then its segment was done
    step = ramp.step(0.3, 9_000_000, 0.0, flowing=True, conns=2, trial_got=1_000_000)
    assert step.add and not step.retire, step
