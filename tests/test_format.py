"""bitsnb._format: the one byte/rate/ETA formatter and rate estimator of the CLI and notebook."""

from __future__ import annotations

import pytest

from bitsnb import _cli_render, _cli_watch
from bitsnb._format import RateEstimator, format_bytes, format_eta, format_progress, format_rate
from bitsnb.notebook import _text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1536, "1.5 kB"),
        (999_949, "999.9 kB"),
        (999_950, "1.0 MB"),  # rounds up a unit, never "1000.0 kB"
        (20_000_000, "20.0 MB"),  # decimal: the perf notes' 20.0 MB
        (3 * 1024**3, "3.2 GB"),
        (2**63 - 1, "9.2 EB"),  # the largest length bitsnb accepts
        (10**21, "1000.0 EB"),  # past the last unit: stays in it
        (None, "?"),  # size not known yet
    ],
)
def test_bytes_are_decimal(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


def test_rate_and_progress() -> None:
    assert format_rate(None) == ""
    assert format_rate(8_100_000.0) == "8.1 MB/s"
    assert format_rate(0.0) == "0 B/s"
    assert format_progress(1_200_000, 3_000_000) == "1.2 MB / 3.0 MB"
    assert format_progress(1_200_000, None) == "1.2 MB / ?"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (0, "0:00"),
        (0.4, "0:00"),
        (59.6, "1:00"),
        (65, "1:05"),
        (3725, "1:02:05"),
        (-3, "0:00"),
        (100 * 3600, "100:00:00"),
    ],
)
def test_eta(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


def test_cli_and_notebook_show_the_same_bytes() -> None:
    """Both front ends use these functions, not copies of them."""
    assert _text.format_bytes is format_bytes
    assert _cli_render.format_progress is format_progress
    assert _cli_watch.format_progress is format_progress
    assert _cli_watch.RateEstimator is RateEstimator


def test_rate_estimator_window_and_eta() -> None:
    now = [100.0]
    rate = RateEstimator(window=2.0, clock=lambda: now[0])
    assert rate.update(0) is None and rate.eta(1000) is None  # one sample: no rate
    now[0] += 0.1
    assert rate.update(100) is None  # under min_span
    now[0] += 0.9
    assert rate.update(1000) == pytest.approx(1000.0)
    assert rate.eta(5000) == pytest.approx(5.0)
    assert rate.eta(None) is None  # unknown size: no ETA
    assert rate.eta(0) == 0.0
    for _ in range(5):  # the window slides: only the last 2 s count
        now[0] += 1.0
        rate.update(1000)
    assert rate.rate == 0.0 and rate.eta(10) is None
    now[0] += 1.0
    rate.update(500)  # a count going down (a restarted file) starts afresh
    assert rate.rate is None
    rate.reset()
    assert rate.rate is None
    with pytest.raises(ValueError):
        RateEstimator(window=0)
