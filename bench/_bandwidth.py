"""``python -m bench._bandwidth [--full] [SECONDS]``: a background job behind a bottleneck.

The WAN testbed (``bench/_wan.py``) with the issue's path: 50 ms round trip, a 100 Mbit/s
drop-tail bottleneck in the relay with a 250 ms buffer (5 BDP), a Reno server. In the client
namespace ``bench/_bandwidth_client.py`` runs one NORMAL bitsnb job (``Policy()``: yield, or
``--full``), a TCP-connect probe every 100 ms, and a curl (the foreground flow) from 40 % to
70 % of the run. Prints, for alone / with curl / after curl: bitsnb's and curl's MB/s and the
probe's p95 connect time (one round trip + the bottleneck's queue). Bounded by SECONDS + 60.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._wan import Profile, Testbed, unavailable

__all__ = ["BOTTLENECK", "phases", "run"]

BOTTLENECK = Profile("rtt50-100mbit-250ms", 50, 9000, 12.5e6, 5.0, server_cc="reno")
CLIENT = Path(__file__).resolve().parent / "_bandwidth_client.py"
REPO = Path(__file__).resolve().parent.parent


def run(
    *, full: bool = False, seconds: float = 24.0, nginx: str = "/usr/sbin/nginx"
) -> dict[str, Any]:
    """One run: the client's samples and probes (see ``_bandwidth_client``)."""
    why = unavailable()
    if why:
        raise RuntimeError(f"WAN testbed: {why}")
    scratch = Path(tempfile.mkdtemp(prefix="bnbbw-"))
    try:
        www = scratch / "www"
        www.mkdir()
        with open(www / "big.bin", "wb") as f:
            f.truncate(4 << 30)  # sparse: nginx sends zeros, no disk used
        work = scratch / "client"
        work.mkdir()
        fg = (0.4 * seconds, 0.7 * seconds)
        with Testbed(BOTTLENECK, serve=www, nginx=nginx, workdir=scratch / "tb") as tb:
            argv = [
                sys.executable,
                str(CLIENT),
                tb.server_url("big.bin"),
                str(work / "jobs.db"),
                str(work),
                str(seconds),
                str(fg[0]),
                str(fg[1]),
                *(["--full"] if full else []),
            ]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            r = tb.run_client(argv, timeout=seconds + 60, env=env)
            if r.returncode != 0:
                raise RuntimeError(r.stderr.decode(errors="replace")[-2000:])
            out: dict[str, Any] = json.loads(r.stdout)
        out["fg"] = fg
        out["seconds"] = seconds
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _rate(samples: list[list[Any]], a: float, b: float, col: int) -> float:
    rows = [s for s in samples if a <= s[0] < b]
    if len(rows) < 2 or rows[-1][0] <= rows[0][0]:
        return 0.0
    return float(rows[-1][col] - rows[0][col]) / (rows[-1][0] - rows[0][0])


def _p95(xs: list[float]) -> float:
    xs = sorted(x for x in xs if not math.isnan(x))
    return xs[max(0, math.ceil(0.95 * len(xs)) - 1)] if xs else math.nan


def phases(out: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Alone (after a 2 s start), with curl (after its first 2 s), after curl (after 2 s):
    bitsnb's and curl's bytes/s, the probe's p95 connect time (s)."""
    fg0, fg1 = out["fg"]
    spans = {"alone": (2.0, fg0), "with curl": (fg0 + 2, fg1), "after curl": (fg1 + 2, 1e9)}
    res = {}
    for name, (a, b) in spans.items():
        probes = [p for t, p in out["probes"] if a <= t < b]
        res[name] = {
            "bitsnb": _rate(out["samples"], a, b, 1),
            "curl": _rate(out["samples"], a, b, 2),
            "probe_p95": _p95(probes),
        }
    return res


def main(argv: list[str]) -> int:
    full = "--full" in argv
    rest = [a for a in argv if not a.startswith("--")]
    out = run(full=full, seconds=float(rest[0]) if rest else 24.0)
    print(BOTTLENECK.describe(), "| mode:", out["mode"])
    for name, row in phases(out).items():
        print(
            f"{name:>11}: bitsnb {row['bitsnb'] / 1e6:6.2f} MB/s  curl {row['curl'] / 1e6:6.2f}"
            f" MB/s  probe p95 {1000 * row['probe_p95']:5.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
