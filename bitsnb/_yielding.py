"""Background jobs yield to other traffic: a delay-based, receiver-side rate controller.

In the spirit of LEDBAT (RFC 6817), LEDBAT++ (draft-irtf-iccrg-ledbat-plus-plus) and
receiver-side LEDBAT (RFC 9840), but as a *rate* for the host's token bucket (``_buckets``)
rather than a congestion window: bitsnb receives, and the only lever a receiver has is how fast
it reads (the kernel's window then slows the sender within a round trip; the receive buffer is
kept to rate × RTT by ``_bandwidth.receive_buffer_for``).

Pure: fed ``(time, connection, round trip, bytes)`` samples (the round trip from ``TCP_INFO``,
``_tcpinfo``), it outputs ``rate`` (bytes/s) and ``connections`` (how many connections the host
should use). No clock, no IO, so synthetic traces test it.

- **Base delay**: per connection, the lowest round trip of each of the last ``base_minutes``
  minutes (RFC 6817's base history), so a base that really rose (a new route) is forgotten after
  that time, and one lower sample (a drained queue) lowers it at once.
- **Current delay**: the lowest of the last ``current_samples`` samples (RFC 6817's filter:
  one delayed ACK or scheduling hiccup does not count as queue).
- **Queueing delay** = current − base, the highest over the connections (they share the path).
- **Rate**, once per round trip (``update_every`` at least): at start (from ``seed``: TCP's
  initial window, if higher), × (1 + gain) per round trip, or ``slow_start_growth`` (the pacer
  doubles: its windows bound the queue) (at most that above what was delivered) until the queueing delay reaches ¾ of the target (LEDBAT++'s slow start and its exit); then below the
  target ``rate × (1 + gain × (target − delay) / target)`` with LEDBAT++'s dynamic gain
  1 / min(16, ⌈2 × target / base⌉), and above it the multiplicative decrease
  ``rate × max(½, 1 − (delay / target − 1))``, no more than halved in two round trips while
  the delay is under twice the target (its signal lags the cuts). It never goes below ``min_rate`` (BITS keeps a
  trickle going) nor above ``max_rate``, and it does not grow while the bytes received stay
  under half of it (the allowance is not being used: the server or the disk is the limit).
- **Connections**: halved on a decrease, one more per round trip while the delay is under half
  the target (many connections, each with its own window, build queue a rate cannot undo fast).
- **Periodic slow-down** (LEDBAT++): two round trips after slow start ends, and then 9 × the
  last slow-down's length after each (its length counted until what is delivered is back to
  90 % of the rate before it: the sender's window regrows for seconds after), but at least
  ``slowdown_gap`` s apart (each cost ~0.5 s of the link in the testbed: at 9× alone that was
  5 %), the rate falls to ``min_rate`` for two round trips (the queue drains, every connection
  sees the true base), then goes back to where it was at once (``jump_back``: the pacer's
  windows, sized from what was delivered, bound the burst; else it doubles back); until
  delivery has recovered it does not fall below that while the delay is under the target.
- **Slow start ends** at ``exit_at`` × the target (LEDBAT++: ¾; the pacer, whose windows hold
  the queue under ¾ of the target, passes less).
- **Freshness**: a connection without a round trip for ``stale`` s shows no queue (the kernel
  updates its estimate only as data arrives); the pacer sets ``min_rate`` to LEDBAT's two
  segments a round trip.

``Policy.background``: "yield" runs this for background jobs (HIGH, NORMAL, LOW), "full" does
not; FOREGROUND is never throttled by it. ``background_mode`` falls back to "full" where
``TCP_INFO`` is missing, and logs that once.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

from ._bandwidth import BackgroundMode, check_background

__all__ = ["Phase", "YieldController", "background_mode"]

_log = logging.getLogger("bitsnb")

Phase = Literal["slow start", "avoidance", "slowdown", "ramp"]

TARGET = 0.060
"""Queueing delay aimed at (s): LEDBAT's 60 ms (RFC 6817 allows at most 100 ms)."""


@dataclass
class _Path:
    """One connection's delay estimates."""

    base: deque[tuple[int, float]] = field(default_factory=deque)  # (minute, lowest rtt)
    current: deque[float] = field(default_factory=deque)  # the last few rtts
    seen: float = 0.0  # when the last round trip came

    def add(self, now: float, rtt: float, minutes: int, samples: int) -> None:
        minute = int(now // 60)
        if self.base and self.base[-1][0] == minute:
            if rtt < self.base[-1][1]:
                self.base[-1] = (minute, rtt)
        else:
            self.base.append((minute, rtt))
        while self.base and self.base[0][0] <= minute - minutes:
            self.base.popleft()
        self.current.append(rtt)
        self.seen = now
        while len(self.current) > samples:
            self.current.popleft()

    @property
    def base_delay(self) -> float:
        return min(r for _, r in self.base)

    @property
    def queueing_delay(self) -> float:
        return max(0.0, min(self.current) - self.base_delay)


class YieldController:
    """A background host's rate from its connections' round trips (see the module docstring)."""

    def __init__(
        self,
        *,
        target: float = TARGET,
        min_rate: float = 16_000.0,
        max_rate: float | None = 10e9,
        initial_rate: float = 640_000.0,
        max_connections: int = 4,
        base_minutes: int = 10,
        current_samples: int = 4,
        update_every: float = 0.025,
        stale: float = 1.0,
        slowdown_gap: float = 10.0,
        jump_back: bool = True,
        exit_at: float = 0.75,
        slow_start_growth: float | None = None,
    ) -> None:
        self.target = target
        self.min_rate = min_rate
        self.max_rate = max_rate
        self.max_connections = max_connections
        self.base_minutes = base_minutes
        self.current_samples = current_samples
        self.update_every = update_every
        self.stale = stale
        self.slowdown_gap = slowdown_gap
        self.jump_back = jump_back
        self.exit_at = exit_at
        self.slow_start_growth = slow_start_growth  # None: LEDBAT++'s 1 + gain per round trip
        self.rate = self._clamp(initial_rate)
        self.connections = max_connections
        self.phase: Phase = "slow start"
        self.queueing_delay: float | None = None
        self.slowdowns = 0  # how many slow-downs have started (for panels and tests)
        self._paths: dict[Hashable, _Path] = {}
        self._last: float | None = None  # when the rate was last updated
        self._bytes = 0  # received since then
        self._window: deque[tuple[float, int]] = deque()  # (update time, bytes) of late updates
        self._pressed = False  # someone waited on the rate since the last update
        self._next_slowdown: float | None = None
        self._slowdown_start = 0.0
        self._slowdown_end = 0.0
        self._resume_rate = self.rate
        self._hold_until = 0.0  # after a slow-down: no fall below the resumed rate before this
        self._recovering = False  # after a slow-down, until delivery is back to its rate
        self._cut_from = self.rate  # the rate when the last episode of decreases began
        self._cut_until = 0.0  # ...and when it ends

    # -- input --------------------------------------------------------------------------------
    def on_sample(
        self,
        now: float,
        conn: Hashable,
        rtt: float | None,
        nbytes: int = 0,
        *,
        pressed: bool = False,
    ) -> float:
        """Take one sample (*rtt* None: bytes only) and return the rate now in force.

        *pressed*: transfers were waiting on the rate (it binds), so what they received is
        not the measure of what they could use."""
        self._bytes += max(0, nbytes)
        self._pressed = self._pressed or pressed
        if rtt is not None and rtt > 0 and math.isfinite(rtt):
            path = self._paths.get(conn)
            if path is None:
                path = self._paths[conn] = _Path()
            path.add(now, rtt, self.base_minutes, self.current_samples)
        if self._last is None:
            self._last = now
            return self.rate
        if now - self._last >= max(self.update_every, self._rtt()):
            self._update(now)
        return self.rate

    def seed(self, rate: float) -> None:
        """Start slow start no lower than *rate* (TCP's own initial window over the first
        round trip: the sender sends that much anyway), before the first update only."""
        if self.phase == "slow start" and not self._window and math.isfinite(rate):
            self.rate = self._clamp(max(self.rate, rate))
            self._resume_rate = self._cut_from = self.rate

    def forget(self, conn: Hashable) -> None:
        """A connection closed: its estimates go."""
        self._paths.pop(conn, None)

    @property
    def base_delay(self) -> float | None:
        """The lowest base round trip over the connections (s), None before any sample."""
        return min((p.base_delay for p in self._paths.values()), default=None)

    # -- the control law ----------------------------------------------------------------------
    def _rtt(self) -> float:
        """A round trip to pace updates by: the longest current one (0 before any sample)."""
        return max((min(p.current) for p in self._paths.values()), default=0.0)

    def _clamp(self, rate: float) -> float:
        if self.max_rate is not None:
            rate = min(rate, self.max_rate)
        return max(self.min_rate, rate)

    def _update(self, now: float) -> None:
        assert self._last is not None
        self._window.append((now, self._bytes))
        span = max(0.1, 4 * self._rtt())  # bytes come in bursts of the bucket: a few updates
        while len(self._window) > 1 and self._window[1][0] <= now - span:
            self._window.popleft()
        first = self._window[0][0] if len(self._window) > 1 else self._last
        elapsed = now - first
        got = sum(n for t, n in self._window if t > first or len(self._window) == 1)
        received = got / elapsed if elapsed > 0 else 0.0
        last = now - self._last
        if last > 0:  # steady arrivals: the last interval says it sooner than the window
            received = max(received, self._bytes / last)
        pressed, self._pressed = self._pressed, False
        self._last, self._bytes = now, 0
        if not self._paths:
            return
        # a path silent for ``stale`` s says nothing of the queue now (no data came: the
        # kernel's estimate is as old as its last segment); none fresh: no queue is seen
        fresh = [p for p in self._paths.values() if now - p.seen <= self.stale]
        delay = max((p.queueing_delay for p in fresh), default=0.0)
        self.queueing_delay = delay
        rtt = self._rtt()
        # what the path delivered, the anchor of every change: a rate far above it is not
        # tested by the path (the server or the disk limits), and one step above it is all
        # the queue can grow by in a round trip
        delivered = max(received, self.min_rate)
        if pressed:  # the rate binds: the transfers would take more
            delivered = max(delivered, self.rate)

        if self.phase == "slowdown":
            if now < self._slowdown_end:
                return
            self.phase = "ramp"
        if self.phase == "ramp":
            if delay > self.target or self.rate * 2 >= self._resume_rate or self.jump_back:
                if delay <= self.target:
                    self.rate = self._clamp(self._resume_rate)
                self.phase = "avoidance"
                # for a few round trips what was delivered still shows the slow-down, not
                # the path: the rate does not fall below the one it came back to
                self._hold_until = now + 4 * max(rtt, self.update_every)
                self._recovering = True  # the next slow-down is timed once delivery is back
            else:
                self.rate = self._clamp(self.rate * 2)
            return
        if self._recovering and (
            delivered >= 0.9 * self._resume_rate
            or delay > self.target
            or now - self._slowdown_start >= 30.0
        ):
            # a slow-down costs until the sender's window has grown back, not only while the
            # rate is down (measured: seconds behind a Reno server): 9 × that, ≤ 10 % of time
            self._recovering = False
            self._next_slowdown = now + max(9 * (now - self._slowdown_start), self.slowdown_gap)
        if self._next_slowdown is not None and now >= self._next_slowdown:
            self._start_slowdown(now, rtt)
            return

        if self.phase == "slow start":
            if delay < self.exit_at * self.target:
                # LEDBAT++'s slow start: the dynamic gain, not doubling, per round trip (the
                # delay it reacts to is a round trip or more late: doubling overshot a 250 ms
                # buffer at 100 Mbit/s before the first sample showed the queue), unless the
                # caller bounds the queue otherwise (the pacer's windows: slow_start_growth)
                grow = self.slow_start_growth or 1 + self._gain()
                self.rate = self._clamp(min(self.rate * grow, max(self.rate, delivered * grow)))
                return
            self.phase = "avoidance"
            self._next_slowdown = now + 2 * rtt  # LEDBAT++'s initial slow-down
        off = (self.target - delay) / self.target
        if off >= 0:
            step = 1 + self._gain() * off
            # grow from what the path delivers; below the target never fall under what was
            # allowed unless it is over twice what is used (the sender, not we, holds back:
            # a rate cut to it would shrink the window and then the sender's own window)
            grown = min(self.rate * step, delivered * step)
            if now < self._hold_until or self._recovering:
                grown = max(grown, min(self.rate, self._resume_rate))
            self.rate = self._clamp(grown)
            if off > 0.5:
                self.connections = min(self.max_connections, self.connections + 1)
        else:
            # LEDBAT++'s multiplicative decrease, from what the path delivers (at most halved)
            cut = max(0.5, 1 + off)
            rate = min(self.rate, delivered) * cut
            if now >= self._cut_until:  # a new episode of queue
                self._cut_from = self.rate
                self._cut_until = now + 2 * max(rtt, self.update_every)
            elif delay <= 2 * self.target:
                # a mild excess (a new connection's first window): at most halved an episode,
                # the delay shows a cut a round trip or more late (it cut 13.5 → 2.9 MB/s
                # on stale samples); over twice the target (a foreground flow) cut on
                rate = max(rate, 0.5 * self._cut_from)
            self.rate = self._clamp(rate)
            self.connections = max(1, self.connections // 2)

    def _gain(self) -> float:
        """LEDBAT++'s dynamic gain: 1 / min(16, ⌈2 × target / base⌉)."""
        base = self.base_delay or self._rtt()
        return 1.0 / min(16, math.ceil(2 * self.target / max(base, 1e-6)))

    def _start_slowdown(self, now: float, rtt: float) -> None:
        self.phase = "slowdown"
        self.slowdowns += 1
        self._resume_rate = self.rate
        self.rate = self.min_rate
        self._slowdown_start = now
        self._slowdown_end = now + max(2 * rtt, 2 * self.update_every)
        self._next_slowdown = None


_said_full = False


def background_mode(requested: object, *, tcp_info_available: bool) -> BackgroundMode:
    """The mode background jobs really run in: "yield" needs ``TCP_INFO``; "full" otherwise.

    Falls back from "yield" to "full" where round trips cannot be read, and logs so once per
    process (a warning on every job would drown the rest). Bad values raise E_INVALIDARG.
    """
    global _said_full
    mode = check_background(requested)
    if mode == "yield" and not tcp_info_available:
        if not _said_full:
            _said_full = True
            _log.warning(
                "background='yield' needs TCP_INFO round trips, which this system does not "
                "give; background jobs use the full bandwidth (background='full')"
            )
        return "full"
    return mode
