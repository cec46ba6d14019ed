"""The workloads: each runs bitsnb and the references interleaved and returns a results dict.

A sample is one run of one client: fresh destination folder, ``sync`` beforehand (not timed),
the client as a subprocess reaped with wait4 (CPU and peak RSS are the child's own), then a
timed ``sync`` (the durable point of the references), then a check that every file arrived
whole. bitsnb's durable point is its runner's ``complete()`` returning (it fsyncs before
TRANSFERRED and fsyncs the folders in ``complete()``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._clients import Client, ListFiles, many_file_clients, one_file_clients, write_lists
from ._files import FileSet, sha256_of
from ._nginx import Nginx
from ._proc import ProcResult, run, timed_sync
from ._stats import pair_ratios, spread

__all__ = [
    "Bench",
    "big_file",
    "huge_file",
    "many_files",
    "panels",
    "queue",
    "resume",
]

GiB = 1 << 30
MiB = 1 << 20

Sample = dict[str, Any]


@dataclass
class Bench:
    """What the workloads share: settings, the server, tool paths and a scratch folder."""

    nginx: Nginx
    scratch: Path
    paths: dict[str, str]  # program -> path, only those available
    reps: int
    quick: bool
    repo: Path
    say: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)
    # the WAN testbed runs every client in its client namespace: argv -> ``ip netns exec NS argv``
    wrap: Callable[[list[str]], list[str]] | None = None

    def available(self, clients: Sequence[Client]) -> list[Client]:
        """The clients whose program exists (Python clients always do)."""
        return [c for c in clients if c.program == "python" or c.program in self.paths]

    def env(self) -> dict[str, str]:
        """Environment of the Python clients: the repo on sys.path, no proxies."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.repo), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env["NO_PROXY"] = "127.0.0.1,localhost"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            env.pop(name, None)
        env["BITSNB_HOME"] = str(self.scratch / "bitsnb-home")
        return env


def machine_load() -> dict[str, float]:
    """The 1-minute load average and CPU pressure (PSI "some" avg10, %) right now.

    Other programs on the machine skew every timing; these say how busy it was.
    """
    out = {"load1": os.getloadavg()[0]}
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        fields = dict(part.split("=") for part in first.split()[1:])
        out["cpu_pressure"] = float(fields["avg10"])
    return out


def _visible(folder: Path) -> tuple[int, int]:
    """(count, bytes) of the finished files in *folder*: no temp or control files."""
    count = total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.startswith(".") or entry.name.endswith(".aria2"):
                continue
            if entry.is_file():
                count += 1
                total += entry.stat().st_size
    return count, total


def _fresh(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _runner_json(p: ProcResult) -> dict[str, Any] | None:
    for line in reversed(p.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(line)
                if isinstance(data, dict):
                    return data
    return None


def run_sample(
    b: Bench,
    client: Client,
    urls: Sequence[str],
    dest: Path,
    lists: ListFiles,
    *,
    count: int,
    total: int,
    timeout: float,
) -> Sample:
    """One run of *client*: times, CPU, RSS and a check that all files arrived whole."""
    _fresh(dest)
    os.sync()  # start with no dirty pages from an earlier run (not timed)
    load = machine_load()
    argv = client.argv(urls, dest, lists)
    if b.wrap is not None:
        argv = b.wrap(argv)
    p = run(argv, timeout=timeout, env=b.env(), cwd=str(b.repo))
    sync_s = timed_sync()
    got_count, got_bytes = _visible(dest)
    sample: Sample = {
        "tool": client.name,
        "wall_s": p.wall,
        "sync_s": sync_s,
        "cpu_s": p.cpu,
        "user_s": p.user,
        "sys_s": p.sys,
        "maxrss_mib": p.maxrss_bytes / MiB,
        "returncode": p.returncode,
        "files": got_count,
        "bytes": got_bytes,
        **load,
    }
    ok = p.ok and got_count == count and got_bytes == total
    if client.is_bitsnb:
        data = _runner_json(p)
        if data is None:
            ok = False
        else:
            sample["runner"] = {k: v for k, v in data.items() if not k.startswith("t_")}
            stamps = {k: float(v) - p.t_spawn for k, v in data.items() if k.startswith("t_")}
            sample["stamps_s"] = stamps
            if "t_complete" in stamps:
                sample["durable_s"] = stamps["t_complete"]
                sample["transfer_s"] = stamps.get("t_transferred", math.nan) - stamps.get(
                    "t_created", math.nan
                )
            else:
                ok = False
            imported = data.get("imported", {})
            if isinstance(imported, dict) and (
                imported.get("pandas") or imported.get("ipywidgets")
            ):
                b.notes.append("the bitsnb runner imported pandas or ipywidgets (it should not)")
    else:
        sample["durable_s"] = p.wall + sync_s
    sample["ok"] = ok
    if not ok:
        why = p.describe_failure() if not p.ok else ""
        sample["error"] = f"{why} got {got_count}/{count} files, {got_bytes}/{total} bytes".strip()
    _fresh(dest)
    return sample


def _rotate(items: list[Client], r: int) -> list[Client]:
    k = r % len(items)
    return items[k:] + items[:k]


def _summarize(
    samples: list[Sample], clients: list[Client], metrics: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-client spreads of *metrics*, and bitsnb/reference ratios pair by pair (by round)."""
    by: dict[str, list[Sample]] = {c.name: [] for c in clients}
    for s in samples:
        by.setdefault(s["tool"], []).append(s)
    summary = {
        name: {m: spread([x.get(m) if x["ok"] else None for x in xs]).as_dict() for m in metrics}
        for name, xs in by.items()
    }
    ratios: dict[str, Any] = {}
    for ours in (c for c in clients if c.is_bitsnb and not c.is_baseline):
        ours_by_round = {s["round"]: s for s in by[ours.name] if s["ok"]}
        for ref in (c for c in clients if not c.is_bitsnb or c.is_baseline):
            ref_by_round = {s["round"]: s for s in by[ref.name] if s["ok"]}
            rounds = sorted(set(ours_by_round) & set(ref_by_round))
            ratios.setdefault(ours.name, {})[ref.name] = {
                m: spread(
                    pair_ratios(
                        [ours_by_round[r].get(m) for r in rounds],
                        [ref_by_round[r].get(m) for r in rounds],
                    )
                ).as_dict()
                for m in metrics
            }
    return summary, ratios


def _interleave(
    b: Bench,
    label: str,
    clients: list[Client],
    urls: Sequence[str],
    dest: Path,
    lists: ListFiles,
    *,
    count: int,
    total: int,
    timeout: float,
    derive: Callable[[Sample], None],
    show: Callable[[Sample], str],
) -> list[Sample]:
    samples: list[Sample] = []
    for r in range(b.reps):
        for client in _rotate(clients, r):
            s = run_sample(b, client, urls, dest, lists, count=count, total=total, timeout=timeout)
            s["round"] = r
            if s["ok"]:
                derive(s)
                b.say(
                    f"  [{label} {r + 1}/{b.reps}] {client.name:<22} {show(s)}"
                    f"  (load {s['load1']:.1f})"
                )
            else:
                b.say(f"  [{label} {r + 1}/{b.reps}] {client.name:<22} FAILED: {s['error']}")
            samples.append(s)
    return samples


# -- 1. one big file ------------------------------------------------------------------------
BIG_METRICS = ("cache_gbps", "durable_gbps", "cpu_s_per_gib", "maxrss_mib", "wall_s", "durable_s")


def _derive_big(size: int) -> Callable[[Sample], None]:
    def derive(s: Sample) -> None:
        s["cache_gbps"] = size / s["wall_s"] / 1e9
        s["durable_gbps"] = size / s["durable_s"] / 1e9
        s["cpu_s_per_gib"] = s["cpu_s"] / (size / GiB)

    return derive


def _show_big(s: Sample) -> str:
    return (
        f"exit {s['wall_s']:6.2f} s  durable {s['durable_s']:6.2f} s  "
        f"{s['durable_gbps']:5.2f} GB/s durable  {s['cpu_s_per_gib']:5.2f} CPU-s/GiB  "
        f"RSS {s['maxrss_mib']:5.1f} MiB"
    )


def _timeout_for(total: int, count: int) -> float:
    return 120.0 + total / 10e6 + count * 0.1


def big_file(b: Bench, files: FileSet) -> dict[str, Any]:
    """Workload 1: one big file, every client, interleaved."""
    url = b.nginx.url(files.rel_paths[0])
    clients = b.available(one_file_clients(b.paths))
    dest = b.scratch / "dest"
    lists = write_lists(b.scratch / "lists-big", [url], dest)
    samples = _interleave(
        b,
        "big",
        clients,
        [url],
        dest,
        lists,
        count=1,
        total=files.size_each,
        timeout=_timeout_for(files.size_each, 1),
        derive=_derive_big(files.size_each),
        show=_show_big,
    )
    summary, ratios = _summarize(samples, clients, BIG_METRICS)
    return {
        "title": f"one file of {files.size_each / MiB:.0f} MiB",
        "size": files.size_each,
        "clients": [{"name": c.name, "note": c.note} for c in clients],
        "samples": samples,
        "summary": summary,
        "ratios": ratios,
    }


def huge_file(b: Bench, files: FileSet) -> dict[str, Any]:
    """The 4 GiB file, once, bitsnb only: its peak RSS should match the 1 GiB run's."""
    url = b.nginx.url(files.rel_paths[0])
    client = one_file_clients(b.paths)[0]
    dest = b.scratch / "dest"
    lists = write_lists(b.scratch / "lists-huge", [url], dest)
    s = run_sample(
        b,
        client,
        [url],
        dest,
        lists,
        count=1,
        total=files.size_each,
        timeout=_timeout_for(files.size_each, 1),
    )
    s["round"] = 0
    if s["ok"]:
        _derive_big(files.size_each)(s)
        b.say(f"  [huge 1/1] {client.name:<22} {_show_big(s)}")
    else:
        b.say(f"  [huge 1/1] {client.name:<22} FAILED: {s['error']}")
    return {
        "title": f"one file of {files.size_each / GiB:.0f} GiB (bitsnb once)",
        "size": files.size_each,
        "samples": [s],
    }


# -- 2./3. many files ----------------------------------------------------------------------
MANY_METRICS = ("files_per_s", "files_per_s_exit", "cpu_ms_per_file", "maxrss_mib", "durable_s")


def _derive_many(count: int) -> Callable[[Sample], None]:
    def derive(s: Sample) -> None:
        s["files_per_s"] = count / s["durable_s"]
        s["files_per_s_exit"] = count / s["wall_s"]
        s["cpu_ms_per_file"] = 1000.0 * s["cpu_s"] / count

    return derive


def _show_many(s: Sample) -> str:
    return (
        f"exit {s['wall_s']:6.2f} s  durable {s['durable_s']:6.2f} s  "
        f"{s['files_per_s']:7.0f} files/s durable  {s['cpu_ms_per_file']:6.2f} CPU-ms/file  "
        f"RSS {s['maxrss_mib']:5.1f} MiB"
    )


def many_files(b: Bench, files: FileSet, label: str, *, jobs: int, one_job: bool) -> dict[str, Any]:
    """Workloads 2 and 3: many files in one job and/or in *jobs* jobs, against the references."""
    urls = [b.nginx.url(r) for r in files.rel_paths]
    dest = b.scratch / "dest"
    lists = write_lists(b.scratch / f"lists-{label}", urls, dest)
    clients = b.available(many_file_clients(b.paths, jobs, one_job=one_job))
    samples = _interleave(
        b,
        label,
        clients,
        urls,
        dest,
        lists,
        count=files.count,
        total=files.total,
        timeout=_timeout_for(files.total, files.count),
        derive=_derive_many(files.count),
        show=_show_many,
    )
    summary, ratios = _summarize(samples, clients, MANY_METRICS)
    return {
        "title": f"{files.count:,} files of {_human(files.size_each)}"
        + (f" (one job, and {jobs:,} jobs)" if one_job else f" across {jobs} jobs"),
        "count": files.count,
        "size_each": files.size_each,
        "jobs": jobs,
        "clients": [{"name": c.name, "note": c.note} for c in clients],
        "samples": samples,
        "summary": summary,
        "ratios": ratios,
    }


def _human(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n / 1024:.0f} KiB"


# -- 4. a big idle queue ---------------------------------------------------------------------
def queue(b: Bench, jobs: int, idle: float, url: str) -> dict[str, Any]:
    """Workload 4: create *jobs* SUSPENDED jobs, frame them, measure the idle CPU."""
    py = sys.executable
    p = run(
        [py, "-m", "bench._run_queue", "--jobs", str(jobs), "--idle", str(idle), url],
        timeout=180.0 + jobs * 0.05 + idle * 2,
        env=b.env(),
        cwd=str(b.repo),
    )
    data = _runner_json(p)
    out: dict[str, Any] = {
        "title": f"{jobs:,} queued (SUSPENDED) jobs; idle CPU over {idle:.0f} s",
        "jobs": jobs,
        "idle_seconds": idle,
        "wall_s": p.wall,
        "maxrss_mib": p.maxrss_bytes / MiB,
    }
    if not p.ok or data is None:
        out["error"] = p.describe_failure()
        b.say(f"  [queue] FAILED: {out['error']}")
        return out
    out.update(data)
    frame = (
        f"to_frame {data['frame_s']:.2f} s"
        if "frame_s" in data
        else f"to_frame skipped ({data.get('frame_skipped')})"
    )
    b.say(
        f"  [queue] created {jobs:,} jobs in {data['create_s']:.2f} s "
        f"(create_job {data['create_job_only_s']:.2f} s + add_file {data['add_file_only_s']:.2f} s);"
        f" enum {data['enum_s']:.3f} s; {frame}; idle {100 * data['idle_core_fraction']:.2f} %"
        f" of a core; close {data['close_s']:.2f} s; reopen {data['reopen_s']:.2f} s;"
        f" peak RSS {out['maxrss_mib']:.0f} MiB"
    )
    return out


def extra_script(b: Bench, module: str, timeout: float) -> dict[str, Any] | None:
    """Run ``bench/<module>.py`` (written by others) if it exists; its output, parsed if JSON."""
    path = b.repo / "bench" / f"{module}.py"
    if not path.exists():
        return None
    p = run(
        [sys.executable, "-m", f"bench.{module}"], timeout=timeout, env=b.env(), cwd=str(b.repo)
    )
    out: dict[str, Any] = {
        "script": f"bench/{module}.py",
        "returncode": p.returncode,
        "wall_s": p.wall,
        "stdout_tail": p.stdout.strip()[-2000:],
    }
    if not p.ok:
        out["error"] = p.describe_failure()
    data = _runner_json(p)
    if data is not None:
        out["data"] = data
    return out


# -- 5. resume after a kill -----------------------------------------------------------------
def resume(b: Bench, files: FileSet, runs: int) -> dict[str, Any]:
    """Workload 5: SIGKILL the runner at ~50 %, finish on the same store, count bytes served."""
    rel = files.rel_paths[0]
    url = b.nginx.url(rel)
    port = urllib.parse.urlsplit(url).port or 80
    size = files.size_each
    uri = "/" + rel
    py = sys.executable
    expected_sha = sha256_of(b.nginx.root / rel)
    attempts: list[dict[str, Any]] = []
    for i in range(runs):
        work = b.scratch / "resume"
        shutil.rmtree(work, ignore_errors=True)
        dest = work / "dest"
        dest.mkdir(parents=True)
        store = work / "jobs.db"
        os.sync()
        mark = b.nginx.log_size()
        killed_at = 0
        buffers: tuple[int, int] | None = None

        def half_done(_pid: int, dest: Path = dest) -> bool:
            nonlocal killed_at, buffers
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(dest):
                    if entry.name.startswith(".BIT"):
                        n = entry.stat().st_size
                        if n >= size // 2:
                            killed_at = n
                            buffers = socket_buffers(port)  # just before the kill
                            return True
            return False

        argv = [py, "-m", "bench._run_bitsnb", "--store", str(store), url, str(dest)]
        first = run(
            argv, timeout=_timeout_for(size, 1), env=b.env(), cwd=str(b.repo), watch=half_done
        )
        second = run(
            [*argv[:3], "--existing", *argv[3:]],
            timeout=_timeout_for(size, 1),
            env=b.env(),
            cwd=str(b.repo),
        )
        got = dest / rel.rsplit("/", 1)[-1]
        deadline = time.monotonic() + 10
        lines: list[tuple[str, int, int]] = []
        while time.monotonic() < deadline:
            lines = [x for x in b.nginx.requests_since(mark) if x[0] == uri]
            if len(lines) >= 2 or (not first.killed_by_watch and lines):
                break
            time.sleep(0.05)
        sent = sum(n for _, _, n in lines)
        ok = second.ok and got.exists() and got.stat().st_size == size
        sha_ok = ok and sha256_of(got) == expected_sha
        data = _runner_json(second)
        attempt: dict[str, Any] = {
            "killed": first.killed_by_watch,
            "killed_at_bytes": killed_at,
            "killed_at_fraction": killed_at / size,
            "requests": [{"status": s, "bytes": n} for _, s, n in lines],
            "bytes_sent": sent,
            "sent_over_size": sent / size,
            "overhead_bytes": sent - size,
            # issue 13: the kernel's autotuned receive buffer is the default again, so the
            # bytes a kill loses are bounded by the buffer in use at the kill (from ss)
            "rcvbuf_at_kill": None if buffers is None else buffers[0],
            "queued_at_kill": None if buffers is None else buffers[1],
            "limit_bytes": 1.01 * size + (8 * MiB if buffers is None else buffers[0]),
            "finished": ok,
            "content_ok": sha_ok,
            "second_run_s": second.wall,
        }
        if data is not None:
            attempt["second_runner"] = {k: v for k, v in data.items() if not k.startswith("t_")}
        if not first.killed_by_watch:
            attempt["error"] = "the first runner ended before reaching 50 % " + (
                "" if first.ok else first.describe_failure()
            )
        elif not ok:
            attempt["error"] = second.describe_failure()
        elif not sha_ok:
            attempt["error"] = "the resumed file differs from the served one"
        b.say(
            f"  [resume {i + 1}/{runs}] killed at {100 * attempt['killed_at_fraction']:.0f} %;"
            f" server sent {sent / MiB:.1f} MiB for a {size / MiB:.0f} MiB file"
            f" ({attempt['sent_over_size']:.4f}× size, overhead {attempt['overhead_bytes'] / MiB:+.1f} MiB)"
            f" in {len(lines)} requests; receive buffer at the kill "
            f"{'?' if buffers is None else f'{buffers[0] / MiB:.1f} MiB ({buffers[1] / MiB:.1f} MiB queued)'}"
            f"; finished {ok}, content {'OK' if sha_ok else 'WRONG'}"
            + (f"; {attempt['error']}" if "error" in attempt else "")
        )
        attempts.append(attempt)
        shutil.rmtree(work, ignore_errors=True)
    good = [a for a in attempts if a["killed"] and a["finished"]]
    return {
        "title": f"resume a {size / MiB:.0f} MiB transfer killed at ~50 %",
        "size": size,
        "attempts": attempts,
        "sent_over_size": spread([a["sent_over_size"] for a in good]).as_dict(),
        "overhead_bytes": spread([a["overhead_bytes"] for a in good]).as_dict(),
        "all_content_ok": bool(attempts) and all(a["content_ok"] for a in attempts),
    }


def socket_buffers(port: int) -> tuple[int, int] | None:
    """(receive buffer size, bytes queued unread) of the client socket connected to *port*,
    the largest if several, from ``ss -tmn`` (iproute2); None when ss is missing or shows none."""
    try:
        out = subprocess.run(
            ["ss", "-tmnH", "state", "established", f"( dport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    best: tuple[int, int] | None = None
    for m in re.finditer(r"skmem:\(r(\d+),rb(\d+)", out):
        queued, rb = int(m.group(1)), int(m.group(2))
        if best is None or rb > best[0]:
            best = (rb, queued)
    return best


# -- 6. notebook layer ----------------------------------------------------------------------
def panels(b: Bench) -> dict[str, Any]:
    """Workload 6: ``bench/panel_messages.py`` (written by another engineer), if present."""
    out = extra_script(b, "panel_messages", timeout=300)
    if out is None:
        b.say("  [panels] bench/panel_messages.py does not exist yet: skipped")
        return {"title": "notebook panels", "skipped": "bench/panel_messages.py does not exist"}
    out["title"] = "notebook panels (bench/panel_messages.py)"
    value = find_rate(out)
    out["msgs_per_s"] = value
    b.say(
        f"  [panels] {out['script']}: "
        + (f"{value:.1f} msgs/s" if value is not None else "no msgs/s figure found in its output")
        + (f"; {out['error']}" if "error" in out else "")
    )
    return out


def find_rate(out: dict[str, Any]) -> float | None:
    """The messages-per-second figure of a panel script: a JSON key, else ``N msgs/s`` text."""
    import re

    data = out.get("data")
    if isinstance(data, dict):
        for key in sorted(data, key=lambda k: ("msgs_per_s" not in k, k)):
            value = data[key]
            if ("per_s" in key or "rate" in key) and isinstance(value, int | float):
                return float(value)
    pattern = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:msgs?|messages)\s*/\s*s")
    found: list[tuple[str, float]] = [
        (line, float(m.group(1)))
        for line in str(out.get("stdout_tail", "")).splitlines()
        for m in pattern.finditer(line)
    ]
    if not found:
        return None
    # the overall figure ("... total = N msg/s"), else the highest one (the goal is a ceiling)
    totals = [v for line, v in found if "total" in line]
    return totals[0] if totals else max(v for _, v in found)
