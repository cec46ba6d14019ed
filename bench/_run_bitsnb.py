"""Benchmark runner: download URLs with ``bitsnb.Manager`` and print JSON timings.

``python -m bench._run_bitsnb [--jobs N] [--many] [--store DB] [--existing] [--policy K=V] URL... DEST``

Uses the library path only (pandas and ipywidgets are never imported; the JSON says so).
Stamps are ``time.monotonic()`` values, comparable with the parent's clock on Linux.
``created``: jobs created, files added, resumed; ``transferred``: every job TRANSFERRED
(bitsnb fsyncs before that); ``complete``: every ``complete()`` returned (files renamed, folders
fsynced): the durable point. With ``--existing`` the jobs already in the store are finished
instead of creating new ones (the resume workload's second run). ``--policy K=V`` (repeatable)
changes one field of the policy, e.g. ``--policy receive_buffer=none`` (values: ``none``,
``true``/``false``, integers, floats, else text); the JSON's ``policy`` lists the changes.
"""

from __future__ import annotations

import time

T_START = time.monotonic()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import bitsnb  # noqa: E402

T_IMPORTED = time.monotonic()


def many_policy() -> bitsnb.Policy:
    """The policy the suite uses for many-job runs: 16 active jobs, 16 connections per host."""
    return bitsnb.Policy(max_active_jobs=16, max_connections_per_host=16)


def parse_policy(items: list[str]) -> dict[str, object]:
    """``["receive_buffer=none", "max_connections_per_host=8"]`` → the policy fields to change."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--policy wants KEY=VALUE, got {item!r}")
        low = text.strip().lower()
        value: object
        if low == "none":
            value = None
        elif low in ("true", "false"):
            value = low == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        out[key.strip()] = value
    return out


def _split(items: list[str], parts: int) -> list[list[str]]:
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out: list[list[str]] = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the transfer, print one JSON line."""
    ap = argparse.ArgumentParser(prog="python -m bench._run_bitsnb", description=__doc__)
    ap.add_argument("items", nargs="*", help="URL... DEST (DEST: a folder)")
    ap.add_argument("--url-file", help="a file with one URL per line (instead of URL...)")
    ap.add_argument("--jobs", type=int, default=1, help="spread the URLs over N jobs")
    ap.add_argument("--many", action="store_true", help="max_active_jobs=16, 16 conns/host")
    ap.add_argument("--store", help="jobs.db to use (default: a temp dir, removed at exit)")
    ap.add_argument("--existing", action="store_true", help="finish the jobs already stored")
    ap.add_argument("--timeout", type=float, default=600.0, help="bound on the whole wait")
    ap.add_argument(
        "--policy", action="append", default=[], help="KEY=VALUE: change one Policy field"
    )
    args = ap.parse_args(argv)
    if not args.items:
        ap.error("DEST is required")
    dest = Path(args.items[-1])
    urls = list(args.items[:-1])
    if args.url_file:
        urls += [u.strip() for u in Path(args.url_file).read_text().splitlines() if u.strip()]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = None
    if args.store:
        store = Path(args.store)
    else:
        tmp = tempfile.mkdtemp(prefix="bitsnb-bench-store-")
        store = Path(tmp) / "jobs.db"
    policy = many_policy() if args.many else bitsnb.Policy()
    try:
        changes = parse_policy(args.policy)
        policy = dataclasses.replace(policy, **changes)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        ap.error(f"--policy: {exc}")
    result: dict[str, object] = {"t_start": T_START, "t_imported": T_IMPORTED}
    if changes:
        result["policy"] = changes
    deadline = time.monotonic() + args.timeout
    jobs: list[bitsnb.Job] = []
    states: dict[str, int] = {}
    try:
        with bitsnb.Manager(store=store, policy=policy) as mgr:
            result["t_manager"] = time.monotonic()
            if args.existing:
                jobs = list(mgr.enum_jobs())
            if not jobs:
                for i, chunk in enumerate(_split(urls, args.jobs)):
                    job = mgr.create_job(f"bench-{i}")
                    job.add_file_set([(u, str(dest / u.rsplit("/", 1)[-1])) for u in chunk])
                    job.resume()
                    jobs.append(job)
            result["t_created"] = time.monotonic()
            result["jobs"] = len(jobs)
            for job in jobs:
                state = job.wait(timeout=max(0.0, deadline - time.monotonic()))
                states[state.name] = states.get(state.name, 0) + 1
            result["t_transferred"] = time.monotonic()
            result["states"] = states
            errors = [str(j.error) for j in jobs if j.state is bitsnb.JobState.ERROR][:3]
            if errors:
                result["errors"] = errors
            for job in jobs:
                if job.state is bitsnb.JobState.TRANSFERRED:
                    job.complete()
            result["t_complete"] = time.monotonic()
        result["t_closed"] = time.monotonic()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    result["imported"] = {m: m in sys.modules for m in ("pandas", "ipywidgets", "numpy")}
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    return 0 if jobs and states.get("TRANSFERRED", 0) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
