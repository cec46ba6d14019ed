"""The issue's targets, checked against one run's results (ratios from the same run)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "evaluate"]

MB = 1e6
MiB = 1 << 20


@dataclass(frozen=True)
class Target:
    """One row: what is measured, the goal, the value found and PASS / MISS / n/a."""

    row: str
    goal: str
    value: str
    status: str
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-friendly form."""
        return {
            "row": self.row,
            "goal": self.goal,
            "value": self.value,
            "status": self.status,
            "note": self.note,
        }


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _median(d: Any) -> float | None:
    if not isinstance(d, dict):
        return None
    v = d.get("median")
    if v is None or (isinstance(v, float) and math.isnan(v)) or not d.get("n"):
        return None
    return float(v)


def _rcvbuf_note(attempts: list[dict[str, Any]]) -> str:
    bufs = [a["rcvbuf_at_kill"] for a in attempts if a.get("rcvbuf_at_kill")]
    if not bufs:
        return "; receive buffer at the kill not measured (limit + 8 MiB)"
    return f"; receive buffer at the kill {min(bufs) / MiB:.1f}–{max(bufs) / MiB:.1f} MiB"


def _check(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "n/a"
    return "PASS" if ok(value) else "MISS"


def _ratio_row(
    w: dict[str, Any] | None,
    ours_prefix: str,
    ref_prefix: str,
    metric: str,
    row: str,
    goal: str,
    ok: Callable[[float], bool],
) -> Target:
    ratios = _get(w, "ratios") or {}
    ours = next((k for k in ratios if k.startswith(ours_prefix)), None)
    ref = next((k for k in (ratios.get(ours) or {}) if k.startswith(ref_prefix)), None)
    d = _get(ratios, ours, ref, metric) if ours and ref else None
    v = _median(d)
    shown = "–" if v is None else f"{v:.2f}× [{d['min']:.2f}–{d['max']:.2f}]"  # type: ignore[index]
    note = "" if v is not None else ("not run" if w is None else f"no {ref_prefix} pair")
    return Target(row, goal, shown, _check(v, ok), note)


def evaluate(results: dict[str, Any]) -> list[Target]:
    """Every target row of the issue, from a results dict built by the suite."""
    w = results.get("workloads", {})
    big = w.get("big")
    size_note = ""
    if big is not None and big.get("size", 0) != 1 << 30:
        size_note = f" ({big['size'] / MiB:.0f} MiB in this run)"
    rows: list[Target] = [
        _ratio_row(
            big,
            "bitsnb",
            "curl",
            "durable_gbps",
            "1 GiB durable vs curl + sync" + size_note,
            "≥ 0.9×",
            lambda v: v >= 0.9,
        ),
        _ratio_row(
            big,
            "bitsnb",
            "aria2c",
            "durable_gbps",
            "1 GiB durable vs aria2c -x1" + size_note,
            "≥ 1.0×",
            lambda v: v >= 1.0,
        ),
        _ratio_row(
            big,
            "bitsnb",
            "curl",
            "cpu_s_per_gib",
            "1 GiB CPU-s/GiB vs curl → file" + size_note,
            "≤ 2×",
            lambda v: v <= 2.0,
        ),
    ]
    rss = [
        s["maxrss_mib"]
        for s in (big or {}).get("samples", [])
        if s.get("ok") and s["tool"] == "bitsnb"
    ]
    peak = max(rss) if rss else None
    rows.append(
        Target(
            "bitsnb peak RSS (1 GiB runs)" + size_note,
            "≤ 80 MB",
            "–" if peak is None else f"{peak * MiB / MB:.1f} MB ({peak:.1f} MiB)",
            _check(peak, lambda v: v * MiB <= 80 * MB),
        )
    )
    huge = w.get("huge")
    huge_rss = None
    if huge and huge["samples"] and huge["samples"][0].get("ok"):
        huge_rss = huge["samples"][0]["maxrss_mib"]
    big_rss = _median(_get(big, "summary", "bitsnb", "maxrss_mib"))
    grow = huge_rss / big_rss if huge_rss is not None and big_rss else None
    rows.append(
        Target(
            "bitsnb peak RSS, 4 GiB vs 1 GiB",
            "within 10 %",
            "–" if grow is None else f"{huge_rss:.1f} vs {big_rss:.1f} MiB ({grow:.3f}×)",
            _check(grow, lambda v: v <= 1.10),
            "" if huge else "4 GiB runs only in the full run",
        )
    )
    small = w.get("small")
    count = (small or {}).get("count", 2000)
    rows.append(
        _ratio_row(
            small,
            "bitsnb 1 job",
            "aria2c",
            "files_per_s",
            f"{count:,}×16 KiB, one job, files/s vs aria2c -j16",
            "≥ 1.0×",
            lambda v: v >= 1.0,
        )
    )
    rows.append(
        _ratio_row(
            small,
            f"bitsnb {count}",
            "aria2c",
            "files_per_s",
            f"{count:,}×16 KiB, {count:,} jobs, files/s vs aria2c -j16",
            "≥ 0.75×",
            lambda v: v >= 0.75,
        )
    )
    mid = w.get("mid")
    rows.append(
        _ratio_row(
            mid,
            "bitsnb",
            "aria2c",
            "files_per_s",
            "200×1 MiB across 16 jobs, files/s vs aria2c -j16",
            "≥ 1.0×",
            lambda v: v >= 1.0,
        )
    )
    q = w.get("queue") or {}
    jobs = q.get("jobs", 10_000)
    scale = jobs / 10_000
    qn = "" if jobs == 10_000 else f"{jobs:,} jobs in this run; goal scaled ×{scale:g}"
    create = q.get("create_s")
    rows.append(
        Target(
            "10,000 jobs: create (create_job + add_file)",
            "≤ 5 s",
            "–" if create is None else f"{create:.2f} s",
            _check(create, lambda v: v <= 5.0 * scale),
            qn or ("" if create is not None else q.get("error", "not run")),
        )
    )
    frame = q.get("frame_s")
    rows.append(
        Target(
            "10,000 jobs: enum_jobs().to_frame()",
            "≤ 1 s",
            "–" if frame is None else f"{frame:.2f} s",
            _check(frame, lambda v: v <= 1.0 * scale),
            qn or ("" if frame is not None else q.get("frame_skipped", q.get("error", "not run"))),
        )
    )
    idle = q.get("idle_core_fraction")
    rows.append(
        Target(
            f"10,000 jobs idle (SUSPENDED), CPU over {q.get('idle_seconds', 30):.0f} s",
            "≤ 1 % of a core",
            "–" if idle is None else f"{100 * idle:.2f} %",
            _check(idle, lambda v: v <= 0.01),
            "" if jobs == 10_000 or idle is None else f"{jobs:,} jobs in this run",
        )
    )
    res = w.get("resume") or {}
    attempts = [a for a in res.get("attempts", []) if a.get("killed") and a.get("finished")]
    worst = max((a["bytes_sent"] - a["limit_bytes"] for a in attempts), default=None)
    ratio = _median(res.get("sent_over_size"))
    ok_content = res.get("all_content_ok", False)
    status = _check(worst, lambda v: v <= 0)
    if status == "PASS" and not ok_content:
        status = "MISS"
    rows.append(
        Target(
            "resume after kill at 50 %: bytes served",
            "≤ 1.01×size + receive buffer at the kill",
            "–"
            if ratio is None
            else f"{ratio:.4f}× size (worst {worst / MiB:+.1f} MiB vs limit)"
            if worst is not None
            else "–",
            status,
            (
                ("content verified" if ok_content else "content NOT verified")
                + _rcvbuf_note(attempts)
            )
            if attempts
            else res.get("skipped", "not run"),
        )
    )
    pan = w.get("panels") or {}
    rate = pan.get("msgs_per_s")
    rows.append(
        Target(
            "notebook panels: comm messages",
            "≤ 50 msgs/s",
            "–" if rate is None else f"{rate:.1f} msgs/s",
            _check(rate, lambda v: v <= 50),
            pan.get("skipped", pan.get("error", "")),
        )
    )
    return rows
