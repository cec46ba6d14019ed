"""The long soak: ``python -m tests.soak --minutes N --seed S`` (from the repository root).

Runs soak rounds (new files and jobs each round, same server and store) until N minutes have
passed or a round fails, prints each round's report and the total, and exits 1 on failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ._driver import SoakConfig, run_soak


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the rounds, print the reports."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep going")
    parser.add_argument("--seed", type=int, default=1, help="seed of jobs, sizes and faults")
    parser.add_argument("--jobs", type=int, default=300, help="jobs per round")
    parser.add_argument("--kills", type=int, default=15, help="worker kills per round")
    parser.add_argument("--max-size", type=int, default=4 << 20, help="largest file, bytes")
    parser.add_argument(
        "--store", default=None, help="a postgresql:// URL (default: a SQLite file in workdir)"
    )
    parser.add_argument(
        "--shared",
        type=float,
        default=0.0,
        help="PostgreSQL: share of jobs shared, their files claimed in batches (e.g. 0.3)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="kept for inspection if given")
    args = parser.parse_args(argv)

    def run(workdir: Path) -> int:
        cfg = SoakConfig(
            workdir=workdir,
            seed=args.seed,
            jobs=args.jobs,
            kills=args.kills,
            max_size=args.max_size,
            store=args.store,
            shared_share=args.shared,
        )
        report = run_soak(cfg, minutes=args.minutes, echo=lambda text: print(text, flush=True))
        print("== total\n" + report.format(), flush=True)
        return 0 if report.ok else 1

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args.workdir)
    with tempfile.TemporaryDirectory(prefix="bitsnb-soak-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
