"""The bandwidth chart (``bench._bandwidth.write_chart``) drawn from a synthetic run: a PNG is written.

No testbed: the samples have the shape ``run()`` returns (time, bitsnb bytes, curl bytes, status
every 100 ms; probes as (time, connect seconds)). Skipped when matplotlib is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not installed
    sys.path.insert(0, str(REPO))

from bench import _bandwidth  # noqa: E402


def _run(mode: str, seconds: float = 10.0) -> dict[str, Any]:
    """A run()-shaped dict: bitsnb at 12 MB/s, curl taking 11 of it from 40 % to 70 % of the run."""
    fg = (0.4 * seconds, 0.7 * seconds)
    samples: list[list[Any]] = []
    probes: list[list[float]] = []
    ours = theirs = 0
    for i in range(int(seconds * 10)):
        t = i / 10
        busy = fg[0] <= t < fg[1]
        ours += 100_000 if busy else 1_200_000
        theirs += 1_100_000 if busy else 0
        samples.append([t, ours, theirs, "yielding" if busy else ""])
        probes.append([t, 0.05 + (0.2 if busy else 0.01)])
    return {"samples": samples, "probes": probes, "mode": mode, "fg": fg, "seconds": seconds}


def test_write_chart_draws_both_runs_to_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: no chart to test")
    out = tmp_path / "bandwidth.png"
    why = _bandwidth.write_chart(out, {"yield": _run("yield"), "full": _run("full")})
    assert why is None
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000  # two panels with lines, not an empty canvas
