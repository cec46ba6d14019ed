"""``python -m bench._bandwidth [--full] [--fg-job] [--chart PNG] [SECONDS]``: a background job behind a bottleneck.

The WAN testbed (``bench/_wan.py``) with the issue's path: 50 ms round trip, a 100 Mbit/s
drop-tail bottleneck in the relay with a 250 ms buffer (5 BDP), a Reno server. In the client
namespace ``bench/_bandwidth_client.py`` runs one NORMAL bitsnb job (``Policy()``: yield, or
``--full``), a TCP-connect probe every 100 ms, and a curl (the foreground flow) from 40 % to
70 % of the run (``--fg-job``: a FOREGROUND bitsnb job in the same manager instead). Prints, for
alone / with curl / after curl: bitsnb's and the foreground flow's MB/s and the probe's p95
connect time (one round trip + the bottleneck's queue). Bounded by SECONDS + 60.
``--chart PNG`` runs yield then full (SECONDS + 60 each) and draws both runs' rates over time.
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

__all__ = ["BOTTLENECK", "foreground_start", "phases", "run", "write_chart"]

BOTTLENECK = Profile("rtt50-100mbit-250ms", 50, 9000, 12.5e6, 5.0, server_cc="reno")
CLIENT = Path(__file__).resolve().parent / "_bandwidth_client.py"
REPO = Path(__file__).resolve().parent.parent


def run(
    *,
    full: bool = False,
    seconds: float = 24.0,
    nginx: str = "/usr/sbin/nginx",
    fg_job: bool = False,
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
                *(["--fg-job"] if fg_job else []),
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
    return float(rows[-1][col] - rows[0][col]) / float(rows[-1][0] - rows[0][0])


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


def foreground_start(out: dict[str, Any]) -> dict[str, float]:
    """The foreground flow's start (the issue: ≥ 80 % of the link within 2 s, ≥ 75 % over its
    first 60 MB): its bytes/s from 1.5 to 2.5 s after it began, and over its first 60 MB
    (NaN if it got less)."""
    fg0 = out["fg"][0]
    rows = [s for s in out["samples"] if s[0] >= fg0]
    first = next((s for s in rows if s[2] >= 60e6), None)
    base = rows[0] if rows else None
    avg = math.nan
    if first is not None and base is not None and first[0] > base[0]:
        avg = (first[2] - base[2]) / (first[0] - base[0])
    return {"at_2s": _rate(out["samples"], fg0 + 1.5, fg0 + 2.5, 2), "first_60MB": avg}


def _series(samples: list[list[Any]], col: int, step: int = 5) -> tuple[list[float], list[float]]:
    """Rate (MB/s) over time from cumulative byte samples, each over *step* samples (~0.5 s)."""
    xs: list[float] = []
    ys: list[float] = []
    for i in range(step, len(samples), step):
        (t0, *r0), (t1, *r1) = samples[i - step], samples[i]
        if t1 > t0:
            xs.append((t0 + t1) / 2)
            ys.append((r1[col - 1] - r0[col - 1]) / (t1 - t0) / 1e6)
    return xs, ys


def write_chart(path: Path, runs: dict[str, dict[str, Any]]) -> str | None:
    """One panel per run (mode → ``run()`` output): bitsnb's and curl's MB/s over time; None if drawn,
    else why not (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib to get one)"
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 3.2 * len(runs)), sharex=True, squeeze=False)
    link = BOTTLENECK.rate / 1e6
    for ax, (mode, out) in zip(axes[:, 0], runs.items(), strict=True):
        fg0, fg1 = out["fg"]
        ax.axvspan(fg0, fg1, color="tab:orange", alpha=0.12, label="curl running")
        ax.axhline(link, color="grey", linestyle="--", linewidth=1, label=f"link {link:.1f} MB/s")
        ax.plot(*_series(out["samples"], 1), color="tab:blue", label="bitsnb (NORMAL job)")
        flow = "FOREGROUND job" if out.get("foreground") == "job" else "curl (foreground)"
        ax.plot(*_series(out["samples"], 2), color="tab:orange", label=flow)
        ph = phases(out)
        delay = ", ".join(
            f"{name} {1000 * (row['probe_p95'] - BOTTLENECK.rtt_ms / 1000):.0f} ms"
            for name, row in ph.items()
        )
        ax.set_title(f'background="{mode}" — probe added delay p95: {delay}', fontsize=9)
        ax.set_ylabel("MB/s")
        ax.set_ylim(0, link * 1.3)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(BOTTLENECK.describe(), fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def _print(out: dict[str, Any]) -> None:
    flow = "FOREGROUND job" if out.get("foreground") == "job" else "curl"
    print(BOTTLENECK.describe(), "| mode:", out["mode"], "| foreground flow:", flow)
    for name, row in phases(out).items():
        print(
            f"{name:>11}: bitsnb {row['bitsnb'] / 1e6:6.2f} MB/s  {flow} {row['curl'] / 1e6:6.2f}"
            f" MB/s  probe p95 {1000 * row['probe_p95']:5.0f} ms"
        )
    st = foreground_start(out)
    print(
        f"{flow} at 2 s: {st['at_2s'] / 1e6:.2f} MB/s, over its first 60 MB:"
        f" {st['first_60MB'] / 1e6:.2f} MB/s (link {BOTTLENECK.rate / 1e6:.1f})"
    )


def _opt(argv: list[str], name: str) -> str | None:
    """The value after ``--name`` in *argv*, or None."""
    if name not in argv:
        return None
    i = argv.index(name)
    if i + 1 >= len(argv):
        raise SystemExit(f"{name} needs a value")
    return argv[i + 1]


def main(argv: list[str]) -> int:
    chart, saved = _opt(argv, "--chart"), _opt(argv, "--from")
    rest = [a for a in argv if not a.startswith("--") and a not in (chart, saved)]
    seconds = float(rest[0]) if rest else 24.0
    if chart is None:
        _print(run(full="--full" in argv, seconds=seconds, fg_job="--fg-job" in argv))
        return 0
    if saved:  # redraw from a previous run's data
        runs = json.loads(Path(saved).read_text())
    else:
        runs = {"yield": run(full=False, seconds=seconds), "full": run(full=True, seconds=seconds)}
        data = Path(tempfile.gettempdir()) / "bnb-bandwidth-chart.json"
        data.write_text(json.dumps(runs))
        print(f"data: {data} (redraw with --from)")
    for out in runs.values():
        _print(out)
    why = write_chart(Path(chart), runs)
    print(why or f"chart: {chart}")
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
