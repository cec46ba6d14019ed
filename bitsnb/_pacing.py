"""The bandwidth loop of a manager: connections' round trips → the yield controller → the
background token rate; a capped connection's receive buffer sized to its rate × round trip.

The engine tells ``Pacer.watch`` of each response body it reads (and when it is done). While any is watched one task samples their ``TCP_INFO`` (``_tcpinfo``):

- **yield** (``Policy.background="yield"``, the default): every ``tick`` the round trips of the
  background (non-FOREGROUND) connections feed one ``YieldController`` (``_yielding``; one per
  manager, since the bottleneck it protects, the user's own link, is shared by every host), and
  its rate becomes the manager bucket's rate (``Budgets.set_yield_rate``), under the cap if one
  is set. FOREGROUND connections are not under the manager bucket, so never throttled by it.
  With no background connection left the yield rate is lifted (an upload alone is not held to
  a rate nothing measures); the controller keeps its state for the next one.
- **receive buffer**: while a cap is in force over a connection (its job's, or the manager's —
  the cap or the yield rate — for a background one, shared by the connections under it), its window is held to the share
  × round trip (``receive_buffer_for``), and the lean transport's read-ahead to the same
  (``limit_read_ahead``), so neither the kernel nor userspace pulls megabytes ahead. A cap's
  window is a fixed ``SO_RCVBUF`` (with ``TCP_WINDOW_CLAMP``) while ``net.core.rmem_max``
  allows it; a yield window, and one larger than that, is ``TCP_WINDOW_CLAMP`` alone over the
  kernel's autotuned buffer (``_clamp``), set again at every sample.
- **the yield window**: a yielding connection's window is also held to what the yielding
  connections' kernels delivered together lately (its peak over ``PEAK_HOLD``) × (base +
  ``QUEUE_SHARE`` × the target), split among them: the sender can then queue at most that
  much, however late the delay signal comes (``tcpi_rcv_rtt`` lags a round trip or more:
  slow start had filled a 250 ms buffer before it showed, and Reno then regrew for seconds).
- **what a take charges** (``charge_wire``, per body): what crossed the wire since the last take,
  with one read-ahead paid in advance from the body's first take, which the job's next body
  inherits when this one ends before using it (``_wire_bytes``, ``_keep_advance``).
- **rates**: each job's current rate, from the bytes its connections' kernels took off the wire.

Where ``TCP_INFO`` is missing, "yield" falls back to "full" (said once, by ``background_mode``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import math
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._bandwidth import DEFAULT_RTT, MAX_RECEIVE_BUFFER, MIN_RECEIVE_BUFFER, receive_buffer_for
from ._buckets import Budgets, burst_for, charge_wire, uncharge_wire
from ._connectbuf import autotune_max, clamp_window, fixed_buffer_max
from ._connectbuf import use as use_connect_buffer
from ._models import Policy
from ._tcpinfo import TcpInfo, response_socket, tcp_info, tcp_info_available
from ._transport import MIN_READ_AHEAD, limit_read_ahead, read_ahead_limit
from ._wireahead import held_ahead
from ._yielding import YieldController, background_mode

__all__ = ["Pacer"]

TICK = 0.01
"""Seconds between samples of the background connections' round trips (yield mode)."""

SLOW_EVERY = 20
"""Rates and receive buffers are looked at every this many ticks (0.2 s)."""

MIN_RATE = 16_000.0
"""The yield rate's floor (bytes/s) below LEDBAT's two segments a round trip."""

QUEUE_SHARE = 0.75
"""A yielding connection's window is what it delivered × (base + this × the target): the
queue the sender can build is then at most that, whatever the delay signal's lag."""

PEAK_HOLD = 1.0
"""Seconds a connection's delivered peak sizes its window (it bridges a slow-down)."""

_RESIZE = 0.25  # a receive buffer is set again only when the wanted size moves this much
_INITIAL_WINDOW = 10  # segments: Linux's initial congestion window (RFC 6928)
_FAST_CAP = 1e6  # bytes/s: a share this fast reads a burst at a time and sleeps between
_SIZED_AT_CONNECT = 10e6  # bytes/s: a share below this sizes a new connection's first window
_SLOW_WINDOW = 0.04  # seconds of a slow cap's rate its window holds at least (not a burst)
# bytes: a slow cap's window is never below this, nor below the transport's least read-ahead
# (one size: a read-ahead over the window would let a burst past it in userspace)
_SLOW_MIN_WINDOW = MIN_READ_AHEAD
_MAX_ADVANCES = 256  # jobs whose unused advance is kept for their next body
_KEPT_ADVANCES = 4  # read-aheads' worth of unused advance a job keeps at most


def _slow_floor(share: float) -> int:
    """The least window of a slow cap's connection: ``_SLOW_WINDOW`` of its rate.

    Not a burst nor a few segments: the sender writes only when the window opens, and Linux
    opens it again only once half of it is free, so a window of a burst (32 KiB at 100 kB/s,
    +32 KiB of the server's send buffer) came to the server's socket in bursts of a third of
    a second's worth, and its 1 s windows swung −22 to +17 %; a 4 KiB one, ±2.5 % (a raw client)."""
    return max(_SLOW_MIN_WINDOW, int(share * _SLOW_WINDOW))


@dataclass
class _Conn:
    """One watched response body's connection."""

    job_id: uuid.UUID
    foreground: bool
    sock: socket.socket
    resp: httpx.Response
    received: int | None = None  # the kernel's bytes_received at the last slow sample
    rtt_min: float | None = None
    rcvbuf: int | None = None  # what bitsnb set (None: left to the kernel)
    clamp: int | None = None  # the window clamp over an autotuned buffer (None: not clamped)
    mss: int = 0  # the receiving side's segment size (0: not known yet)
    seen_bytes: int | None = None  # bytes_received at the last fast sample
    local: bool = False  # to this host (loopback): crosses no link other traffic shares
    taken: int = 0  # the body's bytes the engine took so far
    edge: int | None = None  # what its takes charged so far, advance included (None: no take)
    fast: bool = False  # under a fast cap (``_FAST_CAP``): its takes pay a read-ahead ahead


@dataclass
class _Delivery:
    """What the yielding connections' kernels took, together: the rate over about a round trip
    and the peak of that over ``PEAK_HOLD`` (their windows are sized from it)."""

    total: int = 0  # bytes, ever
    arrivals: deque[tuple[float, int]] = field(default_factory=deque)  # (t, total)
    peaks: deque[tuple[float, float]] = field(default_factory=deque)  # (t, rate), falling

    def add(self, now: float, nbytes: int, rtt: float | None) -> None:
        self.total += nbytes
        self.arrivals.append((now, self.total))
        span = max(0.06, 1.5 * (rtt or 0.0))
        while len(self.arrivals) > 2 and self.arrivals[1][0] <= now - span:
            self.arrivals.popleft()
        t0, b0 = self.arrivals[0]
        if now - t0 < 0.5 * span:
            return
        rate = (self.total - b0) / (now - t0)
        while self.peaks and self.peaks[-1][1] <= rate:
            self.peaks.pop()
        self.peaks.append((now, rate))
        while self.peaks[0][0] <= now - PEAK_HOLD:
            self.peaks.popleft()

    @property
    def peak(self) -> float | None:
        """The highest rate delivered lately (bytes/s), None before a round trip of data."""
        return self.peaks[0][1] if self.peaks else None


class Pacer:
    """Samples watched connections; drives the yield rate, receive buffers and job rates."""

    def __init__(
        self,
        policy: Policy,
        budgets: Budgets,
        *,
        probe: Callable[[socket.socket], TcpInfo | None] = tcp_info,
        available: bool | None = None,
        tick: float = TICK,
    ) -> None:
        self._policy = policy
        self._budgets = budgets
        self._probe = probe
        ok = tcp_info_available() if available is None else available
        self.mode = background_mode(policy.background, tcp_info_available=ok)
        # the window bounds the queue at QUEUE_SHARE of the target: slow start ends below it,
        # and may double per round trip as TCP's does (the window, not the rate, holds the
        # queue: behind a 250 ms buffer alone 98 % of the link, probe p95 +59–65 ms, as with
        # LEDBAT++'s ×1.33 at 50 ms, which took 1 s of a 1 GB download to reach 250 MB/s)
        self.controller = YieldController(
            exit_at=0.5 * QUEUE_SHARE, slow_start_growth=2.0, max_connections=8
        )
        self._tick = tick
        self._conns: dict[int, _Conn] = {}
        self._keys = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._granted = 0
        self._rates: dict[uuid.UUID, float] = {}
        # read-ahead paid in advance by bodies that ended before it was used, per job: the
        # job's next body starts with it (one advance for a run of files, not one per file)
        self._advances: dict[uuid.UUID, int] = {}
        self._stamp: float | None = None
        self._delivery = _Delivery()
        self.wakeups = 0  # the sampling loop's wake-ups, ever (tests count them)
        self._admitted: dict[uuid.UUID, int] = {}  # files of each job with a turn to connect
        self._turns: dict[asyncio.Task[Any], uuid.UUID] = {}  # each turn's task → its job
        self._turn = asyncio.Event()  # set (and replaced) when a turn may have come free

    # -- what the runner and the panels read ----------------------------------------------------
    @property
    def yielding(self) -> bool:
        """True while the controller holds background jobs back for other traffic."""
        delay = self.controller.queueing_delay
        return (
            self.mode == "yield"
            and self._budgets.yield_rate is not None
            and delay is not None
            and delay > 0.5 * self.controller.target
        )

    def job_rate(self, job_id: uuid.UUID) -> float | None:
        """The job's current rate on the wire (bytes/s), None when not measured."""
        return self._rates.get(job_id)

    @property
    def watched(self) -> int:
        """How many connections are watched now."""
        return len(self._conns)

    # -- the engine's hook ----------------------------------------------------------------------
    def watch(
        self, job_id: uuid.UUID, foreground: bool, resp: httpx.Response
    ) -> Callable[[], None]:
        """A body starts arriving: sample its socket until the returned call says it ended."""
        sock = response_socket(resp)
        if sock is None:
            return _nothing
        key = next(self._keys)
        conn = self._conns[key] = _Conn(job_id, foreground, sock, resp, local=_is_loopback(sock))
        info = self._probe(sock)  # the handshake gave a round trip, and the segment size
        if info is not None:
            conn.mss, conn.rtt_min = info.rcv_mss, info.best_rtt
            if self._yields(conn) and info.best_rtt and info.snd_mss:
                self.controller.seed(_INITIAL_WINDOW * info.snd_mss / info.best_rtt)
        self._resize(conn)  # before the window has grown
        token = charge_wire(functools.partial(self._wire_bytes, conn))  # this body's task
        if self._task is None or self._task.done():
            self._granted = self._budgets.manager.granted
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bitsnb-pacer")
        if self._yields(conn) and self._budgets.yield_rate is None:
            self._budgets.set_yield_rate(self.controller.rate)

        def unwatch() -> None:
            if self._conns.pop(key, None) is None:
                return
            with contextlib.suppress(ValueError):  # called from another context: nothing to undo
                uncharge_wire(token)
            self._keep_advance(conn)
            limit_read_ahead(resp, None)
            self._unclamp(conn)  # a kept-alive connection's next body starts unclamped
            self.controller.forget(key)
            if not any(c.job_id == job_id for c in self._conns.values()):
                self._rates.pop(job_id, None)
            if not any(self._yields(c) for c in self._conns.values()):
                self._budgets.set_yield_rate(None)

        return unwatch

    def may_add_connection(self, foreground: bool, job_id: uuid.UUID | None = None) -> bool:
        """Whether a file of *job_id* may open one more segment: under a cap, while the job has
        fewer connections than the cap needs (``connections_for``); a background one also
        while the yielding connections are fewer than the controller's count (halved as it
        slows down, one more a round trip while the queue is under half the target)."""
        if job_id is not None:
            need = self.connections_for(job_id, foreground)
            have = sum(1 for c in self._conns.values() if c.job_id == job_id)
            if need is not None and have >= need:
                return False
        if foreground or self.mode != "yield":
            return True
        n = sum(1 for c in self._conns.values() if self._yields(c))
        return n < self.controller.connections

    def connections_for(self, job_id: uuid.UUID, foreground: bool) -> int | None:
        """How many of the job's files may have a connection open at once under its caps (its
        own; the manager's for background): enough windows of ``MAX_RECEIVE_BUFFER`` to carry
        the cap over the round trip, at least one; None when no cap is set. Each connection's
        first window and the server's send buffer go out at once (200 of them carried a
        100 kB/s cap's files out in the first second), so a cap opens only what it needs."""
        rates = [self._budgets.job(job_id).rate]
        if not foreground:
            rates.append(self._budgets.cap)
        caps = [r for r in rates if r is not None]
        if not caps:
            return None
        rtts = [c.rtt_min for c in self._conns.values() if c.job_id == job_id and c.rtt_min]
        rtt = max(rtts) if rtts else DEFAULT_RTT
        return max(1, math.ceil(min(caps) * rtt / MAX_RECEIVE_BUFFER))

    @contextlib.asynccontextmanager
    async def admit(self, job_id: uuid.UUID, foreground: bool) -> AsyncIterator[None]:
        """A file's turn to connect: waits while the job has as many files open as its caps
        need (``connections_for``); a cap lifted or raised (``retune``) lets waiters in. The
        turn ends with the block, or sooner once its file's bytes are all in (``received``)."""
        for _ in itertools.count():  # bounded: each turn waits for a file to end or a cap
            limit = self.connections_for(job_id, foreground)
            if limit is None or self._admitted.get(job_id, 0) < limit:
                break
            await self._turn.wait()
        self._admitted[job_id] = self._admitted.get(job_id, 0) + 1
        task = asyncio.current_task()
        assert task is not None
        self._turns[task] = job_id
        try:
            yield
        finally:
            self._end_turn(task)

    def received(self) -> None:
        """The calling task's file has every byte of its body: its turn ends before the final
        fsync, which takes no bandwidth (on loopback a cap admits one file at a time, so each
        fsync, 0.2-1.1 ms and at times a few hundred, stopped the transfer)."""
        task = asyncio.current_task()
        if task is not None:
            self._end_turn(task)

    def _end_turn(self, task: asyncio.Task[Any]) -> None:
        job_id = self._turns.pop(task, None)
        if job_id is None:
            return  # ended already (``received``), or no turn taken in this task
        left = self._admitted[job_id] - 1
        if left:
            self._admitted[job_id] = left
        else:
            del self._admitted[job_id]
        self._let_in()

    def _let_in(self) -> None:
        """Wake the files waiting for a turn (they look at the caps again)."""
        self._turn.set()
        self._turn = asyncio.Event()

    def size_new_connections(self, job_id: uuid.UUID, foreground: bool) -> None:
        """The calling task's (a job's run) new connections start with the window of its cap."""
        use_connect_buffer(functools.partial(self._connect_size, job_id, foreground))

    def _connect_size(self, job_id: uuid.UUID, foreground: bool) -> int | None:
        """The receive buffer a new connection of the job starts with: its share of a cap
        under ``_SIZED_AT_CONNECT`` for a guessed round trip, at most one burst (the first
        window offered is never taken back; the body's round trip then sizes it), None when no
        cap is set (the yield rate sizes windows once a round trip is known)."""
        shares: list[float] = []
        job_rate = self._budgets.job(job_id).rate
        if job_rate is not None:
            n = 1 + sum(1 for c in self._conns.values() if c.job_id == job_id)
            shares.append(job_rate / n)
        cap = self._budgets.cap
        if cap is not None and not foreground:
            n = 1 + sum(1 for c in self._conns.values() if not c.foreground)
            shares.append(cap / n)
        if not shares or min(shares) >= _SIZED_AT_CONNECT:
            # a cap this fast: Linux's first window is a small part of a second's worth, and
            # a fixed buffer from the start measured slower (50 MB/s: −13 % against −5 %, one
            # run each); at 5 MB/s the first window of a loopback connection (~0.8 MB, 16 % of
            # a second) swung the 1 s windows of 16 files one after another by ±8-12 %
            return None
        share = min(shares)
        if share < _FAST_CAP:
            # a slow cap's least window, which the round trip then grows: a sender whose
            # window falls under half the largest it was offered waits for its persist timer
            # (a 100 kB/s connection that began at 10 kB, then held to 4 KiB, ran at 14 %)
            return _slow_floor(share)
        first = min(burst_for(share), share * DEFAULT_RTT)  # ≤ a burst, ≤ a WAN round trip
        return int(min(MAX_RECEIVE_BUFFER, max(MIN_RECEIVE_BUFFER, first)))

    def retune(self) -> None:
        """A cap changed: receive buffers follow now, not at the next slow sample."""
        for conn in list(self._conns.values()):
            self._resize(conn)
        self._let_in()

    async def aclose(self) -> None:
        """Stop sampling (the manager closes)."""
        self._conns.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the loop -------------------------------------------------------------------------------
    def _yields(self, conn: _Conn) -> bool:
        # a loopback connection yields to nobody: no other program's traffic shares its path,
        # and a controller held to a 60 ms queue target there only cost CPU (+0.3 CPU-s/GiB)
        return self.mode == "yield" and not conn.foreground and not conn.local

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slow_at = loop.time() + SLOW_EVERY * self._tick
        for _ in itertools.count(1):  # bounded: ends with the last watched connection
            if not self._conns:
                return
            # the fast tick only feeds the yield controller: with no connection yielding (a
            # cap alone, "full", loopback) one wake-up per slow sample, not 100 a second
            fast = any(self._yields(c) for c in self._conns.values())
            await asyncio.sleep(self._tick if fast else max(0.0, slow_at - loop.time()))
            now = loop.time()
            slow = now >= slow_at - 1e-9
            if slow:
                slow_at = now + SLOW_EVERY * self._tick
            self.wakeups += 1
            self._sample(now, slow=slow)

    def _sample(self, now: float, *, slow: bool) -> None:
        granted = self._budgets.manager.granted
        nbytes, self._granted = granted - self._granted, granted
        pressed = self._budgets.manager.waiting > 0
        fed = False
        delivered = 0
        if slow:
            elapsed = now - self._stamp if self._stamp is not None else 0.0
            self._stamp = now
            per_job: dict[uuid.UUID, int] = {}
        for key, conn in list(self._conns.items()):
            yields = self._yields(conn)
            if not (yields or slow):
                continue
            info = self._probe(conn.sock)
            if info is None:
                continue
            rtt = info.best_rtt
            conn.mss = info.rcv_mss
            # the kernel's estimate moves only with new data: a sample without any is stale
            got = info.bytes_received
            fresh = got is None or got != conn.seen_bytes
            if yields and got is not None and conn.seen_bytes is not None:
                delivered += max(0, got - conn.seen_bytes)
            conn.seen_bytes = got
            if rtt:
                conn.rtt_min = rtt if conn.rtt_min is None else min(conn.rtt_min, rtt)
            if yields:
                if rtt and conn.mss:  # LEDBAT's floor: two segments a round trip
                    floor = 2 * conn.mss / (self.controller.base_delay or rtt)
                    self.controller.min_rate = max(MIN_RATE, floor)
                sample = rtt if fresh else None
                self.controller.on_sample(now, key, sample, 0 if fed else nbytes, pressed=pressed)
                fed = True
                self._resize(conn)  # the window follows the yield rate
            if slow and info.bytes_received is not None:
                if conn.received is not None:
                    per_job[conn.job_id] = per_job.get(conn.job_id, 0) + max(
                        0, info.bytes_received - conn.received
                    )
                conn.received = info.bytes_received
                self._resize(conn)
        if fed:
            self._delivery.add(now, delivered, self.controller.base_delay)
            self._budgets.set_yield_rate(self.controller.rate)
        if slow and elapsed > 0:
            for job_id, got in per_job.items():
                old = self._rates.get(job_id)
                rate = got / elapsed
                self._rates[job_id] = rate if old is None else 0.5 * (old + rate)

    # -- what crossed the wire ------------------------------------------------------------------
    def _wire_bytes(self, conn: _Conn, nbytes: int) -> int:
        """What a take of *nbytes* read from *conn* charges: what crossed the wire since the
        last take (the bytes taken plus what its buffers hold ahead, ``_wireahead``), with one
        read-ahead's worth paid in advance (``read_ahead_limit``); at least 0.

        In advance because a take that lets the read go on reopens the window, and what
        lands meanwhile was charged only at the next take: those bytes put 0.1-1.7 MB over a
        5-50 MB/s cap's first second. A job's next body starts with the advance its last one
        did not use (``_keep_advance``), so a run of files pays it once. A slow cap pays
        none (``_advance``)."""
        conn.taken += nbytes
        ahead = _advance(conn)
        edge = conn.taken + held_ahead(conn.sock, conn.resp) + ahead
        if conn.edge is None:  # the first take: an advance left by the job's last body counts
            left = self._advances.pop(conn.job_id, 0)
            conn.edge = min(left, ahead)
            if left > conn.edge:  # the rest waits for the job's other bodies
                self._advances[conn.job_id] = left - conn.edge
        charge = edge - conn.edge
        conn.edge = max(conn.edge, edge)
        return max(0, charge)

    def _keep_advance(self, conn: _Conn) -> None:
        """A body ended: what its takes paid beyond what it took waits for the job's next body
        (at most one read-ahead; a bounded number of jobs keep one)."""
        if conn.edge is None:
            return
        ahead = _advance(conn)
        unused = max(0, min(conn.edge - conn.taken, ahead))
        kept = self._advances.pop(conn.job_id, 0) + unused  # moved to the end: the newest
        if kept:
            while len(self._advances) >= _MAX_ADVANCES:
                del self._advances[next(iter(self._advances))]
            self._advances[conn.job_id] = min(kept, _KEPT_ADVANCES * ahead)

    # -- receive buffers ------------------------------------------------------------------------
    def _share(self, conn: _Conn) -> float | None:
        """The cap over *conn*, split among the connections under the same cap; None if none."""
        shares: list[float] = []
        job_rate = self._budgets.job(conn.job_id).rate
        if job_rate is not None:
            n = sum(1 for c in self._conns.values() if c.job_id == conn.job_id)
            shares.append(job_rate / max(1, n))
        cap = self._budgets.manager.rate  # the cap, or the yield rate if lower
        if cap is not None and not conn.foreground:
            n = sum(1 for c in self._conns.values() if not c.foreground)
            shares.append(cap / max(1, n))
        return min(shares, default=None)

    def _resize(self, conn: _Conn) -> None:
        sized = conn.rcvbuf is not None or conn.clamp is not None
        if sized and self._yields(conn) and self.controller.phase == "slowdown":
            # a slow-down stops reading, not the window: a buffer cut below what is in flight
            # makes the kernel drop the segments that land (Reno then halves and regrows)
            return
        share = self._share(conn)
        conn.fast = share is not None and share >= _FAST_CAP
        yields = False
        if share is None:
            if conn.clamp is not None:  # the cap was lifted: the autotuned window is free again
                limit_read_ahead(conn.resp, None)
                self._unclamp(conn)
            if conn.rcvbuf is None:
                return
            want = self._policy.receive_buffer or MAX_RECEIVE_BUFFER  # the cap was lifted
        else:
            # under the yield rate the window must not be what holds the flow back (the rate
            # grows only from what is delivered): twice the usual headroom
            b = self._budgets
            yields = (  # the yield rate, not a cap, is what sizes this window
                self._yields(conn)
                and b.yield_rate is not None
                and b.job(conn.job_id).rate is None
                and (b.cap is None or b.yield_rate < b.cap)
            )
            # a window of a few segments at least, or the receiver's silly-window avoidance
            # waits for a delayed ACK per segment (a 64 KiB loopback MSS stalled at 16 KiB)
            # (four segments; two for a slow cap, whose first second they would swell)
            if yields:
                floor = max(MIN_RECEIVE_BUFFER, 4 * conn.mss)
            elif share >= _FAST_CAP:
                # a fast cap reads a burst at a time and sleeps between (the buffers' bytes are
                # charged as they arrive, so they do not swell the first second): 256 KiB reads
                # cost +200 % CPU per GiB at 50 MB/s
                floor = max(MIN_RECEIVE_BUFFER, 4 * conn.mss, burst_for(share))
            else:
                floor = _slow_floor(share)
            if yields:
                # the window a yield rate gets: rate × (base + target), so the queue it lets
                # the sender build stays near the target even before the rate has come down
                base = conn.rtt_min or self.controller.base_delay or 0.0
                headroom = 1.0 + self.controller.target / base if base > 0 else 2.0
            else:
                headroom = 4.0 if share >= _FAST_CAP else 2.0
            # a yield window grows with the rate up to what autotuning would give (curl's
            # window): 4 MiB held one connection to 80 MB/s at 50 ms, 27 MB/s at 150 ms
            ceiling = max(MAX_RECEIVE_BUFFER, autotune_max()) if yields else MAX_RECEIVE_BUFFER
            want = (
                receive_buffer_for(
                    share, conn.rtt_min, headroom=min(headroom, 16.0), floor=floor, ceiling=ceiling
                )
                or MAX_RECEIVE_BUFFER
            )
            peak = self._delivery.peak
            if self._yields(conn) and peak is not None and conn.rtt_min:
                # what the path delivered × (base + a share of the target), split among the
                # yielding connections: at most that much queue, before the delay shows it
                # (slow start overshot a 250 ms buffer; Reno's regrowth took seconds)
                n = sum(1 for c in self._conns.values() if self._yields(c))
                # (at least two round trips: a window that doubles per round trip, as slow
                # start does; base + ¾ of the target alone grew ×1.3 per 150 ms round trip,
                # 0.3 → 150 MB/s in 5 s)
                allow = max(conn.rtt_min + QUEUE_SHARE * self.controller.target, 2 * conn.rtt_min)
                want = min(want, max(floor, int(peak * allow / max(1, n))))
        if conn.rcvbuf is None and (yields or want > fixed_buffer_max()):
            self._clamp(conn, want, share)
            return
        if conn.rcvbuf is not None and abs(want - conn.rcvbuf) <= _RESIZE * conn.rcvbuf:
            return
        # the userspace read buffer too, or it pulls a megabyte ahead of the kernel's window
        # in views of at most a burst: a view is read again only once all of it is taken
        limit_read_ahead(conn.resp, None if share is None else min(want, burst_for(share)))
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
            conn.rcvbuf = want
            # a fixed buffer stops Linux's autotuning, which is what raises the window's
            # clamp past the one set at connect time (~64 KiB: 1.7 MB/s at 50 ms, measured):
            # the clamp is set with the buffer, so a window can grow as well as shrink
            clamp_window(conn.sock, want)

    def _clamp(self, conn: _Conn, want: int, share: float | None) -> None:
        """Hold *conn*'s window to *want* over the kernel's autotuned buffer (``TCP_WINDOW_CLAMP``
        alone): a fixed ``SO_RCVBUF`` stops autotuning for good and cannot pass
        ``net.core.rmem_max`` (212992 stock: a yielding download at 50 ms got 22 MB/s where curl
        gets 185). Autotuning raises the clamp as it grows the buffer, so it is set again at
        every sample (each tick for a yielding connection)."""
        if conn.clamp is None or abs(want - conn.clamp) > _RESIZE * conn.clamp:
            limit_read_ahead(conn.resp, None if share is None else min(want, burst_for(share)))
        conn.clamp = want
        with contextlib.suppress(OSError):
            clamp_window(conn.sock, want)

    def _unclamp(self, conn: _Conn) -> None:
        """Let *conn*'s window follow the autotuned buffer again (if ``_clamp`` held it)."""
        if conn.clamp is None:
            return
        conn.clamp = None
        with contextlib.suppress(OSError):
            clamp_window(conn.sock, autotune_max())


def _advance(conn: _Conn) -> int:
    """The read-ahead *conn*'s takes pay in advance: its read-ahead under a fast cap; none
    under a slow one, whose window lets little land during a take (100 kB/s: 2-42 KiB over
    its first second without it) while paying 16-32 KiB in advance cost it 0.16-0.32 s (a
    6 s transfer of 200 files 2.8 % slower)."""
    return read_ahead_limit(conn.resp) if conn.fast else 0


def _nothing() -> None:
    """Nothing to undo (the body's socket could not be told)."""


def _is_loopback(sock: socket.socket) -> bool:
    """Whether *sock*'s peer is this host (127.0.0.0/8, ::1, or the IPv4-mapped form)."""
    try:
        ip = ipaddress.ip_address(sock.getpeername()[0])
    except (OSError, ValueError, IndexError, TypeError):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
