"""How bytes, rates and times left read, and how a transfer rate is estimated: for CLI and notebook.

Rules only (no IO, no widgets, no terminal): the command line, the notebook panels and their
text fallback all format with these functions, so a job reads the same everywhere.

Units are **decimal** (SI: 1 kB = 1,000 bytes, 1 MB = 10^6 bytes), chosen once for all views
because transfer speeds are quoted that way everywhere else (network links in Mbit/s, HTTP
clients such as curl and rich, disk vendors, our perf notes: "20.0 MB = 20,000,000 bytes"), so a
rate bitsnb shows can be compared with the link's without converting. Binary units (MiB) would
read 4.6 % lower at MB scale and invite exactly that confusion.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = [
    "RateEstimator",
    "format_bytes",
    "format_duration",
    "format_eta",
    "format_progress",
    "format_rate",
    "shorten_middle",
]

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
_STEP = 1000.0


def format_bytes(n: int | float | None) -> str:
    """``512`` → ``'512 B'``, ``1536`` → ``'1.5 kB'``, ``20_000_000`` → ``'20.0 MB'``;
    None (a size not known yet) → ``'?'``. One decimal above bytes; never ``'1000.0 kB'``."""
    if n is None:
        return "?"
    value = float(n)
    if abs(value) < _STEP:
        return f"{int(value)} B"
    for unit in _UNITS[1:]:
        value /= _STEP
        if abs(round(value, 1)) < _STEP or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(rate: float | None) -> str:
    """Bytes per second as ``'8.1 MB/s'``; ``''`` while unknown (no history yet)."""
    return "" if rate is None else f"{format_bytes(rate)}/s"


def format_eta(seconds: float | None) -> str:
    """``65`` → ``'1:05'``, ``3725`` → ``'1:02:05'``; ``''`` when unknown (no rate, no size)."""
    if seconds is None:
        return ""
    s = int(max(0.0, seconds) + 0.5)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_duration(seconds: float | None) -> str:
    """How long something took: ``0.4`` → ``'0 s'``, ``25`` → ``'25 s'``, ``65`` → ``'1:05'``,
    ``3725`` → ``'1:02:05'``; ``''`` when unknown. Short spans read as seconds ("in 25 s"),
    longer ones as a clock, like ``format_eta``."""
    if seconds is None:
        return ""
    if seconds < 59.5:
        return f"{max(0.0, seconds):.0f} s"
    return format_eta(seconds)


def shorten_middle(text: str, width: int = 60, *, ellipsis: str = "…") -> str:
    """*text* cut to *width* characters by dropping its middle (``http://host/…/file.csv``).

    For URLs and paths both ends matter: where it is and which file. The end keeps the last
    path segment whole when it fits in about two thirds of *width*; the rest goes to the start.
    """
    if len(text) <= width:
        return text
    if width <= len(ellipsis) + 1:
        return text[:width]
    room = width - len(ellipsis)
    last = text.rstrip("/").rsplit("/", 1)[-1]
    tail = len(last) + 1 if len(last) + 1 <= room * 2 // 3 else room // 2
    head = room - tail
    return f"{text[:head]}{ellipsis}{text[len(text) - tail :]}"


def format_progress(done: int, total: int | None) -> str:
    """``'1.2 MB / 3.0 MB'``, or ``'1.2 MB / ?'`` while the total is unknown."""
    return f"{format_bytes(done)} / {format_bytes(total)}"


class RateEstimator:
    """Bytes per second over the last ``window`` seconds of samples, with an injectable clock.

    ``update(done)`` records how many bytes are done now; ``rate`` is the slope between the
    oldest and the newest sample in the window (None until two samples ``min_span`` apart
    exist). A count that goes down (a restarted file) starts the window afresh. Kept apart from
    any view (rich.progress style) so that it is tested with a fake clock.
    """

    def __init__(
        self,
        window: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_span: float = 0.2,
        max_samples: int = 128,
    ) -> None:
        if window <= 0:
            raise ValueError("window must be > 0")
        self.window = window
        self.min_span = min_span
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque(maxlen=max_samples)

    def reset(self) -> None:
        """Forget every sample (the job was suspended, restarted or finished)."""
        self._samples.clear()

    def update(self, done: int, now: float | None = None) -> float | None:
        """Record that *done* bytes are transferred at *now* (default: the clock); returns
        the rate after this sample (as ``rate``)."""
        t = self._clock() if now is None else now
        samples = self._samples
        if samples and done < samples[-1][1]:
            samples.clear()
        if samples and t <= samples[-1][0]:
            samples[-1] = (samples[-1][0], done)  # same instant: keep the newest count
        else:
            samples.append((t, done))
        # keep one sample at or before the window's start so the span covers the window
        while len(samples) > 2 and samples[1][0] <= t - self.window:
            samples.popleft()
        return self.rate

    @property
    def rate(self) -> float | None:
        """Bytes per second, or None while there is too little history."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        span = t1 - t0
        if span < self.min_span:
            return None
        return max(0.0, (b1 - b0) / span)

    def eta(self, remaining: int | None) -> float | None:
        """Seconds until *remaining* bytes are done at the current rate, or None if unknown."""
        if remaining is None:
            return None
        if remaining <= 0:
            return 0.0
        rate = self.rate
        if not rate:
            return None
        return remaining / rate
