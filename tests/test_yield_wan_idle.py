"""On an idle long path (the WAN testbed's 50 ms, no bottleneck; root only) a yielding
background download is not held to a fixed receive window: its window is clamped over the
kernel's autotuned buffer, so one connection goes about as fast as the same download under
``background="full"``. A fixed ``SO_RCVBUF`` held it to 4 MiB a round trip here (~80 MB/s at
50 ms), and to ``net.core.rmem_max`` (212992 on a stock Linux: 22 MB/s) wherever that is lower.
Asserted as a ratio of two downloads in the same run; the figures are printed."""

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

from bench import _wan  # noqa: E402

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
_WHY = _wan.unavailable() or (None if NGINX else "nginx is not installed")
SIZE = 384 * 1024 * 1024


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
    assert (folder / "big.bin").stat().st_size == SIZE
    (folder / "big.bin").unlink()
    return SIZE / took / 1e6


@pytest.mark.skipif(_WHY is not None, reason=f"WAN testbed: {_WHY}")
def test_a_yielding_download_on_an_idle_long_path_is_not_held_to_a_fixed_window(
    tmp_path: Path,
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    with open(www / "big.bin", "wb") as fh:
        fh.truncate(SIZE)  # sparse: nginx sends zeros, nothing is read from disk
    with _wan.Testbed("rtt50", serve=www, nginx=NGINX, workdir=tmp_path / "tb") as tb:
        url = tb.server_url("big.bin")
        full = _wan.in_namespace(
            tb.client_ns, lambda: _download(url, tmp_path / "full", "full"), timeout=300
        )
        yielding = _wan.in_namespace(
            tb.client_ns, lambda: _download(url, tmp_path / "yield", "yield"), timeout=300
        )
    print(f"\n384 MiB at 50 ms, one connection: full {full:.1f} MB/s, yield {yielding:.1f} MB/s")
    assert yielding >= 0.6 * full
