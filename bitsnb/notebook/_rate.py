"""Speed and ETA from a sliding window of (time, bytes) samples, with an injectable clock.

Kept apart from any widget (rich.progress style) so it can be tested with a fake clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RateEstimator"]


class RateEstimator:
    """Bytes per second over the last ``window`` seconds of samples.

    ``update(done)`` records how many bytes are done now; ``rate`` is the slope between the
    oldest and the newest sample in the window (None until two samples ``min_span`` apart
    exist). A count that goes down (a restarted file) starts the window afresh.
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

    def update(self, done: int, now: float | None = None) -> None:
        """Record that *done* bytes are transferred at *now* (default: the clock)."""
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
