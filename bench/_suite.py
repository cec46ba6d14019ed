"""The suite: set up files and nginx, run the workloads, check the targets, write the results.

Everything is bounded and cleaned up: every subprocess has a timeout, nginx is killed in
``finally`` and the scratch folder (served files, downloads, stores) is removed at the end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _report, _workloads
from ._files import FileSet
from ._nginx import Nginx, NginxError
from ._targets import evaluate
from ._tools import Toolbox

__all__ = ["ALL_WORKLOADS", "Config", "run_suite"]

MiB = 1 << 20
GiB = 1 << 30
ALL_WORKLOADS = ("big", "huge", "small", "mid", "queue", "resume", "panels")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Config:
    """What to run and how big; ``Config.for_mode(quick)`` gives the documented presets."""

    quick: bool = False
    reps: int = 5
    big_size: int = GiB
    huge_size: int = 4 * GiB  # 0: skip
    small_count: int = 2000
    small_size: int = 16 * 1024
    mid_count: int = 200
    mid_size: int = MiB
    mid_jobs: int = 16
    queue_jobs: int = 10_000
    idle_seconds: float = 30.0
    resume_runs: int = 3
    workloads: tuple[str, ...] = ALL_WORKLOADS
    workdir: Path | None = None
    out_dir: Path = field(default_factory=lambda: REPO / "bench" / "results")
    install: bool = True
    chart: bool = True
    extras: bool = True  # run bench/frame_10k.py (the other engineers' script) if it exists
    command: str = "python -m bench"

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        """The full run, or ``--quick`` (about a minute on a fast machine): 2 rounds, smaller sizes."""
        if not quick:
            return cls()
        return cls(
            quick=True,
            reps=2,
            big_size=256 * MiB,
            huge_size=0,
            small_count=500,
            queue_jobs=2000,
            idle_seconds=5.0,
            resume_runs=1,
        )


def _first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (p.stdout or p.stderr).decode("utf-8", "replace").strip().splitlines()
    return text[0] if text else "?"


def _versions(paths: dict[str, str]) -> dict[str, str]:
    import httpcore
    import httpx

    import bitsnb

    out = {
        "python": platform.python_version(),
        "bitsnb": bitsnb.__version__,
        "httpx": httpx.__version__,
        "httpcore": httpcore.__version__,
    }
    if "nginx" in paths:
        out["nginx"] = _first_line([paths["nginx"], "-v"]).split("/")[-1]
    for prog, flag in (("curl", "--version"), ("wget", "--version"), ("aria2c", "--version")):
        if prog in paths:
            words = _first_line([paths[prog], flag]).split()
            # "curl 7.88.1 ...", "GNU Wget 1.21.3 ...", "aria2 version 1.36.0"
            index = 1 if prog == "curl" else 2
            out[prog] = words[index] if len(words) > index else "?"
    return out


def _machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM"


def _need_bytes(cfg: Config) -> int:
    need = 512 * MiB
    if "big" in cfg.workloads or "resume" in cfg.workloads:
        need += 2 * cfg.big_size
    if "huge" in cfg.workloads and cfg.huge_size:
        need += 2 * cfg.huge_size
    if "small" in cfg.workloads:
        need += 2 * cfg.small_count * cfg.small_size
    if "mid" in cfg.workloads:
        need += 2 * cfg.mid_count * cfg.mid_size
    return need


def _pick_workdir(cfg: Config, need: int) -> Path:
    if cfg.workdir is not None:
        return cfg.workdir
    candidates = [Path(tempfile.gettempdir()), Path("/var/tmp"), REPO / "bench" / "results"]
    best, best_free = candidates[0], -1
    for c in candidates:
        try:
            c.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(c).free
        except OSError:
            continue
        if free >= need:
            return c
        if free > best_free:
            best, best_free = c, free
    return best


def run_suite(cfg: Config) -> dict[str, Any]:
    """Run the configured workloads; returns the results dict (also written to ``cfg.out_dir``)."""
    started = dt.datetime.now().astimezone()
    say = _say
    say(f"bitsnb benchmark ({'quick' if cfg.quick else 'full'} run, {cfg.reps} interleaved rounds)")
    tools = Toolbox(install=cfg.install)
    results: dict[str, Any] = {"workloads": {}, "notes": []}
    nginx_path = tools.get("nginx")
    if nginx_path is None:
        raise SystemExit(
            "nginx is needed and could not be found or installed "
            "(run as root so the suite can 'apt-get install -y nginx-light', or install it)."
        )
    paths = {"nginx": nginx_path}
    for prog in ("curl", "wget", "aria2c"):
        found = tools.get(prog)
        if found:
            paths[prog] = found
    need = _need_bytes(cfg)
    base = _pick_workdir(cfg, need)
    free = shutil.disk_usage(base).free
    if free < need and cfg.huge_size and "huge" in cfg.workloads:
        results["notes"].append(
            f"only {free / GiB:.1f} GiB free in {base}: the {cfg.huge_size / GiB:.0f} GiB run is skipped"
        )
        say(f"  {results['notes'][-1]}")
        cfg = dataclasses.replace(cfg, workloads=tuple(w for w in cfg.workloads if w != "huge"))
        need = _need_bytes(cfg)
    if free < need:
        raise SystemExit(
            f"not enough disk space in {base}: {free / GiB:.1f} GiB free, need {need / GiB:.1f}"
        )
    scratch = Path(tempfile.mkdtemp(prefix="bitsnb-bench-", dir=base))
    nginx = Nginx(nginx_path, scratch / "www", scratch / "nginx")
    fs = _first_line(["df", "-h", "--output=source,fstype,avail", str(scratch)])
    df_line = _first_line(
        ["sh", "-c", f"df -h --output=source,fstype,avail {shlex.quote(str(scratch))} | tail -1"]
    )
    results["meta"] = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": cfg.command,
        "quick": cfg.quick,
        "reps": cfg.reps,
        "machine": _machine(),
        "versions": _versions(paths),
        "scratch": str(scratch),
        "scratch_fs": " ".join(df_line.split()) if fs != "?" else "?",
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
        },
        "policy_many": "Policy(max_active_jobs=16, max_connections_per_host=16)",
        "policy_one": "Policy() (defaults)",
        "default_policy": _default_policy(),
        "tools": paths,
        "git": _git_state(),
    }
    say(f"  machine: {results['meta']['machine']}")
    say(f"  versions: {results['meta']['versions']}")
    say(f"  scratch folder: {scratch} ({results['meta']['scratch_fs']})")
    say(
        "  bitsnb: one-job runs use the default Policy(); many-jobs runs use "
        "Policy(max_active_jobs=16, max_connections_per_host=16)"
    )
    t0 = time.monotonic()
    try:
        root = scratch / "www"
        root.mkdir()
        say("generating random files ...")
        big = huge = small = mid = None
        if {"big", "resume", "queue"} & set(cfg.workloads):
            big = FileSet.create(root, f"big-{cfg.big_size // MiB}m", 1, cfg.big_size)
        if "huge" in cfg.workloads and cfg.huge_size:
            huge = FileSet.create(root, f"huge-{cfg.huge_size // MiB}m", 1, cfg.huge_size)
        if "small" in cfg.workloads:
            small = FileSet.create(root, "small", cfg.small_count, cfg.small_size)
        if "mid" in cfg.workloads:
            mid = FileSet.create(root, "mid", cfg.mid_count, cfg.mid_size)
        say(f"  done in {time.monotonic() - t0:.1f} s")
        try:
            nginx.start()
        except NginxError as exc:
            raise SystemExit(f"cannot benchmark: {exc}") from exc
        say(f"nginx listening on 127.0.0.1:{nginx.port} (pid file, logs: {nginx.run_dir})")
        b = _workloads.Bench(
            nginx=nginx,
            scratch=scratch,
            paths=paths,
            reps=cfg.reps,
            quick=cfg.quick,
            repo=REPO,
            say=say,
        )
        for prog in ("curl", "wget", "aria2c"):
            if prog not in paths:
                b.notes.append(f"{prog} is not available: its reference runs are skipped")
        w = results["workloads"]
        if big is not None and "big" in cfg.workloads:
            say(f"\n== 1. {big.size_each / MiB:.0f} MiB file ==")
            w["big"] = _workloads.big_file(b, big)
        if huge is not None:
            say(
                f"\n== 1b. {huge.size_each / GiB:.0f} GiB file, bitsnb once (memory stays flat?) =="
            )
            w["huge"] = _workloads.huge_file(b, huge)
        if small is not None:
            say(
                f"\n== 2. {small.count:,} × {small.size_each // 1024} KiB: one job, and {small.count:,} jobs =="
            )
            w["small"] = _workloads.many_files(b, small, "small", jobs=small.count, one_job=True)
        if mid is not None:
            say(f"\n== 3. {mid.count:,} × {mid.size_each // MiB} MiB across {cfg.mid_jobs} jobs ==")
            w["mid"] = _workloads.many_files(b, mid, "mid", jobs=cfg.mid_jobs, one_job=False)
        if "queue" in cfg.workloads:
            say(f"\n== 4. {cfg.queue_jobs:,} queued jobs ==")
            url = nginx.url(big.rel_paths[0]) if big else nginx.url("none.bin")
            w["queue"] = _workloads.queue(b, cfg.queue_jobs, cfg.idle_seconds, url)
            extra = _workloads.extra_script(b, "frame_10k", timeout=600) if cfg.extras else None
            if extra is not None:
                w["queue"]["frame_10k"] = extra
                say(f"  [queue] bench/frame_10k.py: {extra['stdout_tail'][-300:]}")
        if big is not None and "resume" in cfg.workloads:
            say(f"\n== 5. resume a {big.size_each / MiB:.0f} MiB transfer killed at ~50 % ==")
            w["resume"] = _workloads.resume(b, big, cfg.resume_runs)
        if "panels" in cfg.workloads:
            say("\n== 6. notebook panels ==")
            w["panels"] = _workloads.panels(b)
        results["notes"] += tools.notes + b.notes
    finally:
        nginx.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    results["meta"]["elapsed_s"] = time.monotonic() - t0
    targets = evaluate(results)
    results["targets"] = [t.as_dict() for t in targets]
    md = _report.markdown(results, targets)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S") + ("-quick" if cfg.quick else "")
    json_path = cfg.out_dir / f"bench-{stamp}.json"
    md_path = cfg.out_dir / f"bench-{stamp}.md"
    png_path = cfg.out_dir / f"bench-{stamp}.png"
    _report.write_json(json_path, results)
    md_path.write_text(md)
    say("\n" + md)
    say(f"results: {json_path}\n         {md_path}")
    if cfg.chart:
        problem = _report.write_chart(png_path, results)
        say(f"         {png_path}" if problem is None else f"  (chart skipped: {problem})")
    for name in ("json", "md", "png"):
        src = cfg.out_dir / f"bench-{stamp}.{name}"
        if src.exists():
            shutil.copyfile(src, cfg.out_dir / f"latest{'-quick' if cfg.quick else ''}.{name}")
    say(f"total time {results['meta']['elapsed_s']:.0f} s")
    return results


def _git_state() -> str:
    """HEAD's short hash, and which bitsnb/ files differ from it (the code measured)."""
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    try:
        p = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "bitsnb"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        changed = p.stdout.decode("utf-8", "replace").split()
    except (OSError, subprocess.TimeoutExpired):
        changed = []
    dirty = [c for c in changed if "/" in c]
    return head + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")


def _default_policy() -> dict[str, Any]:
    import bitsnb

    out: dict[str, Any] = {}
    for f in dataclasses.fields(bitsnb.Policy):
        v = getattr(bitsnb.Policy(), f.name)
        if isinstance(v, int | float | bool | str) or v is None:
            out[f.name] = v
    out.pop("owner", None)
    return out


def _say(text: str) -> None:
    print(text, flush=True)
    sys.stdout.flush()
