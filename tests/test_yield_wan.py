"""The yield controller in the WAN testbed (root only): behind a 100 Mbit/s bottleneck with a
250 ms drop-tail buffer (the relay's), a background bitsnb job gives way to a curl (or a
FOREGROUND bitsnb job) started beside it, and takes the link back when it stops; on an idle
50 ms path it is not held to a fixed window. Asserted as ratios of the same run's own phases
or downloads (the relay shares two cores with everything else); the figures are printed."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

import bitsnb

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not installed
    sys.path.insert(0, str(REPO))

from bench import _bandwidth, _wan  # noqa: E402

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
_NO_TESTBED = _wan.unavailable() or (None if NGINX else "nginx is not installed")
_WHY = _NO_TESTBED or (None if shutil.which("curl") else "curl is not installed")
IDLE_SIZE = 768 * 1024 * 1024


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


# -- an idle long path -----------------------------------------------------------------------
# A yielding download is not held to a fixed receive window there: its window is clamped over
# the kernel's autotuned buffer, so one connection goes about as fast as under
# background="full". A fixed SO_RCVBUF held it to 4 MiB a round trip here (~80 MB/s at 50 ms),
# and to net.core.rmem_max (212992 on a stock Linux: 22 MB/s) wherever that is lower.
def _download(url: str, folder: Path, background: str) -> float:
    """MB/s of one download of *url* (one connection) under ``Policy(background=...)``."""
    folder.mkdir()
    policy = bitsnb.Policy(background=background, max_connections_per_file=1)
    with bitsnb.Manager(store=folder / "jobs.db", policy=policy) as mgr:
        job = mgr.create_job(f"idle path, {background}")
        job.add_file(url, folder / "big.bin")
        began = time.monotonic()
        job.resume()
        state = job.wait(timeout=240)
        took = time.monotonic() - began
        assert state is bitsnb.JobState.TRANSFERRED, job.error
        job.complete()
    assert (folder / "big.bin").stat().st_size == IDLE_SIZE
    (folder / "big.bin").unlink()
    return IDLE_SIZE / took / 1e6


@pytest.mark.skipif(_NO_TESTBED is not None, reason=f"WAN testbed: {_NO_TESTBED}")
def test_a_yielding_download_on_an_idle_long_path_is_not_held_to_a_fixed_window(
    tmp_path: Path,
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    with open(www / "big.bin", "wb") as fh:
        fh.truncate(IDLE_SIZE)  # sparse: nginx sends zeros, nothing is read from disk
    with _wan.Testbed("rtt50", serve=www, nginx=NGINX, workdir=tmp_path / "tb") as tb:
        url = tb.server_url("big.bin")
        full = _wan.in_namespace(
            tb.client_ns, lambda: _download(url, tmp_path / "full", "full"), timeout=300
        )
        yielding = _wan.in_namespace(
            tb.client_ns, lambda: _download(url, tmp_path / "yield", "yield"), timeout=300
        )
    print(f"\n768 MiB at 50 ms, one connection: full {full:.1f} MB/s, yield {yielding:.1f} MB/s")
    assert yielding >= 0.6 * full
