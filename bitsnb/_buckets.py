"""Token buckets nested manager → host → job, and the one ``take(nbytes)`` a connection calls.

Why hand-written: a token bucket is a few lines, and none of the libraries at hand fits what
bitsnb needs: *nested* limits that a chunk must clear at every level, rates changed live while
connections wait, first-come-first-served waiters so that one connection cannot starve the
others, no credit saved up while idle beyond the burst, and an injected clock so that tests run
a simulated minute in milliseconds (``aiolimiter``, for one, is a single leaky bucket whose
waiters race on wake-up; it is not installed here anyway).

How it works. A ``TokenBucket`` is one level: tokens flow in at ``rate`` bytes/s up to
``burst`` = max(32 KiB, 50 ms of the rate) and start at 0, so neither a new bucket nor one
that sat idle lets more than a burst through ahead of the rate (pv#32: saved-up credit let a
1 MB/s cap run at 80 MB/s). Waiters queue in arrival order; only the head is served, once the
tokens cover its piece (a piece larger than the burst takes the whole burst and leaves the rest
as debt). One timer per bucket, set for when the head can go; ``set_rate`` settles the tokens
earned at the old rate, then re-times the head at the new one, so a change acts at once in both
directions. ``rate=None`` is no limit: nothing waits; ``rate=0`` holds everyone until it changes.

A ``Throttle`` is the chain of buckets one connection is under (job, host, manager; any may be
None). ``take(n)`` cuts *n* into pieces no larger than the smallest burst in the chain and
clears each piece level by level, innermost first, so a connection that reads a megabyte at a
time queues again behind the others after each piece: the buckets serve connections in turns of
at most a burst. Nothing awaits when every level is unlimited (the engine's uncapped path costs
one attribute test per chunk).

``Budgets`` owns the buckets of one manager: the manager-wide one (background jobs only), whose
rate is the lower of the cap and the yield controller's rate (``_yielding``, run by
``_pacing``), one bucket per host, one per capped job, and hands each connection its
``Throttle``.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import uuid
from collections import deque
from collections.abc import Callable

from ._bandwidth import check_rate

__all__ = [
    "MIN_BURST",
    "Budgets",
    "Throttle",
    "TokenBucket",
    "burst_for",
    "charge_wire",
    "uncharge_wire",
]

_wire: contextvars.ContextVar[Callable[[int], int] | None] = contextvars.ContextVar(
    "bitsnb_wire_charge", default=None
)


def charge_wire(
    charge: Callable[[int], int] | None,
) -> contextvars.Token[Callable[[int], int] | None]:
    """This task's takes charge ``charge(n)`` for *n* bytes read: what crossed the wire since
    the last take (the pacer's, per connection: bytes read + the change in what its buffers
    hold, and a read-ahead paid in advance), so a connection's first window is paid for when
    it lands and its last buffered bytes are not paid twice. None: the bytes read. Undo with
    ``_wire.reset`` via the token."""
    return _wire.set(charge)


def uncharge_wire(token: contextvars.Token[Callable[[int], int] | None]) -> None:
    """Undo ``charge_wire`` (the body ended)."""
    _wire.reset(token)


MIN_BURST = 32 * 1024
"""The smallest burst, in bytes: a few segments, so small rates are not paced byte by byte."""

_SLACK = 1e-6  # bytes: float rounding must not leave a head waiting for a millionth of a byte

BURST_SECONDS = 0.05
"""Above ``MIN_BURST / BURST_SECONDS`` (640 kB/s) the burst is 50 ms of the rate."""


def burst_for(rate: float | None) -> int:
    """The burst of a bucket at *rate*: max(32 KiB, 50 ms of the rate); ``MIN_BURST`` if None."""
    if rate is None:
        return MIN_BURST
    return max(MIN_BURST, int(rate * BURST_SECONDS))


class TokenBucket:
    """One level of limit: *rate* bytes/s (None = none), waiters served first come, first served.

    *clock* gives seconds (monotonic); by default the running loop's ``time()``, which is what
    its timers use, so a test's virtual-time loop drives the bucket too.
    """

    def __init__(
        self,
        rate: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
        name: str = "",
    ) -> None:
        self.name = name
        self._rate = check_rate(rate, "rate")
        self._burst = burst_for(self._rate)
        self._clock = clock
        self._tokens = 0.0
        self._stamp: float | None = None  # when _tokens was last brought up to date
        self._queue: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.granted = 0  # bytes let through, ever (for panels and tests)

    def __repr__(self) -> str:
        return f"TokenBucket({self.name or '?'}, rate={self._rate}, waiting={len(self._queue)})"

    @property
    def rate(self) -> float | None:
        """Bytes per second, or None for no limit."""
        return self._rate

    @property
    def burst(self) -> int:
        """The most tokens the bucket holds (bytes)."""
        return self._burst

    @property
    def waiting(self) -> int:
        """How many pieces wait in the queue."""
        return len(self._queue)

    @property
    def limited(self) -> bool:
        """True if a piece may have to wait here (a rate is set, or others wait)."""
        return self._rate is not None or bool(self._queue)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _refill(self, now: float) -> None:
        if self._stamp is not None and self._rate is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def set_rate(self, rate: float | None) -> None:
        """Change the rate now (None = no limit); waiters are re-timed at the new rate.

        Tokens earned so far are kept (up to the new burst), debt too; an invalid rate raises
        ``BitsError(E_INVALIDARG)`` and changes nothing.
        """
        rate = check_rate(rate, "rate")
        if self._stamp is not None:
            self._refill(self._now())
        self._rate = rate
        self._burst = burst_for(rate)
        self._tokens = (
            min(self._tokens, float(self._burst)) if rate != 0 else min(self._tokens, 0.0)
        )
        if self._queue:
            self._serve()

    async def acquire(self, nbytes: int) -> None:
        """Wait until this level lets *nbytes* through (first come, first served)."""
        if nbytes <= 0:
            return
        now = self._now()
        self._refill(now)
        if self._rate is None and not self._queue:
            self.granted += nbytes
            return
        if not self._queue and self._tokens >= min(nbytes, self._burst) - _SLACK:
            self._tokens -= nbytes
            self.granted += nbytes
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((float(nbytes), fut))
        if len(self._queue) == 1:
            self._serve()
        try:
            await fut
        except asyncio.CancelledError:
            if not fut.cancelled():
                # granted as we were cancelled: the tokens are spent, pass nothing back
                raise
            self._serve()  # the head may have left: time the next one
            raise

    def _need(self, nbytes: float) -> float:
        """The tokens a waiting piece waits for: the piece, at most a burst. (Waiting longer at
        fast rates, 25 ms of the rate, saved ~5 % CPU at 50 MB/s but gave two segments of one
        file uneven turns: tests/test_segments.py saw a third connection tried.)"""
        return min(nbytes, float(self._burst))

    def _serve(self) -> None:
        """Let through every head piece the tokens cover, then time the next one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._now()
        self._refill(now)
        for _ in range(len(self._queue)):
            nbytes, fut = self._queue[0]
            if fut.done():  # cancelled waiter
                self._queue.popleft()
                continue
            need = self._need(nbytes) - _SLACK
            if self._rate is not None and self._tokens < need:
                break
            self._queue.popleft()
            if self._rate is not None:
                self._tokens -= nbytes
            self.granted += int(nbytes)
            fut.set_result(None)
        else:
            return
        if self._rate is None or self._rate <= 0:
            return  # rate 0: wait for set_rate
        delay = (self._need(self._queue[0][0]) - self._tokens) / self._rate
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(delay, 0.0), self._serve)


class Throttle:
    """The buckets one connection is under, innermost first (job, host, manager; None skipped)."""

    def __init__(self, *buckets: TokenBucket | None) -> None:
        self.buckets = tuple(b for b in buckets if b is not None)

    @property
    def limited(self) -> bool:
        """True if ``take`` may wait (some level has a rate or waiters)."""
        return any(b.limited for b in self.buckets)

    @property
    def piece(self) -> int | None:
        """The largest piece ``take`` lets through at once (the smallest burst); None if none."""
        return min((b.burst for b in self.buckets if b.rate is not None), default=None)

    async def take(self, nbytes: int) -> None:
        """Wait until every level lets *nbytes* through; pieces of at most the smallest burst
        of a level that limits (an unlimited level with nobody waiting only counts the bytes:
        its 32 KiB burst cut a 50 MB/s chunk into 32 KiB pieces, three awaits each)."""
        nbytes = max(nbytes, 0)
        gates = [b for b in self.buckets if b.limited]
        for b in self.buckets:
            if not b.limited:
                b.granted += nbytes
        if nbytes == 0 or not gates:
            return
        charge = _wire.get()
        if charge is not None:
            nbytes = charge(nbytes)
            if nbytes <= 0:
                return
        left = nbytes
        for _ in range(nbytes):  # bounded: each turn lets at least one byte through
            piece = min(left, min(b.burst for b in gates))
            for b in gates:
                await b.acquire(piece)
            left -= piece
            if left <= 0:
                return


class Budgets:
    """A manager's buckets: one manager-wide, one per host, one per capped job.

    FOREGROUND connections are under their job's cap only (BITS's policies cap background
    jobs only); background ones under the job's, the host's and the manager's.
    """

    def __init__(
        self, max_bandwidth: float | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self._clock = clock
        self.cap = check_rate(max_bandwidth)  # the policy's (or the schedule's) cap
        self.yield_rate: float | None = None  # the yield controller's rate (None: not yielding)
        self.cluster_rate: float | None = None  # this manager's share of a shared store's cap
        self.manager = TokenBucket(self.cap, clock=clock, name="manager")
        self._hosts: dict[str, TokenBucket] = {}
        self._jobs: dict[uuid.UUID, TokenBucket] = {}

    def set_max_bandwidth(self, rate: float | None) -> None:
        """The manager-wide cap for background jobs, live (None = none)."""
        self.cap = check_rate(rate)
        self._apply()

    def set_yield_rate(self, rate: float | None) -> None:
        """The yield controller's rate for background jobs, live (None: it does not limit)."""
        self.yield_rate = check_rate(rate, "yield rate")
        self._apply()

    def set_cluster_rate(self, rate: float | None) -> None:
        """This manager's share of the cap counted cluster-wide (``_cluster_limits``), live
        (None: the cap is this manager's alone)."""
        self.cluster_rate = check_rate(rate, "cluster rate")
        self._apply()

    def _apply(self) -> None:
        """The manager bucket runs at the lowest of the cap, the yield rate and the cluster
        share."""
        rates = [r for r in (self.cap, self.yield_rate, self.cluster_rate) if r is not None]
        rate = min(rates) if rates else None
        if rate != self.manager.rate:
            self.manager.set_rate(rate)

    def host(self, host: str) -> TokenBucket:
        """The bucket of *host* (created unlimited; the yield controller sets its rate)."""
        bucket = self._hosts.get(host)
        if bucket is None:
            bucket = self._hosts[host] = TokenBucket(None, clock=self._clock, name=host)
        return bucket

    def job(self, job_id: uuid.UUID) -> TokenBucket:
        """The bucket of a job (created unlimited), so a cap set later reaches its connections."""
        bucket = self._jobs.get(job_id)
        if bucket is None:
            bucket = self._jobs[job_id] = TokenBucket(None, clock=self._clock, name=str(job_id))
        return bucket

    def set_job_rate(self, job_id: uuid.UUID, rate: float | None) -> None:
        """A job's own cap, live (None = none)."""
        self.job(job_id).set_rate(rate)

    def forget_job(self, job_id: uuid.UUID) -> None:
        """Drop a finished job's bucket."""
        self._jobs.pop(job_id, None)

    def throttle(self, job_id: uuid.UUID, host: str, *, foreground: bool) -> Throttle:
        """The chain a connection of *job_id* to *host* takes its bytes from."""
        job = self.job(job_id)
        if foreground:
            return Throttle(job)
        return Throttle(job, self.host(host), self.manager)


def seconds_for(nbytes: int, rate: float | None) -> float:
    """How long *nbytes* take at *rate* (0 if no limit, inf if blocked): for ETAs."""
    if rate is None:
        return 0.0
    return math.inf if rate <= 0 else nbytes / rate
