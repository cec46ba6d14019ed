"""Small statistics for benchmark samples: median and spread, and ratios taken pair by pair."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Spread", "pair_ratios", "spread"]


@dataclass(frozen=True)
class Spread:
    """Median, minimum and maximum of some samples (NaN when there are none)."""

    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-friendly form."""
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}

    def fmt(self, digits: int = 2, scale: float = 1.0) -> str:
        """``median [min–max]``, or ``–`` when empty."""
        if self.n == 0 or math.isnan(self.median):
            return "–"
        m, lo, hi = self.median * scale, self.min * scale, self.max * scale
        if self.n == 1:
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def spread(values: Sequence[float | None]) -> Spread:
    """The spread of the values that are numbers (None and NaN are left out)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(statistics.median(xs), min(xs), max(xs), len(xs))


def pair_ratios(ours: Sequence[float | None], theirs: Sequence[float | None]) -> list[float]:
    """``ours[i] / theirs[i]`` for every round i where both ran and the divisor is not zero."""
    out: list[float] = []
    for a, b in zip(ours, theirs, strict=False):
        if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
            continue
        out.append(a / b)
    return out
