"""Bandwidth (issue 14, parts 2, 3 and 5): caps, windows, schedules, token buckets, the yield
controller, TCP_INFO and the receive buffer.

Pure and fast: the buckets run on ``VirtualLoop``, an asyncio loop whose clock jumps to the next
timer instead of waiting, so ten simulated seconds at 50 MB/s with 200 takers take a fraction of
a real second and no test sleeps; the yield controller is fed synthetic traces and a simulated
bottleneck. ``tests/test_bandwidth_wire.py`` holds the one test on a real socket and server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import selectors
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from _support.helpers import loopback_received

from bitsnb import _codes
from bitsnb._bandwidth import (
    MAX_RECEIVE_BUFFER,
    MIN_RECEIVE_BUFFER,
    BandwidthSchedule,
    BandwidthWindow,
    check_background,
    check_rate,
    parse_rate,
    receive_buffer_for,
)
from bitsnb._buckets import MIN_BURST, Budgets, Throttle, TokenBucket, burst_for
from bitsnb._errors import BitsError
from bitsnb._tcpinfo import tcp_info, tcp_info_available, unpack_tcp_info
from bitsnb._yielding import YieldController, background_mode

T = TypeVar("T")
KiB = 1024


# -- virtual time ----------------------------------------------------------------------------
class _Jump(selectors.SelectSelector):
    """A selector that never waits: asked to wait *t* seconds, it moves the loop's clock by t."""

    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is set")
        self._loop.now += max(0.0, timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated time: timers fire in order, at once, with no real waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_Jump(self))

    def time(self) -> float:
        return self.now


def simulate(main: Callable[[], Awaitable[T]]) -> T:
    """Run *main* on a fresh ``VirtualLoop`` and return its result."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _invalid(call: Callable[[], object]) -> BitsError:
    with pytest.raises(BitsError) as info:
        call()
    assert info.value.code == _codes.E_INVALIDARG
    return info.value


# -- rates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, math.inf, "5MB", True, [1], object()])
def test_a_cap_must_be_a_finite_number_at_least_zero(bad: object) -> None:
    _invalid(lambda: check_rate(bad))


def test_caps_none_zero_and_numbers() -> None:
    assert check_rate(None) is None
    assert check_rate(0) == 0.0
    assert check_rate(2_000_000) == 2_000_000.0


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("5MB", 5_000_000),
        ("5M", 5_000_000),
        ("5mb/s", 5_000_000),
        ("200k", 200_000),
        ("200K", 200_000),
        ("200kB", 200_000),
        ("1.5G", 1_500_000_000),
        ("1g/s", 1_000_000_000),
        ("1T", 1e12),
        ("512", 512),
        ("512B", 512),
        (" 0 ", 0),
        (".5M", 500_000),
        ("1MiB", 1024 * 1024),
        ("64KiB", 64 * 1024),
        ("off", None),
        ("None", None),
        ("unlimited", None),
    ],
)
def test_parse_rate_reads_curls_letters(text: str, rate: float | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("bad", ["", "fast", "-5M", "5X", "5 M B", "1e3", "iB", "5Mbit", "nan"])
def test_parse_rate_refuses_what_it_cannot_read(bad: str) -> None:
    _invalid(lambda: parse_rate(bad))


def test_background_modes() -> None:
    assert check_background("yield") == "yield"
    assert check_background("full") == "full"
    _invalid(lambda: check_background("idle"))
    assert background_mode("yield", tcp_info_available=True) == "yield"
    assert background_mode("full", tcp_info_available=True) == "full"


def test_background_yield_falls_back_to_full_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitsnb import _yielding

    monkeypatch.setattr(_yielding, "_said_full", False)
    with caplog.at_level("WARNING", logger="bitsnb"):
        assert background_mode("yield", tcp_info_available=False) == "full"
        assert background_mode("yield", tcp_info_available=False) == "full"
    assert [r.getMessage().count("TCP_INFO") for r in caplog.records] == [1]


# -- windows ---------------------------------------------------------------------------------
def test_window_defaults_and_spellings() -> None:
    w = BandwidthWindow()
    assert (w.days, w.start, w.end, w.limit) == ("mon-fri", "08:00", "18:00", 2_000_000)
    assert w.intervals() == [(d * 1440 + 480, d * 1440 + 1080) for d in range(5)]
    assert BandwidthWindow("MON,Wed", "8:00", "9:30", 1).intervals() == [
        (480, 570),
        (2 * 1440 + 480, 2 * 1440 + 570),
    ]
    assert len(BandwidthWindow("All", "00:00", "24:00", 0).intervals()) == 7
    assert len(BandwidthWindow("monday-Sunday", "01:00", "02:00", 0).intervals()) == 7
    assert [a // 1440 for a, _ in BandwidthWindow("fri-mon", "01:00", "02:00", 5).intervals()] == [
        0,
        4,
        5,
        6,
    ]
    assert BandwidthWindow(start=dt.time(7, 15), end=dt.time(7, 45)).intervals()[0] == (435, 465)
    assert BandwidthWindow() == BandwidthWindow("mon-fri", "08:00", "18:00", 2_000_000)
    assert hash(BandwidthWindow()) == hash(BandwidthWindow())


def test_an_overnight_window_runs_into_the_next_day_and_wraps_the_week() -> None:
    w = BandwidthWindow("fri,sun", "20:00", "06:00", 100)
    assert w.overnight
    fri, sun = 4 * 1440, 6 * 1440
    assert w.intervals() == [(fri + 1200, fri + 1440 + 360), (sun + 1200, 7 * 1440), (0, 360)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": -1},
        {"limit": math.nan},
        {"limit": math.inf},
        {"limit": "2MB"},
        {"limit": None},
        {"limit": True},
        {"start": "8am"},
        {"start": "25:00"},
        {"start": "08:60"},
        {"start": "24:00"},
        {"end": "18"},
        {"end": "18:00:00"},
        {"start": ""},
        {"start": 800},
        {"start": dt.time(8, 0, 30)},
        {"start": "09:00", "end": "09:00"},
        {"start": "00:00", "end": "24:00", "days": "funday"},
        {"start": "00:00", "end": "00:00"},
        {"days": "moon"},
        {"days": "mon-"},
        {"days": ""},
        {"days": "mon,,fri"},
        {"days": 5},
    ],
)
def test_bad_windows_are_refused(kwargs: dict[str, Any]) -> None:
    _invalid(lambda: BandwidthWindow(**kwargs))


# -- the schedule over a week ----------------------------------------------------------------
MON = dt.datetime(2026, 3, 2)  # a Monday


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return MON + dt.timedelta(days=day, hours=hh, minutes=mm, seconds=ss)


WORKDAY = BandwidthWindow("mon-fri", "08:00", "18:00", 2_000_000)
NIGHT_BLOCK = BandwidthWindow("mon-fri", "22:00", "06:00", 0)  # overnight, blocks
WEEKEND = BandwidthWindow("sat-sun", "10:00", "16:00", 500_000)


def test_a_schedule_gives_the_limit_in_force_all_week() -> None:
    s = BandwidthSchedule([WORKDAY, NIGHT_BLOCK, WEEKEND], default=10_000_000)
    expect = {
        at(0, 7, 59, 59): 10_000_000,
        at(0, 8): 2_000_000,
        at(0, 17, 59): 2_000_000,
        at(0, 18): 10_000_000,
        at(0, 22): 0,
        at(1, 3): 0,  # Monday night, on Tuesday
        at(1, 6): 10_000_000,
        at(4, 23): 0,  # Friday night
        at(5, 5, 59): 0,  # ... into Saturday morning
        at(5, 6): 10_000_000,
        at(5, 12): 500_000,
        at(6, 23): 10_000_000,  # Sunday night: no block
        at(7, 3): 10_000_000,  # the next Monday, early
    }
    for when, limit in expect.items():
        assert s.limit_at(when) == limit, when
    # every minute of the week has one limit, and there are exactly 5 × 3 + 2 × 2 changes
    values = [s.limit_at(at(0, 0) + dt.timedelta(minutes=m)) for m in range(7 * 1440)]
    changes = sum(a != b for a, b in itertools.pairwise([*values, values[0]]))
    assert changes == 5 * 4 + 2 * 2
    assert values.count(0) == 5 * 8 * 60


def test_next_change_is_when_the_window_opens_or_ends() -> None:
    s = BandwidthSchedule([WORKDAY, NIGHT_BLOCK, WEEKEND], default=None)
    assert s.next_change(at(0, 7, 59, 30)) == at(0, 8)
    assert s.next_change(at(0, 8)) == at(0, 18)
    assert s.next_change(at(0, 22, 0, 1)) == at(1, 6)  # a blocked job wakes at 06:00
    assert s.next_change(at(4, 23)) == at(5, 6)
    assert s.next_change(at(5, 16)) == at(6, 10)
    assert s.next_change(at(6, 16, 30)) == at(7, 8)  # Sunday → Monday's window
    assert s.limit_at(at(6, 17)) is None
    # from every hour of the week the change is after it, and the limit really changes there
    for hour in range(7 * 24):
        now = at(0, 0) + dt.timedelta(hours=hour, minutes=17)
        nxt = s.next_change(now)
        assert nxt is not None and now < nxt <= now + dt.timedelta(days=3)
        assert s.limit_at(nxt) != s.limit_at(now)
        assert s.limit_at(nxt - dt.timedelta(seconds=1)) == s.limit_at(now)


def test_adjacent_windows_with_one_limit_change_only_where_it_differs() -> None:
    s = BandwidthSchedule(
        [BandwidthWindow("all", "08:00", "12:00", 5), BandwidthWindow("all", "12:00", "18:00", 5)]
    )
    assert s.next_change(at(2, 9)) == at(2, 18)
    assert s.next_change(at(2, 19)) == at(3, 8)


def test_a_schedule_without_windows_or_changes() -> None:
    assert BandwidthSchedule([], default=7).limit_at(at(3, 3)) == 7
    assert BandwidthSchedule([]).next_change(at(3, 3)) is None
    # one window every day, all day, with the default as its limit: nothing ever changes
    same = BandwidthSchedule([BandwidthWindow("all", "00:00", "24:00", 9)], default=9)
    assert same.next_change(at(1, 1)) is None
    block = BandwidthSchedule([BandwidthWindow("all", "00:00", "24:00", 0)])
    assert block.limit_at(at(6, 23, 59, 59)) == 0 and block.next_change(at(0, 0)) is None


def test_aware_local_times_read_on_their_own_clock() -> None:
    tz = dt.timezone(dt.timedelta(hours=-5))
    s = BandwidthSchedule([WORKDAY])
    when = dt.datetime(2026, 3, 2, 8, 30, tzinfo=tz)
    assert s.limit_at(when) == 2_000_000
    assert s.next_change(when) == dt.datetime(2026, 3, 2, 18, 0, tzinfo=tz)


@pytest.mark.parametrize(
    "windows",
    [
        [WORKDAY, BandwidthWindow("wed", "17:00", "19:00", 1)],
        [WORKDAY, BandwidthWindow("mon-fri", "12:00", "13:00", 1)],
        [WORKDAY, WORKDAY],
        [NIGHT_BLOCK, BandwidthWindow("tue", "05:00", "07:00", 1)],  # Monday night's end
        [BandwidthWindow("sun", "23:00", "02:00", 0), BandwidthWindow("mon", "01:00", "03:00", 0)],
        [BandwidthWindow("all", "00:00", "24:00", 0), BandwidthWindow("sat", "10:00", "11:00", 1)],
    ],
)
def test_overlapping_windows_are_refused(windows: list[BandwidthWindow]) -> None:
    err = _invalid(lambda: BandwidthSchedule(windows))
    assert "overlap" in str(err)


def test_a_schedule_refuses_what_is_not_a_window_and_a_bad_default() -> None:
    _invalid(lambda: BandwidthSchedule(["mon-fri 08:00-18:00"]))  # type: ignore[list-item]
    _invalid(lambda: BandwidthSchedule([WORKDAY], default=-1))
    assert BandwidthSchedule(WORKDAY).windows == (WORKDAY,)  # type: ignore[arg-type]


# -- the receive buffer ----------------------------------------------------------------------
def test_receive_buffer_is_rate_times_rtt_within_bounds() -> None:
    assert receive_buffer_for(None, 0.05) is None
    assert receive_buffer_for(5_000_000, 0.05) == 500_000  # 2 × the 250 kB BDP
    assert receive_buffer_for(100_000, 0.0001) == MIN_RECEIVE_BUFFER
    assert receive_buffer_for(0, 0.05) == MIN_RECEIVE_BUFFER
    assert receive_buffer_for(1e9, 0.2) == MAX_RECEIVE_BUFFER
    assert receive_buffer_for(1_000_000, None) == 200_000  # the 100 ms guess
    assert receive_buffer_for(1_000_000, 0.05, headroom=1, floor=1, ceiling=10**9) == 50_000


# -- TCP_INFO --------------------------------------------------------------------------------
@pytest.mark.skipif(not tcp_info_available(), reason="TCP_INFO is Linux-only")
def test_tcp_info_on_a_loopback_connection() -> None:
    with loopback_received(200_000) as (client, peer):
        client.sendall(b"ack")
        assert peer.recv(3) == b"ack"
        info = tcp_info(client)
    assert info is not None
    assert info.state == 1  # TCP_ESTABLISHED: the layout's first byte
    assert isinstance(info.rtt, float) and 0 < info.rtt < 1.0
    assert info.rcv_rtt is None or 0 < info.rcv_rtt < 1.0
    assert info.best_rtt is not None and info.best_rtt < 1.0
    assert info.pmtu == 65535  # loopback's MTU: the u32 fields sit where the header says
    assert info.bytes_received == 200_000


def test_tcp_info_of_what_is_not_tcp_or_too_short() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert tcp_info(udp) is None
    assert unpack_tcp_info(b"\0" * 103) is None
    base = unpack_tcp_info(b"\1" + b"\0" * 103)  # Linux 2.6's struct: no min_rtt, no bytes
    assert base is not None and base.state == 1 and base.bytes_received is None
    assert base.min_rtt is None and base.rcv_rtt is None and base.best_rtt is None


# -- token buckets ---------------------------------------------------------------------------
def test_burst_is_32_kib_or_50_ms_of_the_rate() -> None:
    assert burst_for(None) == MIN_BURST == 32 * KiB
    assert burst_for(100_000) == 32 * KiB
    assert burst_for(5_000_000) == 250_000
    assert burst_for(50_000_000) == 2_500_000


@dataclass
class Log:
    """Bytes let through, by simulated time."""

    grants: list[tuple[float, int]] = field(default_factory=list)

    def windows(self, seconds: int) -> list[int]:
        out = [0] * seconds
        for t, n in self.grants:
            if t < seconds:
                out[int(t)] += n
        return out

    def total(self, until: float = math.inf) -> int:
        return sum(n for t, n in self.grants if t < until)


async def takers(
    throttle: Throttle, count: int, chunk: int, until: float, log: Log | None = None
) -> list[int]:
    """*count* tasks taking *chunk* bytes at a time until simulated time *until*; bytes each."""
    loop = asyncio.get_running_loop()
    got = [0] * count

    async def one(i: int) -> None:
        for _ in range(10**7):  # bounded: simulated time passes on every take
            if loop.time() >= until:
                return
            await throttle.take(chunk)
            if loop.time() < until:
                got[i] += chunk
                if log is not None:
                    log.grants.append((loop.time(), chunk))

    await asyncio.gather(*(one(i) for i in range(count)))
    return got


@pytest.mark.parametrize("connections", [1, 16, 200])
@pytest.mark.parametrize("rate", [100_000, 5_000_000, 50_000_000])
def test_a_cap_holds_every_second(rate: int, connections: int) -> None:
    """Every 1 s window after the first within ±5 %, the total within ±2 %, the first second
    at most cap + 64 KiB (the issue's targets), measured as bytes let through in simulated
    time. Chunks are 2 % of a second's worth (at most 64 KiB), as a receive buffer sized by
    ``receive_buffer_for`` makes them."""
    seconds = 10
    chunk = max(1000, min(64 * KiB, rate // 50))
    log = Log()

    async def main() -> None:
        await takers(Throttle(TokenBucket(rate)), connections, chunk, seconds, log)

    simulate(main)
    per_second = log.windows(seconds)
    assert per_second[0] <= rate + 64 * KiB
    for k, got in enumerate(per_second[1:], 1):
        assert abs(got - rate) <= 0.05 * rate, (k, got)
    assert abs(log.total() - rate * seconds) <= 0.02 * rate * seconds


def test_takers_share_a_bucket_fairly() -> None:
    rate, n = 1_000_000, 16

    async def main() -> list[int]:
        return await takers(Throttle(TokenBucket(rate)), n, 4000, 20.0)

    got = simulate(main)
    fair = rate * 20 / n
    assert all(abs(g - fair) <= 0.05 * fair for g in got), got


def test_a_connection_reading_megabytes_cannot_starve_the_others() -> None:
    """A hog taking 1 MiB at a time is served in turns of one burst (32 KiB here), so three
    small takers keep getting bytes every second."""
    rate = 200_000
    bucket = TokenBucket(rate)
    logs = [Log() for _ in range(4)]

    async def main() -> list[list[int]]:
        await asyncio.gather(
            takers(Throttle(bucket), 1, 1024 * KiB, 30.0, logs[0]),
            *(takers(Throttle(bucket), 1, 4000, 30.0, log) for log in logs[1:]),
        )
        return [log.windows(30) for log in logs]

    per_second = simulate(main)
    for small in per_second[1:]:
        assert min(small[1:]) >= 4000  # progress in every second
        assert sum(small) >= 0.05 * rate * 30
    total = sum(sum(w) for w in per_second)
    assert total <= rate * 30


def test_no_credit_is_saved_up_while_idle() -> None:
    """pv#32: after a minute idle, a 1 MB/s bucket lets through one burst ahead, no more."""
    rate = 1_000_000
    bucket = TokenBucket(rate)
    log = Log()

    async def main() -> None:
        await asyncio.sleep(60)
        await takers(Throttle(bucket), 4, 8000, 61.0, log)

    simulate(main)
    assert log.total() <= burst_for(rate) + rate * 1.0 + 8000
    assert log.total() >= rate * 1.0 * 0.95


def test_rates_change_live_both_ways() -> None:
    rate_a, rate_b, rate_c = 1_000_000, 100_000, 5_000_000
    bucket = TokenBucket(rate_a)
    log = Log()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(5.0, bucket.set_rate, rate_b)
        loop.call_later(10.0, bucket.set_rate, rate_c)
        await takers(Throttle(bucket), 8, 2000, 15.0, log)

    simulate(main)
    w = log.windows(15)
    for k in range(1, 5):
        assert abs(w[k] - rate_a) <= 0.05 * rate_a, (k, w[k])
    for k in range(6, 10):  # slowed at once: no burst of reservations at the old rate
        assert abs(w[k] - rate_b) <= 0.05 * rate_b, (k, w[k])
    assert w[5] <= rate_b + burst_for(rate_a) + 8 * 2000
    for k in range(10, 15):  # faster at once, the second of the change included
        assert abs(w[k] - rate_c) <= 0.05 * rate_c, (k, w[k])


def test_no_limit_releases_every_waiter_at_once() -> None:
    bucket = TokenBucket(1000)
    done: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(2.0, bucket.set_rate, None)

        async def one() -> None:
            await Throttle(bucket).take(50_000)
            done.append(loop.time())

        await asyncio.gather(*(one() for _ in range(20)))

    simulate(main)
    assert done == [2.0] * 20
    assert bucket.rate is None and bucket.waiting == 0


def test_rate_zero_holds_until_the_rate_changes() -> None:
    bucket = TokenBucket(0)
    done: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(30.0, bucket.set_rate, 64_000)

        async def one() -> None:
            await Throttle(bucket).take(32 * KiB)
            done.append(loop.time())

        await asyncio.gather(one(), one())

    simulate(main)
    assert done[0] == pytest.approx(30.0 + 32 * KiB / 64_000)
    assert done[1] == pytest.approx(30.0 + 2 * 32 * KiB / 64_000)


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    bucket = TokenBucket(10_000)
    done: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(Throttle(bucket).take(20_000))

        async def second() -> None:
            await Throttle(bucket).take(10_000)
            done.append(loop.time())

        task = asyncio.ensure_future(second())
        await asyncio.sleep(0.5)
        first.cancel()
        await task
        with pytest.raises(asyncio.CancelledError):
            await first

    simulate(main)
    assert done == [pytest.approx(1.0)]  # its 10 kB at 10 kB/s, not behind the 20 kB


def test_unlimited_takes_never_wait_and_are_counted() -> None:
    bucket = TokenBucket(None)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        for _ in range(1000):
            await Throttle(bucket, None).take(1 << 20)
        return loop.time()

    assert simulate(main) == 0.0
    assert bucket.granted == 1000 << 20
    _invalid(lambda: TokenBucket(-5))
    _invalid(lambda: bucket.set_rate(math.nan))
    assert bucket.rate is None


def test_nested_limits_job_under_host_under_manager() -> None:
    """Job A capped at 100 kB/s and job B uncapped share a 1 MB/s manager cap; a FOREGROUND job
    C on the same host is under its own cap only."""
    budgets = Budgets(1_000_000)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    budgets.set_job_rate(a, 100_000)
    budgets.set_job_rate(c, 3_000_000)
    logs = {k: Log() for k in "abc"}

    async def main() -> None:
        await asyncio.gather(
            takers(budgets.throttle(a, "h", foreground=False), 4, 2000, 20.0, logs["a"]),
            takers(budgets.throttle(b, "h", foreground=False), 4, 4000, 20.0, logs["b"]),
            takers(budgets.throttle(c, "h", foreground=True), 4, 20000, 20.0, logs["c"]),
        )

    simulate(main)
    rates = {k: log.total(20.0) / 20 for k, log in logs.items()}
    assert rates["a"] == pytest.approx(100_000, rel=0.03)
    assert rates["b"] == pytest.approx(900_000, rel=0.03)
    assert rates["c"] == pytest.approx(3_000_000, rel=0.03)
    assert budgets.manager.granted <= 1_000_000 * 20 + burst_for(1_000_000)
    for k in range(1, 20):
        both = logs["a"].windows(20)[k] + logs["b"].windows(20)[k]
        assert abs(both - 1_000_000) <= 0.05 * 1_000_000, (k, both)


def test_a_job_cap_set_later_reaches_its_open_connections() -> None:
    budgets = Budgets()
    job = uuid.uuid4()
    log = Log()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        throttle = budgets.throttle(job, "h", foreground=False)
        budgets.host("h").set_rate(1_000_000)  # as the yield controller would
        loop.call_later(1.0, budgets.set_job_rate, job, 50_000)
        loop.call_later(6.0, budgets.set_max_bandwidth, 20_000)
        await takers(throttle, 2, 1000, 12.0, log)

    simulate(main)
    w = log.windows(12)
    assert all(abs(x - 50_000) <= 2500 for x in w[2:6]), w
    assert all(abs(x - 20_000) <= 1000 for x in w[7:12]), w
    budgets.forget_job(job)


# -- the yield controller --------------------------------------------------------------------
def feed(
    ctl: YieldController,
    start: float,
    seconds: float,
    rtt: Callable[[float], float],
    *,
    step: float = 0.01,
    conns: int = 1,
) -> list[tuple[float, float, str]]:
    """Samples every *step* s for *seconds*, the bytes being what the rate allows (an open
    loop: the trace decides the round trips) → (t, rate, phase) after each step."""
    out = []
    for i in range(int(seconds / step)):
        t = start + i * step
        for c in range(conns):
            ctl.on_sample(t, c, rtt(t), int(ctl.rate * step / conns))
        out.append((t, ctl.rate, ctl.phase))
    return out


def test_queue_builds_rate_drops_and_fewer_connections() -> None:
    ctl = YieldController(initial_rate=1_000_000, max_connections=8)
    feed(ctl, 0, 1, lambda t: 0.050, conns=4)  # no queue: slow start doubles the rate
    grown = ctl.rate
    assert grown >= 8 * 1_000_000 and ctl.phase == "slow start"
    assert ctl.base_delay == pytest.approx(0.050)
    # a queue builds: up to 150 ms above the base, well over the 60 ms target
    feed(ctl, 1, 2, lambda t: 0.050 + min(0.150, (t - 1) * 0.5), conns=4)
    assert ctl.rate <= ctl.min_rate * 1.01
    assert ctl.connections == 1
    assert ctl.queueing_delay == pytest.approx(0.150, abs=0.01)


def test_queue_drains_rate_rises() -> None:
    ctl = YieldController(initial_rate=1_000_000)
    feed(ctl, 0, 1, lambda t: 0.050)
    feed(ctl, 1, 2, lambda t: 0.200)  # a queue: the rate falls to the floor
    low = ctl.rate
    assert low == ctl.min_rate and ctl.connections == 1
    trace = feed(ctl, 3, 3, lambda t: 0.060)  # 10 ms of queue: below the target
    assert max(r for _, r, _ in trace) > 1000 * low
    steady = [r for _, r, phase in trace if phase == "avoidance"]
    assert steady[-1] > steady[0]
    assert ctl.connections == ctl.max_connections


def test_at_the_target_the_rate_holds() -> None:
    ctl = YieldController(initial_rate=1_000_000)
    ctl.on_sample(0.0, 0, 0.050, 0)  # the base
    trace = feed(ctl, 0.01, 2, lambda t: 0.110)  # exactly 60 ms of queue from then on
    first = next(i for i, (_, _, phase) in enumerate(trace) if phase == "slowdown")
    steady = [r for _, r, phase in trace[:first] if phase == "avoidance"]
    assert steady and all(r == pytest.approx(1_000_000) for r in steady)
    assert max(r for _, r, _ in trace[first:]) == pytest.approx(1_000_000)  # and back


def test_a_rate_not_used_does_not_grow() -> None:
    """The server (or the disk) is the limit, not the path: the allowance follows what is
    delivered (at most twice it) instead of growing without bound while the path is idle."""
    ctl = YieldController(initial_rate=50_000)
    rates = []
    for i in range(300):
        rates.append(ctl.on_sample(i * 0.01, 0, 0.050, 1000))  # 100 kB/s received
    assert max(rates) <= 2 * 100_000 * 1.01
    assert rates[-1] >= 100_000


def test_base_history_forgets_a_base_that_rose() -> None:
    """A new route (50 → 80 ms): after ``base_minutes`` the base is the new one, so 30 ms of
    path are not taken for queue forever."""
    ctl = YieldController(base_minutes=2)
    feed(ctl, 0, 30, lambda t: 0.050, step=0.1)
    feed(ctl, 30, 60, lambda t: 0.080, step=0.1)
    assert ctl.base_delay == pytest.approx(0.050)
    feed(ctl, 90, 120, lambda t: 0.080, step=0.1)
    assert ctl.base_delay == pytest.approx(0.080)
    ctl.forget(0)
    assert ctl.base_delay is None


@dataclass
class Bottleneck:
    """A drop-tail FIFO link: *capacity* bytes/s, *buffer* seconds of queue, *base* RTT.

    bitsnb's rate reaches the sender one base RTT late (the window it advertises); a
    foreground flow offers *foreground* bytes/s; service is shared in proportion to what each
    has queued (FIFO)."""

    capacity: float = 12_500_000.0  # 100 Mbit/s
    base: float = 0.050
    buffer: float = 0.250
    step: float = 0.005
    q_us: float = 0.0
    q_fg: float = 0.0
    pipe: deque[float] = field(default_factory=deque)

    def tick(self, rate: float, foreground: float) -> tuple[float, float, float]:
        """One step → (rtt, bytes of ours delivered, bytes of the foreground delivered)."""
        self.pipe.append(rate)
        sent = self.pipe.popleft() if len(self.pipe) > self.base / self.step else 0.0
        self.q_us += sent * self.step
        self.q_fg += foreground * self.step
        limit = self.buffer * self.capacity
        total = self.q_us + self.q_fg
        if total > limit:
            self.q_us *= limit / total
            self.q_fg *= limit / total
            total = limit
        serve = min(total, self.capacity * self.step)
        ours = serve * self.q_us / total if total else 0.0
        self.q_us -= ours
        self.q_fg -= serve - ours
        return self.base + (self.q_us + self.q_fg) / self.capacity, ours, serve - ours


def run_bottleneck(
    ctl: YieldController, link: Bottleneck, seconds: float, foreground: Callable[[float], float]
) -> list[tuple[float, float, float, float]]:
    """→ (t, rtt, our bytes/s, foreground bytes/s) per step."""
    out = []
    for i in range(int(seconds / link.step)):
        t = i * link.step
        rtt, ours, fg = link.tick(ctl.rate, foreground(t))
        ctl.on_sample(t, "c", rtt, int(ours))
        out.append((t, rtt, ours / link.step, fg / link.step))
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _p95(xs: list[float]) -> float:
    return sorted(xs)[int(0.95 * (len(xs) - 1))]


def test_behind_a_bottleneck_it_fills_the_link_yields_and_comes_back() -> None:
    """The issue's targets, on a simulated 100 Mbit/s link with a 250 ms buffer and 50 ms
    RTT: alone ≥ 90 % of the link with ≤ 100 ms of added delay at p95; a foreground flow
    (offering 90 % of the link) gets ≥ 80 % within 2 s; bitsnb is back to ≥ 90 % within 5 s
    of it stopping. A plain download would keep the 250 ms buffer full."""
    link = Bottleneck()
    ctl = YieldController()
    fg_on, fg_off = 30.0, 50.0
    trace = run_bottleneck(
        ctl, link, 70.0, lambda t: 0.9 * link.capacity if fg_on <= t < fg_off else 0.0
    )
    cap = link.capacity

    def between(a: float, b: float, col: int) -> list[float]:
        return [row[col] for row in trace if a <= row[0] < b]

    alone = between(10, fg_on, 2)
    assert _mean(alone) >= 0.90 * cap
    assert _p95([r - link.base for r in between(10, fg_on, 1)]) <= 0.100
    assert _mean(between(fg_on + 2, fg_off, 3)) >= 0.80 * cap  # the foreground's share
    assert _mean(between(fg_on + 2, fg_off, 2)) <= 0.20 * cap
    assert _mean(between(fg_off + 5, 70, 2)) >= 0.90 * cap
    assert ctl.slowdowns >= 3


def test_periodic_slowdowns_re_measure_a_base_that_fell() -> None:
    """A shorter route (50 → 20 ms) is hidden by bitsnb's own standing queue: samples never go
    below the old base. The periodic slow-down drains the queue, a sample shows the new base,
    and the queue goes back to the target. Slow-downs come at 9 × their length (≤ 10 %)."""
    link = Bottleneck()
    ctl = YieldController()
    starts: list[float] = []
    seen = 0
    for i in range(int(40.0 / link.step)):
        t = i * link.step
        if t >= 10.0:
            link.base = 0.020
        rtt, ours, _ = link.tick(ctl.rate, 0.0)
        ctl.on_sample(t, "c", rtt, int(ours))
        if ctl.slowdowns > seen:
            seen = ctl.slowdowns
            starts.append(t)
    assert ctl.base_delay == pytest.approx(0.020, abs=0.002)
    assert ctl.queueing_delay is not None and ctl.queueing_delay <= 0.080
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps and min(gaps) >= 9 * 2 * 0.050  # nine times at least two round trips
