"""``python -m bench --wan --wan-size 0 --wan-small N --wan-small-tls`` end to end on a tiny
run: the testbed with HTTPS, every client's sample checked whole, the tables written. Root only
(CI runs as root), with nginx, curl and openssl."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not installed
    sys.path.insert(0, str(REPO))

from bench import _wan  # noqa: E402
from bench._wan_suite import WanConfig, run_wan  # noqa: E402

_MISSING = [p for p in ("nginx", "curl", "openssl") if not shutil.which(p)]
_WHY = _wan.unavailable() or (f"missing {', '.join(_MISSING)}" if _MISSING else None)
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"WAN testbed: {_WHY}")


def test_small_files_run_against_curl_over_http_and_tls(tmp_path: Path) -> None:
    pytest.importorskip("h2")
    cfg = WanConfig(
        reps=1,
        size=0,
        small_count=20,
        small_tls=True,
        profiles=("rtt20",),
        sample_timeout=60.0,
        ceiling_seconds=0.5,
        workdir=tmp_path,
        out_dir=tmp_path / "results",
        install=False,
    )
    results = run_wan(cfg)
    assert results is not None
    small = results["profiles"]["rtt20"]["small"]
    names = {s["tool"] for s in small["samples"]}
    assert {"bitsnb", "curl --parallel 16", "bitsnb https h2", "curl https h1"} <= names
    bad = [(s["tool"], s.get("error")) for s in small["samples"] if not s["ok"]]
    assert bad == []
    assert small["ratios"]["bitsnb"]["curl --parallel 16"]["files_per_s"]["median"] > 0
    md = (tmp_path / "results" / "latest-wan.md").read_text()
    assert "20 files of 16 KiB in one job" in md
