"""Bandwidth rules: caps, the schedule of BITS's Group Policy, rate text, receive-buffer sizing.

Rules only (no IO, no clock of its own): the caller hands in the local time, so tests drive a
week of schedule with made-up datetimes. What each piece answers:

- ``check_rate`` — is this a cap (bytes/s, None = no cap)? ``BitsError(E_INVALIDARG)`` if not;
- ``parse_rate`` — ``"5MB"``, ``"200k"``, ``"1.5G"``, ``"off"`` → bytes/s (the CLI's units);
- ``BandwidthWindow`` — one window of a schedule (days, start, end, limit), checked when built;
- ``BandwidthSchedule`` — windows that must not overlap, and the cap outside them: the limit in
  force at a local time and when it next changes (so a job blocked by a limit of 0 is woken
  exactly when its window ends, as BITS does for ``BG_E_BLOCKED_BY_POLICY``);
- ``receive_buffer_for`` — the socket receive buffer for a capped connection, rate × round trip,
  so the kernel does not pull megabytes ahead of the token bucket;
- ``check_background`` — ``Policy.background``: "yield" (the delay-based controller of
  ``_yielding``) or "full".

A limit of 0 is a valid cap: it blocks background jobs (TRANSIENT_ERROR ``BG_E_BLOCKED_BY_POLICY``,
not counted in ``error_count``). FOREGROUND jobs are never under the manager cap or the schedule.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from . import _codes
from ._errors import BitsError

__all__ = [
    "BACKGROUND_MODES",
    "BackgroundMode",
    "BandwidthSchedule",
    "BandwidthStatus",
    "BandwidthWindow",
    "check_background",
    "check_rate",
    "parse_rate",
    "receive_buffer_for",
]

BackgroundMode = Literal["yield", "full"]
BACKGROUND_MODES: tuple[BackgroundMode, ...] = ("yield", "full")

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_MINUTES = 24 * 60
_WEEK_MINUTES = 7 * _DAY_MINUTES
_TIME = re.compile(r"\s*(\d{1,2}):(\d{2})\s*\Z")


def _invalid(message: str) -> BitsError:
    return BitsError(_codes.E_INVALIDARG, message)


# -- caps -----------------------------------------------------------------------------------------
def check_rate(value: object, what: str = "max_bandwidth") -> float | None:
    """A cap in bytes per second: None (no cap) or a finite number ≥ 0; 0 blocks.

    bool, strings, NaN, infinity and negative numbers raise ``BitsError(E_INVALIDARG)``
    (None, not infinity, is "unlimited", so a cap always has one spelling).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{what} must be a number of bytes per second or None, not {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise _invalid(f"{what} must be zero or more bytes per second, not {value!r}")
    return float(value)


_RATE = re.compile(
    r"\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>(?P<prefix>[kmgt])?(?P<i>i)?b?)(?:/s|ps)?\s*\Z",
    re.IGNORECASE,
)
_PREFIX = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_UNLIMITED = frozenset({"none", "off", "unlimited", "inf", "max"})


def parse_rate(text: str) -> float | None:
    """A rate as people type it → bytes per second; ``"off"``/``"none"``/``"unlimited"`` → None.

    The letters are curl's ``--limit-rate`` ones (a plain number is bytes/s; ``k``, ``M``, ``G``,
    ``T`` in any case, optionally followed by ``B`` and ``/s``): ``"5MB"``, ``"5M"``, ``"200k"``,
    ``"1.5G/s"``. Their *value* is decimal (k = 1,000), unlike curl's 1,024, because every rate
    bitsnb shows is decimal (``_format``): a job capped at ``5MB`` then reads ``5.0 MB/s``, not
    ``5.2 MB/s``. The binary spellings ``KiB``, ``MiB``, ``GiB`` mean 1,024-based values.
    Anything else raises ``BitsError(E_INVALIDARG)``.
    """
    if not isinstance(text, str):
        raise _invalid(f"a rate must be text such as '5MB', not {text!r}")
    if text.strip().lower() in _UNLIMITED:
        return None
    m = _RATE.match(text)
    if m is None or (m["i"] and not m["prefix"]):
        raise _invalid(f"cannot read {text!r} as a rate (examples: 500k, 5MB, 1.5G, off)")
    base = 1024.0 if m["i"] else 1000.0
    value = float(m["num"]) * base ** _PREFIX[(m["prefix"] or "").lower()]
    checked = check_rate(value, "a rate")
    assert checked is not None
    return checked


# -- the schedule ---------------------------------------------------------------------------------
def _day(name: str) -> int:
    key = name.strip().lower()
    if key in _DAYS:
        return _DAYS.index(key)
    if key in _FULL_DAYS:
        return _FULL_DAYS.index(key)
    raise _invalid(f"unknown day {name.strip()!r} (mon, tue, ..., sun, or 'all')")


def _parse_days(days: object) -> frozenset[int]:
    """``"mon-fri"``, ``"mon,wed"``, ``"fri-mon"`` (wraps), ``"all"`` → weekday numbers."""
    if not isinstance(days, str) or not days.strip():
        raise _invalid(f"days must be text such as 'mon-fri', 'mon,wed' or 'all', not {days!r}")
    if days.strip().lower() in ("all", "*", "daily"):
        return frozenset(range(7))
    out: set[int] = set()
    for item in days.split(","):
        first, sep, last = item.partition("-")
        if not sep:
            out.add(_day(first))
            continue
        a, b = _day(first), _day(last)
        out.update((a + k) % 7 for k in range((b - a) % 7 + 1))
    return frozenset(out)


def _parse_time(value: object, what: str, *, allow_24: bool = False) -> int:
    """``"08:00"`` (or a ``datetime.time``) → minutes after midnight; ``"24:00"`` for an end."""
    if isinstance(value, _dt.time):
        if value.second or value.microsecond:
            raise _invalid(f"{what} must be whole minutes, not {value!r}")
        return value.hour * 60 + value.minute
    m = _TIME.match(value) if isinstance(value, str) else None
    if m is None:
        raise _invalid(f"{what} must be a time 'HH:MM', not {value!r}")
    hours, minutes = int(m[1]), int(m[2])
    if allow_24 and (hours, minutes) == (24, 0):
        return _DAY_MINUTES
    if hours > 23 or minutes > 59:
        raise _invalid(f"{what} {value!r} is not a time of day")
    return hours * 60 + minutes


@dataclass(frozen=True)
class BandwidthWindow:
    """One window of a bandwidth schedule: on *days*, from *start* to *end* local time, *limit*.

    ``days`` is "mon-fri", "mon,wed", "sat-sun", "all" (any case; full names too); ``start`` and
    ``end`` are "HH:MM" (``end`` may be "24:00"); an end earlier than the start runs overnight,
    and *days* names the day it starts on ("mon-fri" 20:00–06:00 runs Monday evening to Saturday
    morning). ``limit`` is bytes per second for background jobs, 0 blocking them. Bad values
    raise ``BitsError(E_INVALIDARG)`` here, so a window that exists is a valid one.
    """

    days: str = "mon-fri"
    start: str = "08:00"
    end: str = "18:00"
    limit: float = 2_000_000
    _days: frozenset[int] = field(init=False, repr=False, compare=False)
    _start: int = field(init=False, repr=False, compare=False)
    _end: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limit = check_rate(self.limit, "a window's limit")
        if limit is None:
            raise _invalid("a window's limit must be a number of bytes per second (0 blocks)")
        start = _parse_time(self.start, "start")
        end = _parse_time(self.end, "end", allow_24=True)
        if start == end:
            raise _invalid(f"a window's start and end must differ ({self.start!r})")
        object.__setattr__(self, "_days", _parse_days(self.days))
        object.__setattr__(self, "_start", start)
        object.__setattr__(self, "_end", end)

    @property
    def overnight(self) -> bool:
        """True when the window ends on the day after it starts."""
        return self._end < self._start

    def intervals(self) -> list[tuple[int, int]]:
        """The window as ``[start, end)`` minutes of the week (Monday 00:00 = 0), split at the
        week's end so no interval wraps."""
        length = (self._end - self._start) % _DAY_MINUTES or _DAY_MINUTES
        out: list[tuple[int, int]] = []
        for day in sorted(self._days):
            a = day * _DAY_MINUTES + self._start
            b = a + length
            if b <= _WEEK_MINUTES:
                out.append((a, b))
            else:  # Sunday night into Monday morning
                out += [(a, _WEEK_MINUTES), (0, b - _WEEK_MINUTES)]
        return out


def _minute_of_week(when: _dt.datetime) -> float:
    return (
        when.weekday() * _DAY_MINUTES
        + when.hour * 60
        + when.minute
        + (when.second + when.microsecond / 1e6) / 60
    )


@dataclass(frozen=True, init=False)
class BandwidthSchedule:
    """``Policy.bandwidth_schedule`` with ``Policy.max_bandwidth`` applying outside its windows.

    Built from any iterable of windows; overlapping windows (on any day, overnight ones included)
    raise ``BitsError(E_INVALIDARG)``, windows that only touch do not. ``limit_at`` and
    ``next_change`` take a local time: naive local datetimes (``datetime.now()``) or aware ones,
    read on their own wall clock. Across a daylight-saving change the wake-up time computed
    from ``next_change`` is off by the change (an hour, twice a year); a woken job looks again.
    """

    windows: tuple[BandwidthWindow, ...] = ()
    default: float | None = None
    _intervals: tuple[tuple[int, int, float], ...] = field(init=False, repr=False, compare=False)

    def __init__(self, windows: Iterable[BandwidthWindow] = (), default: float | None = None):
        wins = tuple(windows) if not isinstance(windows, BandwidthWindow) else (windows,)
        for w in wins:
            if not isinstance(w, BandwidthWindow):
                raise _invalid(f"a bandwidth schedule holds BandwidthWindow objects, not {w!r}")
        object.__setattr__(self, "windows", wins)
        object.__setattr__(self, "default", check_rate(default))
        spans = sorted((a, b, w.limit) for w in wins for a, b in w.intervals())
        reach = 0  # the latest end so far: an interval starting before it overlaps
        for a, b, _ in spans:
            if a < reach:
                raise _invalid(f"bandwidth windows overlap: {_describe(wins, a)}")
            reach = max(reach, b)
        object.__setattr__(self, "_intervals", tuple(spans))

    def limit_at(self, when: _dt.datetime) -> float | None:
        """The cap in force for background jobs at local time *when* (None = no cap)."""
        m = _minute_of_week(when)
        for a, b, limit in self._intervals:
            if a <= m < b:
                return limit
        return self.default

    def next_change(self, when: _dt.datetime) -> _dt.datetime | None:
        """The first moment after *when* at which ``limit_at`` gives another value; None if never.

        Looks at most one week (plus a day) ahead: the schedule repeats every week, so a limit
        that does not change in that time never changes.
        """
        if not self._intervals:
            return None
        now = self.limit_at(when)
        base = when.replace(second=0, microsecond=0)
        m = int(_minute_of_week(base))
        edges = sorted({e for a, b, _ in self._intervals for e in (a, b % _WEEK_MINUTES)})
        # every edge in the next week, in order: this week's after m, then next week's
        ahead = [e - m for e in edges if e > m] + [e + _WEEK_MINUTES - m for e in edges]
        for delta in ahead:
            at = base + _dt.timedelta(minutes=delta)
            if self.limit_at(at) != now:
                return at
        return None


def _describe(wins: Sequence[BandwidthWindow], minute: int) -> str:
    day, rest = divmod(minute, _DAY_MINUTES)
    names = [
        f"{w.days} {w.start}-{w.end}"
        for w in wins
        if any(a <= minute < b for a, b in w.intervals())
    ]
    return f"{', '.join(names)} (both on {_DAYS[day % 7]} at {rest // 60:02d}:{rest % 60:02d})"


# -- policy ---------------------------------------------------------------------------------------
def check_background(value: object) -> BackgroundMode:
    """``Policy.background``: "yield" (background jobs give way to other traffic) or "full"."""
    if value == "yield":
        return "yield"
    if value == "full":
        return "full"
    raise _invalid(f"background must be 'yield' or 'full', not {value!r}")


# -- what a job's transfer is under now -----------------------------------------------------------
@dataclass(frozen=True)
class BandwidthStatus:
    """What limits a job's transfer now (``job.bandwidth``, shown by panels and frames).

    ``state``: "throttled" (running at its cap), "yielding" (a background job giving way to
    other traffic), "blocked by policy" (a limit of 0 in force) or None; ``cap``: the cap in
    force over it, bytes/s (its own, or the manager's for a background job; None: none);
    ``rate``: its rate on the wire now, bytes/s (None while not measured or not running).
    """

    state: str | None = None
    cap: float | None = None
    rate: float | None = None


# -- the receive buffer ---------------------------------------------------------------------------
MIN_RECEIVE_BUFFER = 16 * 1024
"""Never below this: a few segments, so a slow cap on a fast link still keeps data coming."""

MAX_RECEIVE_BUFFER = 4 * 1024 * 1024
"""Never above this (the cap then does not bound the buffer anyway: 4 MiB is 80 ms at 50 MB/s)."""

DEFAULT_RTT = 0.1
"""The round trip assumed before TCP_INFO has measured one (a WAN guess; re-sized once known)."""


def receive_buffer_for(
    rate: float | None,
    rtt: float | None,
    *,
    headroom: float = 2.0,
    floor: int = MIN_RECEIVE_BUFFER,
    ceiling: int = MAX_RECEIVE_BUFFER,
) -> int | None:
    """The ``SO_RCVBUF`` to set on a connection capped at *rate* bytes/s with round trip *rtt* s.

    The window a receiver advertises bounds what the sender may have in flight; sized to the
    capped rate's bandwidth-delay product (× *headroom*, so the window is not what holds the
    flow below its cap while the bucket paces reads in bursts) the kernel holds at most a few
    round trips of data, instead of autotuning up to ``tcp_rmem``'s maximum and pulling
    megabytes ahead of the cap (what makes a cap hold "in userspace only"). Linux doubles the
    value for its bookkeeping and advertises about half of the doubled space, so the window is
    about the value given. None (no cap) → None: leave the buffer as the policy set it.
    An unknown *rtt* uses ``DEFAULT_RTT``; a *rate* of 0 gives the floor.
    """
    if rate is None:
        return None
    bdp = rate * (DEFAULT_RTT if rtt is None or rtt <= 0 else rtt) * headroom
    return int(min(max(bdp, floor), ceiling))
