"""Smoke test of the benchmark suite's machinery (bench/): tiny sizes, no timing assertions.

Checks that the measuring pieces work — subprocess rusage and timeouts, the bitsnb runner
against the loopback FileServer, the statistics, targets and reports — and, when nginx is
installed, a tiny end-to-end run of the suite. It never installs anything.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from bitsnb.testing import FileServer

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not installed
    sys.path.insert(0, str(REPO))

from bench import _clients, _proc, _report, _stats, _targets, _workloads  # noqa: E402
from bench._nginx import Nginx  # noqa: E402
from bench._suite import Config, run_suite  # noqa: E402
from bench._tools import Toolbox  # noqa: E402


def test_run_reports_the_childs_own_cpu_and_memory() -> None:
    code = "b = bytearray(48 * 1024 * 1024); sum(range(200000))"
    r = _proc.run([sys.executable, "-c", code], timeout=60)
    assert r.ok and r.returncode == 0
    assert r.cpu > 0
    assert 40 * 2**20 <= r.maxrss_bytes < 200 * 2**20  # its 48 MiB, not ours
    assert r.t_exit >= r.t_spawn


def test_run_kills_on_timeout_and_reports_failure() -> None:
    r = _proc.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.3)
    assert r.timed_out and not r.ok
    assert "timed out" in r.describe_failure()


def test_run_watch_can_kill() -> None:
    calls: list[int] = []

    def watch(pid: int) -> bool:
        calls.append(pid)
        return len(calls) >= 3

    r = _proc.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=60, watch=watch)
    assert r.killed_by_watch and not r.ok


def test_stats_spread_and_pair_ratios() -> None:
    s = _stats.spread([3.0, None, 1.0, 2.0, float("nan")])
    assert (s.median, s.min, s.max, s.n) == (2.0, 1.0, 3.0, 3)
    assert _stats.spread([]).n == 0
    assert _stats.spread([]).fmt() == "–"
    assert _stats.pair_ratios([2.0, 4.0, None, 1.0], [1.0, 2.0, 3.0, 0.0]) == [2.0, 2.0]


def _bench(tmp_path: Path, paths: dict[str, str]) -> _workloads.Bench:
    return _workloads.Bench(
        nginx=Nginx("nginx", tmp_path / "www", tmp_path / "nginx"),
        scratch=tmp_path / "scratch",
        paths=paths,
        reps=1,
        quick=True,
        repo=REPO,
        say=lambda _text: None,
    )


def test_runner_and_references_against_the_file_server(tmp_path: Path) -> None:
    paths = {p: found for p in ("curl", "wget", "aria2c") if (found := shutil.which(p))}
    b = _bench(tmp_path, paths)
    with FileServer() as srv:
        urls = [srv.add_random_file(f"f{i}.bin", 20_000 + i, seed=i) for i in range(3)]
        dest = tmp_path / "dest"
        lists = _clients.write_lists(tmp_path / "lists", urls, dest)
        total = sum(20_000 + i for i in range(3))
        clients = b.available(_clients.many_file_clients(paths, 2, one_job=True))
        names = [c.name for c in clients]
        assert names[:2] == ["bitsnb 1 job", "bitsnb 2 jobs"]
        samples = []
        for r, client in enumerate(clients):
            s = _workloads.run_sample(
                b, client, urls, dest, lists, count=3, total=total, timeout=120
            )
            assert s["ok"], s.get("error")
            s["round"] = 0
            _workloads._derive_many(3)(s)
            samples.append(s)
            if client.is_bitsnb:
                assert s["runner"]["states"] == {"TRANSFERRED": s["runner"]["jobs"]}
                assert s["runner"]["imported"]["pandas"] is False
                assert s["runner"]["imported"]["ipywidgets"] is False
                assert set(s["stamps_s"]) >= {"t_created", "t_transferred", "t_complete"}
            del r
    summary, ratios = _workloads._summarize(samples, clients, _workloads.MANY_METRICS)
    assert summary["bitsnb 1 job"]["files_per_s"]["n"] == 1
    assert set(ratios) == {"bitsnb 1 job", "bitsnb 2 jobs"}
    results = {
        "meta": {
            "started": "now",
            "command": "test",
            "quick": True,
            "reps": 1,
            "machine": "test",
            "versions": {},
            "scratch_fs": "tmp",
        },
        "workloads": {
            "small": {
                "title": "3 files",
                "count": 3,
                "clients": [],
                "samples": samples,
                "summary": summary,
                "ratios": ratios,
            }
        },
        "notes": [],
    }
    targets = _targets.evaluate(results)
    assert {t.status for t in targets} <= {"PASS", "MISS", "n/a"}
    by_row = {t.row: t for t in targets}
    assert any(row.startswith("3×16 KiB, one job") for row in by_row)
    md = _report.markdown(results, targets)
    assert "## Targets" in md and "bitsnb 1 job" in md
    _report.write_json(tmp_path / "r.json", results)
    assert json.loads((tmp_path / "r.json").read_text())["workloads"]["small"]["count"] == 3
    problem = _report.write_chart(tmp_path / "r.png", results)
    assert problem is None or "matplotlib" in problem or "nothing" in problem


def test_find_rate_reads_json_or_text() -> None:
    assert _workloads.find_rate({"data": {"msgs_per_s": 12.5}}) == 12.5
    assert _workloads.find_rate({"stdout_tail": "queue panel 40 = 19.0 msg/s"}) == 19.0
    assert _workloads.find_rate({"stdout_tail": "nothing"}) is None


@pytest.mark.skipif(Toolbox(install=False, log=False).get("nginx") is None, reason="no nginx")
def test_tiny_suite_end_to_end(tmp_path: Path) -> None:
    cfg = Config(
        quick=True,
        reps=1,
        big_size=2 << 20,
        huge_size=0,
        queue_jobs=20,
        idle_seconds=0.2,
        workloads=("big", "queue"),
        workdir=tmp_path,
        out_dir=tmp_path / "results",
        install=False,
        chart=False,
        extras=False,
    )
    results = run_suite(cfg)
    big = results["workloads"]["big"]
    assert any(s["tool"] == "bitsnb" and s["ok"] for s in big["samples"])
    assert results["workloads"]["queue"]["enum_count"] == 20
    assert len(results["targets"]) >= 10
    assert list((tmp_path / "results").glob("bench-*.json"))
    assert list((tmp_path / "results").glob("bench-*.md"))
    assert not list(tmp_path.glob("bitsnb-bench-*"))  # scratch folder removed


def test_precompile_writes_bytecode_despite_dont_write(tmp_path: Path) -> None:
    """The driver byte-compiles each measured tree once, so samples only read .pyc files."""
    from bench._bytecode import precompile

    pkg = tmp_path / "bitsnb"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "mod.py").write_text("def f() -> int:\n    return 2\n")
    assert precompile([tmp_path, tmp_path / "absent"]) == [pkg]
    compiled = sorted(p.name.split(".")[0] for p in (pkg / "__pycache__").glob("*.pyc"))
    assert compiled == ["__init__", "mod"]
    (pkg / "bad.py").write_text("def (:\n")
    with pytest.raises(RuntimeError, match="byte-compiling"):
        precompile([tmp_path])
