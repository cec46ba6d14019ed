"""Results as text: Markdown tables (printed and saved), the JSON file and a bar chart PNG."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ._stats import Spread, spread
from ._targets import Target

__all__ = ["markdown", "write_chart", "write_json"]

MiB = 1 << 20


def _sp(d: dict[str, Any] | None) -> Spread:
    if not d:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(float(d["median"]), float(d["min"]), float(d["max"]), int(d["n"]))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


_BIG_COLS = [
    ("durable_gbps", "durable GB/s", 2),
    ("cache_gbps", "to exit GB/s", 2),
    ("cpu_s_per_gib", "CPU-s/GiB", 2),
    ("maxrss_mib", "peak RSS MiB", 1),
]
_MANY_COLS = [
    ("files_per_s", "files/s durable", 0),
    ("files_per_s_exit", "files/s to exit", 0),
    ("cpu_ms_per_file", "CPU-ms/file", 2),
    ("maxrss_mib", "peak RSS MiB", 1),
]


def load_line(samples: list[dict[str, Any]]) -> str | None:
    """How busy the machine was during these samples, or None if not recorded."""
    loads = spread([s.get("load1") for s in samples])
    if not loads.n:
        return None
    text = f"machine load during these runs: 1-min load average {loads.fmt(1)}"
    psi = spread([s.get("cpu_pressure") for s in samples])
    if psi.n:
        text += f", CPU pressure (PSI some, avg10) {psi.fmt(0)} %"
    cores = os.cpu_count() or 1
    if loads.median > cores:
        text += (
            f" — BUSY: more runnable tasks than the {cores} cores, other programs were"
            " running; timings are skewed (CPU-s figures less so)"
        )
    return text


def _workload_md(name: str, w: dict[str, Any]) -> list[str]:
    lines = [f"### {name}: {w.get('title', '')}", ""]
    busy = load_line(w.get("samples", []))
    if busy:
        lines += [f"_{busy}_", ""]
    if "summary" in w:
        cols = _BIG_COLS if name in ("big",) else _MANY_COLS
        header = ["client", *(c[1] for c in cols), "note"]
        notes = {c["name"]: c.get("note", "") for c in w.get("clients", [])}
        rows = [
            [tool, *(_sp(metrics.get(key)).fmt(d) for key, _, d in cols), notes.get(tool, "")]
            for tool, metrics in w["summary"].items()
        ]
        lines += _table(header, rows)
        lines += ["", "Ratios bitsnb / reference, pair by pair (median [min–max]):", ""]
        rheader = ["bitsnb", "reference", *(c[1] for c in cols[:3])]
        rrows = [
            [ours, ref, *(_sp(m.get(key)).fmt(2) + "×" for key, _, _ in cols[:3])]
            for ours, refs in w.get("ratios", {}).items()
            for ref, m in refs.items()
        ]
        lines += _table(rheader, rrows)
        failed = [s for s in w.get("samples", []) if not s.get("ok")]
        for s in failed:
            lines.append(f"- FAILED {s['tool']} round {s.get('round', 0) + 1}: {s.get('error')}")
        bits = [s for s in w.get("samples", []) if s.get("ok") and "stamps_s" in s]
        if bits:
            lines += ["", "bitsnb runner phases (median, seconds from spawn):", ""]
            by: dict[str, list[dict[str, float]]] = {}
            for s in bits:
                by.setdefault(s["tool"], []).append(s["stamps_s"])
            keys = [
                "t_imported",
                "t_manager",
                "t_created",
                "t_transferred",
                "t_complete",
                "t_closed",
            ]
            prow = []
            for tool, stamps in by.items():
                prow.append([tool, *(spread([st.get(k) for st in stamps]).fmt(2) for k in keys)])
            lines += _table(["client", *(k[2:] for k in keys)], prow)
    elif name == "huge":
        s = w["samples"][0]
        if s.get("ok"):
            lines.append(
                f"bitsnb: durable {s['durable_gbps']:.2f} GB/s, {s['cpu_s_per_gib']:.2f} CPU-s/GiB,"
                f" peak RSS {s['maxrss_mib']:.1f} MiB"
            )
        else:
            lines.append(f"FAILED: {s.get('error')}")
    elif name == "queue":
        if "error" in w:
            lines.append(f"FAILED: {w['error']}")
        else:
            qkeys = [
                ("create_s", "create_job + add_file, all jobs (s)"),
                ("create_cpu_s", "  process CPU while creating (s)"),
                ("create_job_only_s", "  of which create_job (s)"),
                ("add_file_only_s", "  of which add_file (s)"),
                ("enum_s", "enum_jobs() (s)"),
                ("pandas_import_s", "import pandas (before timing to_frame) (s)"),
                ("frame_s", "enum_jobs().to_frame(), pandas already imported (s)"),
                ("frame_again_s", "to_frame() again (s)"),
                ("idle_core_fraction", "idle CPU (fraction of a core)"),
                ("close_s", "Manager.close() (s)"),
                ("reopen_s", "Manager() on the full store (s)"),
                ("maxrss_mib", "peak RSS (MiB)"),
            ]
            rows = [[label, f"{w[k]:.4g}"] for k, label in qkeys if k in w]
            if "frame_skipped" in w:
                rows.append(["to_frame()", f"skipped: {w['frame_skipped']}"])
            lines += _table(["what", "value"], rows)
        extra = w.get("frame_10k")
        if extra:
            lines += ["", f"`{extra['script']}` (exit {extra['returncode']}):", "", "```"]
            lines += [extra.get("stdout_tail", "")[-1500:], "```"]
    elif name == "resume":
        if "attempts" in w:
            rows = [
                [
                    str(i + 1),
                    f"{100 * a['killed_at_fraction']:.0f} %",
                    f"{a['bytes_sent'] / MiB:.1f}",
                    f"{a['sent_over_size']:.4f}",
                    f"{a['overhead_bytes'] / MiB:+.2f}",
                    str(len(a["requests"])),
                    "OK" if a["content_ok"] else "WRONG",
                ]
                for i, a in enumerate(w["attempts"])
            ]
            lines += _table(
                [
                    "run",
                    "killed at",
                    "MiB served",
                    "served/size",
                    "overhead MiB",
                    "requests",
                    "content",
                ],
                rows,
            )
        else:
            lines.append(w.get("skipped", ""))
    elif name == "panels":
        if "skipped" in w:
            lines.append(f"skipped: {w['skipped']}")
        else:
            rate = w.get("msgs_per_s")
            lines.append(
                f"{w['script']}: "
                + (f"{rate:.1f} msgs/s" if rate is not None else "no figure found")
            )
            lines += ["", "```", w.get("stdout_tail", "")[-1500:], "```"]
    lines.append("")
    return lines


def markdown(results: dict[str, Any], targets: list[Target]) -> str:
    """The whole report as Markdown."""
    meta = results["meta"]
    lines = [
        f"# bitsnb benchmark — {meta['started']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Mode: {'quick' if meta['quick'] else 'full'}, {meta['reps']} interleaved rounds;"
        f" machine: {meta['machine']}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}  ",
        f"Code: {meta.get('git', '?')}  ",
        f"Server: nginx on 127.0.0.1 (sendfile on, one process); files on {meta['scratch_fs']}.  ",
        "GB = 10^9 bytes. Durable: the tool exited and a following `sync` finished; for bitsnb,"
        " its runner's `complete()` returned (bitsnb fsyncs before TRANSFERRED). Python clients"
        " include interpreter start and imports. bitsnb many-jobs runs use"
        " `Policy(max_active_jobs=16, max_connections_per_host=16)`; one-job runs the default"
        " `Policy()`.",
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "goal", "value", "status", "note"],
        [[t.row, t.goal, t.value, f"**{t.status}**", t.note] for t in targets],
    )
    cores = os.cpu_count() or 1
    busy = [
        name
        for name, w in results["workloads"].items()
        if spread([s.get("load1") for s in w.get("samples", [])]).median > cores
    ]
    if busy:
        lines += [
            "",
            f"**The machine was busy** (1-min load average above its {cores} cores, i.e. other"
            f" programs competed for the CPU) during: {', '.join(busy)}. Wall-clock figures and"
            " the ratios built on them are skewed there; rerun on a quiet machine to confirm.",
        ]
    lines += ["", "## Workloads", ""]
    for name, w in results["workloads"].items():
        lines += _workload_md(name, w)
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    """The results as JSON (NaN written as null)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    path.write_text(json.dumps(clean(results), indent=2, sort_keys=False) + "\n")


def write_chart(path: Path, results: dict[str, Any]) -> str | None:
    """A bar chart of the headline figures (medians, min–max whiskers); None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib to get one)"
    w = results["workloads"]
    panels: list[tuple[str, str, str]] = [
        ("big", "durable_gbps", "one big file: durable GB/s (higher is better)"),
        ("big", "cpu_s_per_gib", "one big file: CPU-s/GiB (lower is better)"),
        ("small", "files_per_s", "16 KiB files: files/s durable (higher is better)"),
        ("mid", "files_per_s", "1 MiB files, 16 jobs: files/s durable (higher is better)"),
    ]
    panels = [p for p in panels if p[0] in w and "summary" in w[p[0]]]
    if not panels:
        return "nothing to chart"
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.0 * len(panels)), squeeze=False)
    for ax, (name, metric, title) in zip(axes[:, 0], panels, strict=True):
        summary = w[name]["summary"]
        tools = [t for t in summary if summary[t][metric]["n"]]
        med = [summary[t][metric]["median"] for t in tools]
        lo = [summary[t][metric]["median"] - summary[t][metric]["min"] for t in tools]
        hi = [summary[t][metric]["max"] - summary[t][metric]["median"] for t in tools]
        colors = ["#d95f02" if t.startswith("bitsnb") else "#7570b3" for t in tools]
        ax.barh(tools, med, xerr=[lo, hi], color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        for y, v in enumerate(med):
            ax.text(v + hi[y], y, f"  {v:.3g}", va="center", fontsize=8)  # right of the whisker
        ax.margins(x=0.12)
    mode = "quick" if results["meta"]["quick"] else "full"
    fig.suptitle(f"bitsnb benchmark ({mode}, {results['meta']['started']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
