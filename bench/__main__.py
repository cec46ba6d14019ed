"""``python -m bench``: the benchmark suite (``--quick`` for a short run). See bench/README.md."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from ._bytecode import precompile
from ._clients import BASELINE_ENV
from ._suite import ALL_WORKLOADS, Config, run_suite
from ._wan import PROFILES
from ._wan_suite import WanConfig, run_wan

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in _UNITS:
        return int(float(t[:-1]) * _UNITS[t[-1]])
    return int(t)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the suite."""
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark bitsnb against curl, wget, aria2c and plain httpx over a local nginx.",
    )
    ap.add_argument("--quick", action="store_true", help="2 rounds, smaller sizes (about a minute)")
    ap.add_argument("--reps", type=int, help="interleaved rounds per workload (full: 5, quick: 2)")
    ap.add_argument(
        "--only",
        help=f"comma-separated workloads to run, from: {','.join(ALL_WORKLOADS)}",
    )
    ap.add_argument("--big-size", type=_size, help="size of the big file, e.g. 256M or 1G")
    ap.add_argument("--huge-size", type=_size, help="size of the huge file (0: skip), e.g. 4G")
    ap.add_argument("--small-count", type=int, help="how many 16 KiB files")
    ap.add_argument("--queue-jobs", type=int, help="how many jobs in the idle-queue workload")
    ap.add_argument("--idle", type=float, help="seconds of idle-CPU measurement")
    ap.add_argument("--workdir", type=Path, help="parent of the scratch folder (default: /tmp)")
    ap.add_argument("--out", type=Path, help="results folder (default: bench/results)")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install anything")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of bitsnb (e.g. a git worktree of an older commit) run beside this one, "
        "interleaved, as one more reference",
    )
    wan = ap.add_argument_group("WAN testbed (root only; see bench/README.md)")
    wan.add_argument(
        "--wan",
        action="store_true",
        help="run one big file through the WAN profiles (namespaces + delay line) instead",
    )
    wan.add_argument(
        "--wan-profiles",
        help=f"comma-separated profiles (default: all): {','.join(PROFILES)}",
    )
    wan.add_argument("--wan-size", type=_size, help="file size (full: 1G, quick: 64M)")
    wan.add_argument("--wan-timeout", type=float, help="seconds per sample (full: 300, quick: 30)")
    wan.add_argument(
        "--wan-small",
        type=int,
        metavar="N",
        help="also N files of 16 KiB in one job against curl --parallel 16; with --wan-size 0"
        " only these",
    )
    wan.add_argument(
        "--wan-small-tls",
        action="store_true",
        help="the small files also over HTTPS (self-signed), HTTP/1.1 and HTTP/2, bitsnb and curl",
    )
    args = ap.parse_args(argv)
    if args.baseline:
        os.environ[BASELINE_ENV] = str(args.baseline.resolve())
    trees = [Path(__file__).resolve().parent.parent]
    if args.baseline:
        trees.append(args.baseline.resolve())
    for pkg in precompile(trees):  # as pip install does; see bench/_bytecode.py
        print(f"byte-compiled {pkg}", file=sys.stderr)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so every finally runs: nginx, temp dirs

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    if args.wan or args.wan_profiles:
        wcfg = WanConfig.for_mode(args.quick)
        wcfg.command = "python -m bench " + shlex.join(sys.argv[1:])
        if args.wan_profiles:
            wanted = tuple(w.strip() for w in args.wan_profiles.split(",") if w.strip())
            unknown = sorted(set(wanted) - set(PROFILES))
            if unknown:
                ap.error(f"unknown WAN profiles {unknown}; choose from {list(PROFILES)}")
            wcfg.profiles = wanted
        if args.reps:
            wcfg.reps = max(1, args.reps)
        if args.wan_size is not None:
            wcfg.size = args.wan_size
        if args.wan_small:
            wcfg.small_count = args.wan_small
        wcfg.small_tls = args.wan_small_tls
        if args.wan_timeout:
            wcfg.sample_timeout = args.wan_timeout
        if args.workdir:
            wcfg.workdir = args.workdir
        if args.out:
            wcfg.out_dir = args.out
        wcfg.install = not args.no_install
        try:
            run_wan(wcfg)
        except KeyboardInterrupt as exc:
            print(f"\ninterrupted ({exc or 'Ctrl-C'}): testbed torn down", file=sys.stderr)
            return 130
        return 0
    cfg = Config.for_mode(args.quick)
    cfg.command = "python -m bench" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    if args.reps:
        cfg.reps = max(1, args.reps)
    if args.only:
        wanted = tuple(w.strip() for w in args.only.split(",") if w.strip())
        unknown = sorted(set(wanted) - set(ALL_WORKLOADS))
        if unknown:
            ap.error(f"unknown workloads {unknown}; choose from {ALL_WORKLOADS}")
        cfg.workloads = wanted
    if args.big_size:
        cfg.big_size = args.big_size
    if args.huge_size is not None:
        cfg.huge_size = args.huge_size
    if args.small_count:
        cfg.small_count = args.small_count
    if args.queue_jobs:
        cfg.queue_jobs = args.queue_jobs
    if args.idle is not None:
        cfg.idle_seconds = args.idle
    if args.workdir:
        cfg.workdir = args.workdir
    if args.out:
        cfg.out_dir = args.out
    cfg.install = not args.no_install
    cfg.chart = not args.no_chart
    run_suite(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
