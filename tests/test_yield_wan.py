"""The yield controller in the WAN testbed (root only): behind a 100 Mbit/s bottleneck with a
250 ms drop-tail buffer (the relay's), a background bitsnb job gives way to a curl (or a
FOREGROUND bitsnb job) started beside it, and takes the link back when it stops. Asserted as ratios of the same run's own
phases (the relay shares two cores with everything else); the figures are printed."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not installed
    sys.path.insert(0, str(REPO))

from bench import _bandwidth, _wan  # noqa: E402

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
_WHY = _wan.unavailable() or (None if NGINX else "nginx is not installed")
_WHY = _WHY or (None if shutil.which("curl") else "curl is not installed")


@pytest.mark.skipif(_WHY is not None, reason=f"WAN testbed: {_WHY}")
@pytest.mark.parametrize("flow", ["curl", "job"])
def test_a_background_job_yields_to_a_competing_flow_and_comes_back(flow: str) -> None:
    """The competing flow: a curl, or a FOREGROUND bitsnb job in the same manager."""
    assert NGINX is not None
    out = _bandwidth.run(seconds=20.0, nginx=NGINX, fg_job=flow == "job")
    assert out["foreground"] == flow
    ph = _bandwidth.phases(out)
    print({k: {m: round(v, 3) for m, v in row.items()} for k, row in ph.items()})
    alone, shared, after = ph["alone"], ph["with curl"], ph["after curl"]
    assert out["mode"] == "yield"
    assert alone["bitsnb"] > 0 and after["bitsnb"] > 0  # it runs when alone
    assert shared["bitsnb"] < 0.3 * alone["bitsnb"]  # it gives way...
    assert shared["curl"] > 3 * shared["bitsnb"]  # ...to the foreground flow
    assert after["bitsnb"] > 0.5 * alone["bitsnb"]  # and comes back
    # alone from the start it is not far below where it comes back to: its windows, sized from
    # what was delivered, keep slow start from filling the buffer (it collapsed to ~60 %)
    assert alone["bitsnb"] > 0.8 * after["bitsnb"]
    # ...and the queue it builds alone is below the one curl's flow builds
    assert alone["probe_p95"] < shared["probe_p95"]
