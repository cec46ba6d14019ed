"""``python -m bench --wan``: one big file through each WAN profile, every client interleaved.

For each profile (``bench/_wan.py``) a fresh testbed is set up; before the clients run, the
round trip is measured (TCP connects from the client namespace through the relay) and so is the
path's ceiling (4 raw connections with autotuned windows, the relay's CPU beside it), so a reader
can tell the relay was not what bounded a client. Then bitsnb (default ``Policy()`` and
``Policy(receive_buffer=None)``), curl, ``aria2c -x1`` and ``aria2c -x16 -s16 -k1M`` (and the
``--baseline`` checkout's bitsnb) download the file in rotating order, round after round; each
sample records the relay's CPU and its drops. Ratios bitsnb / reference are pair by pair.

Bounded: each sample has a timeout (a client slower than size/timeout is reported as timed out,
never counted), each testbed is torn down before the next, the scratch folder is removed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _report
from ._clients import BASELINE_ENV, wan_clients, wan_small_clients, write_lists
from ._files import FileSet
from ._stats import spread
from ._tools import Toolbox
from ._wan import PROFILES, Testbed, TestbedError, unavailable
from ._workloads import (
    MANY_METRICS,
    Bench,
    Sample,
    _derive_many,
    _interleave,
    _rotate,
    _show_many,
    _summarize,
    run_sample,
)

__all__ = ["WanConfig", "run_wan"]

MiB = 1 << 20
GiB = 1 << 30
REPO = Path(__file__).resolve().parent.parent
METRICS = ("durable_mbps", "exit_mbps", "cpu_s_per_gib", "relay_cpu", "durable_s")
CEILING_FILE = "ceiling.bin"  # sparse: costs no disk, nginx sends its zeros like any file


@dataclass
class WanConfig:
    """What ``--wan`` runs; ``WanConfig.for_mode(quick)`` gives the documented presets."""

    quick: bool = False
    reps: int = 5
    size: int = GiB
    profiles: tuple[str, ...] = tuple(PROFILES)
    sample_timeout: float = 300.0
    ceiling_seconds: float = 5.0
    workdir: Path | None = None
    out_dir: Path = field(default_factory=lambda: REPO / "bench" / "results")
    install: bool = True
    command: str = "python -m bench --wan"
    small_count: int = 0  # files of 16 KiB in one job (0: not run); size 0: no big file
    small_tls: bool = False  # the small files also over TLS, HTTP/1.1 and HTTP/2

    @classmethod
    def for_mode(cls, quick: bool) -> WanConfig:
        """Full: 5 rounds of 1 GiB; quick: 2 rounds of 64 MiB, 30 s per sample (~1 min a profile)."""
        if not quick:
            return cls()
        return cls(quick=True, reps=2, size=64 * MiB, sample_timeout=30.0, ceiling_seconds=2.5)


def _say(text: str) -> None:
    print(text, flush=True)


def _drops(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in ("dropped_queue", "dropped_loss", "write_errors"):
        out[key] = sum(
            int(after.get(d, {}).get(key, 0)) - int(before.get(d, {}).get(key, 0))
            for d in ("server_to_client", "client_to_server")
        )
    return out


def _small_run(
    b: Bench, tb: Testbed, small: FileSet, scratch: Path, name: str, *, tls: bool
) -> dict[str, Any]:
    """Many small files in one job through the path: bitsnb against ``curl --parallel 16``, on
    plain HTTP and (*tls*) over TLS with HTTP/1.1 and HTTP/2, interleaved, pair by pair."""
    dest = scratch / "dest"
    urls = [tb.server_url(r) for r in small.rel_paths]
    lists = write_lists(scratch / f"lists-small-{name}", urls, dest)
    https = None
    if tls:
        https_urls = [tb.server_tls_url(r) for r in small.rel_paths]
        https = write_lists(scratch / f"lists-small-tls-{name}", https_urls, dest)
    clients = b.available(wan_small_clients(b.paths, https, tb.ca_file if tls else None))
    label = f"{name} {small.count}×{small.size_each // 1024}K"
    samples = _interleave(
        b,
        label,
        clients,
        urls,
        dest,
        lists,
        count=small.count,
        total=small.total,
        timeout=max(60.0, small.count * 0.1),
        derive=_derive_many(small.count),
        show=_show_many,
    )
    summary, ratios = _summarize(samples, clients, MANY_METRICS)
    return {
        "title": f"{small.count:,} files of {small.size_each // 1024} KiB in one job",
        "count": small.count,
        "clients": [{"name": c.name, "note": c.note} for c in clients],
        "samples": samples,
        "summary": summary,
        "ratios": ratios,
    }


def _profile_run(
    cfg: WanConfig,
    name: str,
    www: Path,
    big: FileSet | None,
    paths: dict[str, str],
    scratch: Path,
    small: FileSet | None = None,
) -> dict[str, Any]:
    profile = PROFILES[name]
    size = big.size_each if big is not None else 0
    out: dict[str, Any] = {"profile": profile.as_dict(), "size": size}
    t0 = time.monotonic()
    with Testbed(
        profile,
        serve=www,
        nginx=paths["nginx"],
        workdir=scratch / f"tb-{name}",
        tls=small is not None and cfg.small_tls,
    ) as tb:
        rtts = tb.connect_rtts(7)
        out["rtt_ms"] = spread([1000 * r for r in rtts]).as_dict()
        # without nginx's per-connection cap: the path's (bottleneck's, relay's) own ceiling
        ceiling_path = ("nolimit/" if profile.limit_rate else "") + CEILING_FILE
        ceiling = tb.pull(ceiling_path, connections=4, seconds=cfg.ceiling_seconds)
        out["ceiling"] = ceiling
        _say(
            f"  measured RTT (TCP connect, {len(rtts)}×): {spread([1000 * r for r in rtts]).fmt(2)} ms;"
            f" ceiling ({ceiling['connections']} raw connections, {ceiling['seconds']:.1f} s):"
            f" {ceiling['mbps']:.0f} MB/s, relay at {100 * ceiling['relay_cpu_fraction']:.0f} % of a core"
        )
        b = Bench(
            nginx=tb.nginx,  # type: ignore[arg-type]
            scratch=scratch,
            paths=paths,
            reps=cfg.reps,
            quick=cfg.quick,
            repo=REPO,
            say=_say,
            wrap=tb.client_argv,
        )
        if small is not None:
            out["small"] = _small_run(b, tb, small, scratch, name, tls=cfg.small_tls)
        clients = b.available(wan_clients(paths)) if big is not None else []
        samples: list[Sample] = []
        if big is not None:
            url = tb.server_url(big.rel_paths[0])
            dest = scratch / "dest"
            lists = write_lists(scratch / f"lists-{name}", [url], dest)
        for r in range(cfg.reps if big is not None else 0):
            for client in _rotate(clients, r):
                stats0, cpu0 = tb.relay_stats(), tb.relay_cpu_s()
                s = run_sample(
                    b, client, [url], dest, lists, count=1, total=size, timeout=cfg.sample_timeout
                )
                cpu = tb.relay_cpu_s() - cpu0
                s["round"] = r
                s["relay"] = _drops(stats0, tb.relay_stats())
                if s["ok"]:
                    s["durable_mbps"] = size / s["durable_s"] / 1e6
                    s["exit_mbps"] = size / s["wall_s"] / 1e6
                    s["cpu_s_per_gib"] = s["cpu_s"] / (size / GiB)
                    s["relay_cpu"] = cpu / s["durable_s"] if tb.relay is not None else None
                    relay = (
                        f"relay {100 * s['relay_cpu']:3.0f} % CPU"
                        if s["relay_cpu"] is not None
                        else "no relay"
                    )
                    _say(
                        f"  [{name} {r + 1}/{cfg.reps}] {client.name:<26} durable"
                        f" {s['durable_mbps']:7.1f} MB/s  to exit {s['exit_mbps']:7.1f} MB/s"
                        f"  {s['cpu_s_per_gib']:5.2f} CPU-s/GiB  {relay}"
                        f"  drops {s['relay']['dropped_queue']}/{s['relay']['dropped_loss']}"
                        f"  (load {s['load1']:.1f})"
                    )
                else:
                    if s["wall_s"] >= 0.98 * cfg.sample_timeout:
                        s["error"] = (
                            f"timed out after {cfg.sample_timeout:.0f} s (slower than"
                            f" {size / cfg.sample_timeout / 1e6:.1f} MB/s); {s.get('error', '')}"
                        )
                    _say(f"  [{name} {r + 1}/{cfg.reps}] {client.name:<26} FAILED: {s['error']}")
                samples.append(s)
        out["relay_final"] = tb.relay_stats()
        out["device_drops"] = sum(max(0, v) for v in tb.device_drops().values())
        if tb.relay is not None:
            _say(
                f"  TUN devices dropped {out['device_drops']} packets in all (the relay fell behind)"
            )
    summary, ratios = _summarize(samples, clients, METRICS)
    out.update(
        title=f"{name}: {profile.describe()}",
        clients=[{"name": c.name, "note": c.note} for c in clients],
        samples=samples,
        summary=summary,
        ratios=ratios,
        elapsed_s=time.monotonic() - t0,
        notes=b.notes,
    )
    return out


def _profile_md(w: dict[str, Any]) -> list[str]:
    lines = [f"### {w['title']}", ""]
    if "error" in w:
        return [*lines, f"FAILED: {w['error']}", ""]
    rtt = _report._sp(w["rtt_ms"])
    c = w["ceiling"]
    if "small" in w:
        lines += _small_md(w["small"], rtt.fmt(2))
    if not w["size"]:
        return lines
    lines += [
        f"One file of {w['size'] / MiB:.0f} MiB. Measured RTT (TCP connect through the relay):"
        f" {rtt.fmt(2)} ms. Ceiling of the path ({c['connections']} raw connections, windows"
        f" autotuned, nginx's per-connection cap lifted, {c['seconds']:.1f} s): **{c['mbps']:.0f} MB/s**, the relay at"
        f" {100 * c['relay_cpu_fraction']:.0f} % of a core. A client well below the ceiling,"
        " with the relay below 100 % of a core, was not held back by the relay.",
        "",
    ]
    if "device_drops" in w and w["profile"]["rtt_ms"] > 0:
        lines += [
            f"Packets dropped at the TUN devices over the whole profile (the relay behind): "
            f"{w['device_drops']}.",
            "",
        ]
    busy = _report.load_line(w.get("samples", []))
    if busy:
        lines += [f"_{busy}_", ""]
    notes = {x["name"]: x.get("note", "") for x in w.get("clients", [])}
    drops: dict[str, list[int]] = {}
    for s in w["samples"]:
        if s.get("ok"):
            d = s.get("relay", {})
            drops.setdefault(s["tool"], []).append(
                int(d.get("dropped_queue", 0)) + int(d.get("dropped_loss", 0))
            )
    rows = []
    for tool, m in w["summary"].items():
        dl = drops.get(tool, [])
        rows.append(
            [
                tool,
                _report._sp(m.get("durable_mbps")).fmt(1),
                _report._sp(m.get("exit_mbps")).fmt(1),
                _report._sp(m.get("cpu_s_per_gib")).fmt(2),
                _report._sp(m.get("relay_cpu")).fmt(0, 100),
                f"{statistics.median(dl):.0f}" if dl else "–",
                notes.get(tool, ""),
            ]
        )
    lines += _report._table(
        [
            "client",
            "durable MB/s",
            "to exit MB/s",
            "CPU-s/GiB",
            "relay CPU %",
            "relay drops",
            "note",
        ],
        rows,
    )
    lines += ["", "Ratios bitsnb / reference, pair by pair (median [min–max]):", ""]
    rrows = [
        [
            ours,
            ref,
            _report._sp(m.get("durable_mbps")).fmt(2) + "×",
            _report._sp(m.get("exit_mbps")).fmt(2) + "×",
        ]
        for ours, refs in w.get("ratios", {}).items()
        for ref, m in refs.items()
    ]
    lines += _report._table(["bitsnb", "reference", "durable MB/s", "to exit MB/s"], rrows)
    for s in w["samples"]:
        if not s.get("ok"):
            lines.append(f"- FAILED {s['tool']} round {s.get('round', 0) + 1}: {s.get('error')}")
    lines.append("")
    return lines


def _small_md(m: dict[str, Any], rtt: str) -> list[str]:
    lines = [f"#### {m['title']} (measured RTT {rtt} ms)", ""]
    busy = _report.load_line(m.get("samples", []))
    if busy:
        lines += [f"_{busy}_", ""]
    notes = {x["name"]: x.get("note", "") for x in m.get("clients", [])}
    rows = [
        [
            tool,
            _report._sp(v.get("files_per_s")).fmt(0),
            _report._sp(v.get("files_per_s_exit")).fmt(0),
            _report._sp(v.get("cpu_ms_per_file")).fmt(2),
            notes.get(tool, ""),
        ]
        for tool, v in m["summary"].items()
    ]
    lines += _report._table(
        ["client", "files/s durable", "files/s to exit", "CPU-ms/file", "note"], rows
    )
    lines += [
        "",
        "Ratios bitsnb / reference, files/s durable, pair by pair (median [min–max]):",
        "",
    ]
    lines += _report._table(
        ["bitsnb", "reference", "files/s durable"],
        [
            [ours, ref, _report._sp(v.get("files_per_s")).fmt(2) + "×"]
            for ours, refs in m.get("ratios", {}).items()
            for ref, v in refs.items()
        ],
    )
    for s in m["samples"]:
        if not s.get("ok"):
            lines.append(f"- FAILED {s['tool']} round {s.get('round', 0) + 1}: {s.get('error')}")
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    """The WAN report as Markdown."""
    meta = results["meta"]
    lines = [
        f"# bitsnb WAN benchmark — {meta['started']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Mode: {'quick' if meta['quick'] else 'full'}, {meta['reps']} interleaved rounds;"
        f" machine: {meta['machine']}  ",
        f"Code: {meta.get('git', '?')}  ",
        "Two network namespaces joined by bench/_relay.py (a userspace delay line between TUN"
        " devices); nginx in the server namespace (tcp_wmem max 32 MiB, sendfile on), clients in"
        " the client namespace (tcp_rmem max 32 MiB). MB = 10^6 bytes. Durable: the tool exited"
        " and a following `sync` finished; for bitsnb, its runner's `complete()` returned."
        " Relay CPU: the relay's CPU seconds over the sample's durable time.",
        "",
    ]
    for w in results["profiles"].values():
        lines += _profile_md(w)
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def run_wan(cfg: WanConfig) -> dict[str, Any] | None:
    """Run the WAN profiles; the results (also written to ``cfg.out_dir``), None if skipped."""
    from ._suite import _git_state, _machine, _pick_workdir

    why = unavailable()
    if why:
        _say(f"WAN benchmark skipped: {why}")
        return None
    started = dt.datetime.now().astimezone()
    _say(
        f"bitsnb WAN benchmark ({'quick' if cfg.quick else 'full'} run, {cfg.reps} interleaved"
        f" rounds, {cfg.size / MiB:.0f} MiB, profiles: {', '.join(cfg.profiles)})"
    )
    tools = Toolbox(install=cfg.install)
    paths: dict[str, str] = {}
    for prog in ("nginx", "curl", "aria2c"):
        found = tools.get(prog)
        if found:
            paths[prog] = found
    if "nginx" not in paths:
        raise SystemExit("nginx is needed and could not be found or installed")
    need = 2 * cfg.size + 256 * MiB
    base = _pick_workdir(cfg, need)  # type: ignore[arg-type]  # it reads .workdir only
    if shutil.disk_usage(base).free < need:
        raise SystemExit(f"not enough disk space in {base}: need {need / GiB:.1f} GiB")
    scratch = Path(tempfile.mkdtemp(prefix="bitsnb-wan-", dir=base))
    results: dict[str, Any] = {
        "meta": {
            "started": started.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": cfg.command,
            "quick": cfg.quick,
            "reps": cfg.reps,
            "size": cfg.size,
            "machine": _machine(),
            "git": _git_state(),
            "tools": paths,
            "baseline": os.environ.get(BASELINE_ENV),
            "config": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in dataclasses.asdict(cfg).items()
            },
        },
        "profiles": {},
        "notes": [],
    }
    t0 = time.monotonic()
    try:
        www = scratch / "www"
        www.mkdir()
        big = FileSet.create(www, f"wan-{cfg.size // MiB}m", 1, cfg.size) if cfg.size else None
        small = (
            FileSet.create(www, f"wan-small{cfg.small_count}", cfg.small_count, 16 * 1024)
            if cfg.small_count
            else None
        )
        with open(www / CEILING_FILE, "wb") as fh:
            fh.truncate(4 * GiB)
        for prog in ("curl", "aria2c"):
            if prog not in paths:
                results["notes"].append(f"{prog} is not available: its runs are skipped")
        for name in cfg.profiles:
            _say(f"\n== WAN profile {name}: {PROFILES[name].describe()} ==")
            try:
                w = _profile_run(cfg, name, www, big, paths, scratch, small)
            except TestbedError as exc:
                w = {"title": name, "error": str(exc)}
                _say(f"  FAILED to set up: {exc}")
            results["profiles"][name] = w
            results["notes"] += w.get("notes", [])
        results["notes"] += tools.notes
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["meta"]["elapsed_s"] = time.monotonic() - t0
    md = markdown(results)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S") + ("-quick" if cfg.quick else "")
    for suffix, write in (
        ("json", lambda p: _report.write_json(p, results)),
        ("md", lambda p: p.write_text(md)),
    ):
        path = cfg.out_dir / f"wan-{stamp}.{suffix}"
        write(path)
        shutil.copyfile(path, cfg.out_dir / f"latest-wan{'-quick' if cfg.quick else ''}.{suffix}")
    _say("\n" + md)
    _say(
        f"results: {cfg.out_dir / f'wan-{stamp}.json'}\n         {cfg.out_dir / f'wan-{stamp}.md'}"
    )
    _say(f"total time {results['meta']['elapsed_s']:.0f} s")
    return results
