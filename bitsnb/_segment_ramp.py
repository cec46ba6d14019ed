"""When a segmented download tries more connections, and whether the last ones paid (no IO:
the clock, the bytes and the loop thread's CPU time are passed in; ``_segmented`` opens them).

Servers that cap each connection send in bursts (nginx's ``limit_rate 10m`` at 50 ms: 2.1 MB
every 0.21 s, after a first allowance), and a loaded machine's rate wanders by more than 10 %:
so the rate without the trial is measured over at least ``JUDGE_SECONDS``; a trial is kept
early when a window of ``segment_window`` shows half a connection's share more for each one
tried (capped connections add a whole share), else judged by ``GAIN`` once ``JUDGE_SECONDS``
have passed. A trial kept early doubles the connections next (1, 2, 4, 8, as TCP's slow
start), the first two of each step alone and the rest together once they flow (a host
that allows one or two more sees one refusal), judged together: where each is capped, one at a time reached
eight only ~5 s in. A first connection whose sender holds it back (``_segments.sender_holds``:
idle for round trips with nothing unread, as a capped server between its allowances) is tried
once ``segment_window`` has shown its rate, without waiting for level seconds, and with seven
more connections at once (1 → 8, the file's default cap); a trial kept while a sender still held
one back quadruples instead of doubling.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ._segments import GAIN, gained

__all__ = ["JUDGE_SECONDS", "Ramp", "Step"]

JUDGE_SECONDS = 1.0
"""A connection on trial is dropped for a small gain only after this long."""

_BUSY_LOOP = 0.8  # share of the time the loop's thread computes, above which none is added
_HELD_GROWTH = 8  # a first trial under a holding sender: eight times the connections

C = TypeVar("C")  # a connection (``_segment_parts.Conn``; only its identity matters here)


@dataclass(frozen=True)
class Step(Generic[C]):
    """What the download does now: start *add* connections (the first of them now, the rest
    together once it flows), and retire *retire*, keeping at most *cap* from then on."""

    add: int = 0
    retire: tuple[C, ...] = ()
    cap: int | None = None


@dataclass
class Ramp(Generic[C]):
    """The measuring state of one file's connections: its rate windows and the trial."""

    segment_window: float
    base_rate: float = 0.0
    window: tuple[float, int] | None = None  # (time, bytes) the window began at
    cpu_from: float = 0.0  # the loop thread's CPU time when the window began
    trial_from: int = 0  # the trial's own bytes when the window began
    trials: list[C] = field(default_factory=list)  # the last added, on trial together
    to_add: int = 0  # more to add to the trial, together once its first flows
    adding: bool = True  # False once more connections did not pay (or may not be tried)
    held: bool = False  # a connection was seen held back by its sender in this window
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def started(self, conn: C, count: int) -> None:
        """*conn* joined the trial, and *count* - 1 more are to follow it."""
        self.trials.append(conn)
        self.window = None
        self.to_add = count - 1

    def ended(self, conn: C, written: int = 0) -> None:
        """*conn* ended (its segment written, or it failed) after writing *written* bytes: they
        leave the trial's count (``trial_got``) and its start alike, so what it brought stays."""
        if conn in self.trials:
            self.trials.remove(conn)
            self.trial_from -= written

    def step(
        self,
        now: float,
        got: int,
        cpu: float,
        *,
        flowing: bool,
        conns: int,
        trial_got: int,
        held: bool = False,
    ) -> Step[C]:
        """Measure: *got* bytes of the file written at *now*, *cpu* the loop thread's CPU
        time, *flowing* whether every connection's response has begun, *conns* how many,
        *held* whether one is held back by its sender now (``_segments.sender_holds``),
        *trial_got* the bytes the connections on trial wrote (a trial is kept for its own)."""
        samples = self.samples
        samples.append((now, got))
        while len(samples) > 2 and now - samples[1][0] >= JUDGE_SECONDS:
            samples.popleft()  # bounded: keeps the newest sample a second old, and later ones
        if not self.adding or not flowing:
            return Step()  # a connection not flowing yet: its rate would count for nothing
        if self.to_add:
            # the next of a doubling: one at a time as each flows, so a host that refuses
            # extra connections sees one refusal, never a burst of them
            return Step(add=self.to_add)
        if self.window is None:
            self.window, self.cpu_from, self.held = (now, got), cpu, False
            self.trial_from = trial_got
            return Step()
        self.held = self.held or held
        began, before = self.window
        took = now - began
        trials = self.trials
        if not trials:
            # a sender that holds back is tried after a short window: the path has room
            if took < (self.segment_window if self.held else JUDGE_SECONDS):
                return Step()
            rate = (got - before) / took
            # the first second, or still ramping up (slow start on a long round trip): a
            # connection tried now would be credited with the others' own growth, so the
            # first is tried only once a second's rate is level with the one before (judged
            # over 0.3 s and 0.5 s windows, trials came early enough on an idle 50 ms path to
            # be credited with that growth: 164-259 MB/s against 184-294)
            # (a sender that holds back is not ramping: it sends what it allows and waits)
            ramping = not self.held and (self.base_rate <= 0 or rate >= GAIN * self.base_rate)
            self.base_rate = rate
            busy = (cpu - self.cpu_from) / took
            held, self.window, self.cpu_from, self.held = self.held, (now, got), cpu, False
            if ramping or busy >= _BUSY_LOOP:
                return Step()  # still growing, or a busy loop (no faster with more)
            # a sender holding its connections back caps each: seven more for each one are
            # tried together, the first two alone (one, then two, then eight had eight running
            # only 1.9 s in at 50 ms, 0.8 s after the hold showed)
            return Step(add=(_HELD_GROWTH - 1) * conns if held else 1)
        if took < self.segment_window:
            return Step()
        rate = (got - before) / took
        early = took < JUDGE_SECONDS
        had = conns - len(trials)
        own = (trial_got - self.trial_from) / took
        if gained(self.base_rate, rate, had if early else None, len(trials), own):
            # kept; the next ones are measured against the last second (a little of it
            # without these: never above what these connections give)
            self.trials = []
            then, had_bytes = samples[0]
            self.base_rate = (got - had_bytes) / (now - then) if now > then else 0.0
            # a sender still holding a connection back while these ran: the path has room
            # for more than doubling (capped connections at 50 ms: 2 → 8, not 2 → 4 → 8)
            more = (3 if self.held else 1) * conns if early else 1
            self.window, self.held = (now, got), False
            return Step(add=more)
        if early:
            return Step()
        # more did not make it faster: back to what it was, and no more tries
        retired, self.trials = tuple(trials), []
        self.adding = False
        return Step(retire=retired, cap=max(1, had))
