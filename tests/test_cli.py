"""The ``bitsnb`` command line against the loopback ``server`` fixture.

The main flows run ``python -m bitsnb`` as a subprocess (``sub``), inheriting the test's own
BITSNB_HOME from the autouse fixture, so every test has a store of its own and jobs really cross
process boundaries. Secondary checks call ``bitsnb._cli.main()`` in this process (``here``): the
same code and exit codes without paying for an interpreter start each time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import temp_files, visible_files

import bitsnb
from bitsnb import _cli
from bitsnb._errors import lookup_error
from bitsnb.testing import Fault, FileServer

Result = subprocess.CompletedProcess[str]


class Cli:
    """Runs bitsnb and checks exit codes: ``ok()`` wants 0, ``fails(code)`` a clean error."""

    def __init__(self, run: Callable[[list[str]], Result]) -> None:
        self.run = run

    def __call__(self, *args: object) -> Result:
        return self.run([str(a) for a in args])

    def ok(self, *args: object) -> str:
        proc = self(*args)
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        return proc.stdout

    def fails(self, code: int, *args: object) -> Result:
        proc = self(*args)
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "error: " in proc.stderr
        return proc

    def json(self, *args: object) -> Any:
        return json.loads(self.ok(*args, "--json"))


@pytest.fixture
def sub() -> Cli:
    """``python -m bitsnb ...`` in a child process, bounded by a 60 s timeout."""

    def run(args: list[str]) -> Result:
        return subprocess.run(
            [sys.executable, "-m", "bitsnb", *args], capture_output=True, text=True, timeout=60
        )

    return Cli(run)


@pytest.fixture
def here(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``bitsnb._cli.main(args)`` in this process, output captured."""

    def run(args: list[str]) -> Result:
        capsys.readouterr()
        code = _cli.main(args)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return Cli(run)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the first command --------------------------------------------------------------------
def test_demo_runs_verifies_and_prints_the_summary(sub: Cli) -> None:
    out = sub.ok("demo")
    assert "5 files, 20.0 MB, transferred in" in out
    assert out.rstrip().splitlines()[-2].endswith(" s, ACKNOWLEDGED")
    assert "TRANSIENT_ERROR" in out  # the dropped connection...
    assert "Range: bytes=" in out  # ...resumed where it stopped
    assert "suspend()" in out and "resume()" in out
    assert out.count(" ok  file-") == 5


def test_demo_keep_leaves_files_and_store(here: Cli, tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    out = here.ok("demo", "--files", "2", "--size", "100000", "--no-faults", "--keep", keep)
    assert "2 files, 200.0 kB" in out
    assert visible_files(keep / "downloads") == ["file-1.bin", "file-2.bin"]
    jobs = here.json("--store", keep / "jobs.db", "list", "--all")
    assert [j["state"] for j in jobs] == ["ACKNOWLEDGED"]


# -- transfer -------------------------------------------------------------------------------
def test_transfer_three_files_to_a_folder(sub: Cli, server: FileServer, dest: Path) -> None:
    urls = [server.add_random_file(f"f{i}.bin", 200_000 + i, seed=i) for i in range(3)]
    out = sub.ok("transfer", *urls, dest)
    assert "3 files, 600.0 kB, transferred in" in out and "ACKNOWLEDGED" in out
    assert visible_files(dest) == ["f0.bin", "f1.bin", "f2.bin"]
    assert temp_files(dest) == []
    for i in range(3):
        assert sha256(dest / f"f{i}.bin") == sha256(server.path(f"f{i}.bin"))


def test_transfer_one_url_to_a_file_with_json(sub: Cli, server: FileServer, dest: Path) -> None:
    url = server.add_random_file("data.bin", 123_457, seed=7)
    data = sub.json("transfer", url, dest / "renamed.bin", "--name", "one", "--header", "X-A: b")
    assert data["state"] == "ACKNOWLEDGED" and data["display_name"] == "one"
    assert data["files"][0]["local_name"] == str(dest / "renamed.bin")
    assert data["progress"]["bytes_transferred"] == 123_457
    assert (dest / "renamed.bin").read_bytes() == server.path("data.bin").read_bytes()
    assert server.requests[0].headers.get("X-A") == "b"


def test_transfer_of_a_404_exits_1_and_cancels_the_job(
    sub: Cli, here: Cli, server: FileServer, dest: Path
) -> None:
    proc = sub.fails(1, "transfer", server.url("missing.bin"), dest)
    assert "BG_E_HTTP_ERROR_404 (0x80190194)" in proc.stderr
    assert [j["state"] for j in here.json("list", "--all")] == ["CANCELLED"]
    assert os.listdir(dest) == []


def test_bad_url_exits_3_without_a_traceback(sub: Cli, here: Cli, dest: Path) -> None:
    proc = sub.fails(3, "transfer", "ftp://example.invalid/x", dest)
    assert "E_INVALIDARG (0x80070057)" in proc.stderr
    assert here.json("list", "--all") == []  # checked before any job was made
    job = here.ok("create", "j").strip()
    proc = sub.fails(3, "addfile", job, "not a url", dest / "x")
    assert proc.stderr.startswith("bitsnb: error: E_INVALIDARG (0x80070057): ")
    assert here.json("info", job)["files"] == []


def test_ctrl_c_exits_130_and_leaves_the_job_queued(
    here: Cli, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("slow.bin", 10_000)
    server.inject("slow.bin", Fault.stall(30))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitsnb", "transfer", url, dest],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(r.fault == "stall" for r in server.requests):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "bitsnb wait" in stderr
    [job] = here.json("list")
    assert job["state"] == "QUEUED"


# -- the job verbs ----------------------------------------------------------------------------
def test_create_addfile_resume_list_info_suspend_cancel(
    sub: Cli, here: Cli, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("a.bin", 50_000)
    created = sub.json("create", "flow", "--priority", "high")
    job = created["id"]
    assert created["state"] == "SUSPENDED" and created["priority"] == "HIGH"
    sub.ok("addfile", job, url, dest)  # a folder: the name comes from the URL
    assert "QUEUED" in sub.ok("resume", job)
    [listed] = here.json("list")
    assert listed["id"] == job and listed["state"] == "QUEUED"  # nothing ran it: no wait/monitor
    info = here.json("info", job)
    [f] = info["files"]
    assert (f["remote_name"], f["local_name"]) == (url, str(dest / "a.bin"))
    assert (f["bytes_transferred"], f["transferred"], f["completed"]) == (0, False, False)
    assert "suspend" in info["allowed_calls"] and "cancel" in info["allowed_calls"]
    text = here.ok("info", job)
    assert "QUEUED" in text and url in text and "no-progress timeout" in text
    assert "SUSPENDED" in here.ok("suspend", job)
    assert "CANCELLED" in sub.ok("cancel", job)
    assert here.json("list") == []
    assert here.json("info", job)["state"] == "CANCELLED"  # finished jobs stay readable
    assert "BG_E_INVALID_STATE" in here.fails(3, "resume", job).stderr
    assert server.requests == []


def test_wait_finishes_a_job_queued_by_an_earlier_process(
    sub: Cli, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("later.bin", 300_000, seed=3)
    job = sub.ok("create", "later").strip()
    sub.ok("addfile", job, url, dest / "later.bin")
    sub.ok("resume", job)
    assert server.requests == []  # queued only: no process has transferred it
    out = sub.ok("wait", job, "--timeout", "30", "--complete")
    assert "ACKNOWLEDGED" in out
    assert (dest / "later.bin").read_bytes() == server.path("later.bin").read_bytes()


def test_wait_timeout_exits_4_and_error_job_exits_1(
    sub: Cli, here: Cli, server: FileServer, dest: Path
) -> None:
    job = here.ok("create", "idle").strip()
    here.ok("addfile", job, server.add_random_file("x.bin", 10), dest / "x.bin")
    # SUSPENDED never finishes: wait says so at once (no timeout needed), --resume runs it
    proc = sub.fails(1, "wait", job)
    assert "SUSPENDED" in proc.stderr and "--resume" in proc.stderr
    assert here.json("info", job)["state"] == "SUSPENDED"
    slow = here.ok("create", "slow").strip()
    here.ok("addfile", slow, server.add_random_file("slow.bin", 10), dest / "slow.bin")
    server.inject("slow.bin", Fault.stall(30))
    proc = sub.fails(4, "wait", slow, "--resume", "--timeout", "0.5")
    assert "still" in proc.stderr
    bad = here.ok("create", "bad").strip()
    here.ok("addfile", bad, server.url("gone.bin"), dest / "gone.bin")
    here.ok("resume", bad)
    proc = sub.fails(1, "wait", bad, "--timeout", "30")
    assert "BG_E_HTTP_ERROR_404" in proc.stderr
    assert here.json("info", bad)["error"]["hex"] == "0x80190194"
    assert "BG_E_HTTP_ERROR_404 (0x80190194)" in here.ok("info", bad)


def test_jobs_by_prefix_display_name_and_ambiguity(sub: Cli, here: Cli) -> None:
    job = here.ok("create", "alpha").strip()
    assert sub.json("info", job[:6])["id"] == job
    assert here.json("info", "alpha")["id"] == job
    assert here.json("info", job.upper())["id"] == job
    here.ok("create", "twin")
    here.ok("create", "twin")
    assert "names 2 jobs" in sub.fails(3, "info", "twin").stderr
    assert "BG_E_NOT_FOUND (0x80200001)" in here.fails(3, "info", "nosuchjob").stderr
    here.fails(3, "cancel", uuid.uuid4())


def test_addfileset_lines_and_csv(
    here: Cli, server: FileServer, dest: Path, tmp_path: Path
) -> None:
    a = server.add_random_file("a.bin", 1000, seed=1)
    b = server.add_random_file("b c.bin", 2000, seed=2)
    lines = tmp_path / "files.txt"
    lines.write_text(f"# comment\n\n{a} {dest / 'a.bin'}\n{b}   {dest / 'b c.bin'}\n")
    table = tmp_path / "files.csv"
    table.write_text(f"url,path\n{a},{dest / 'a2.bin'}\n")
    job = here.ok("create", "set").strip()
    here.ok("addfileset", job, lines)
    here.ok("addfileset", job, table)
    names = [f["local_name"] for f in here.json("info", job)["files"]]
    assert names == [str(dest / n) for n in ("a.bin", "b c.bin", "a2.bin")]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{a}\n")
    here.fails(3, "addfileset", job, bad)
    here.fails(3, "addfileset", job, tmp_path / "absent.txt")
    here.ok("resume", job)
    here.ok("wait", job, "--timeout", "30", "--complete")
    assert (dest / "b c.bin").read_bytes() == server.path("b c.bin").read_bytes()


def test_set_changes_properties(here: Cli) -> None:
    job = here.ok("create", "props").strip()
    here.ok(
        "set",
        job,
        *("--priority", "low", "--retry-delay", "30", "--no-progress-timeout", "120"),
        *("--max-download-time", "3600", "--header", "X-Trace: 1", "--proxy", "proxy:3128"),
        *("--bypass", "<local>", "--display-name", "renamed", "--description", "about it"),
    )
    info = here.json("info", "renamed")
    assert info["priority"] == "LOW" and info["description"] == "about it"
    assert info["settings"] == {
        "minimum_retry_delay": 30.0,
        "no_progress_timeout": 120.0,
        "maximum_download_time": 3600.0,
        "custom_headers": "X-Trace: 1",
        "proxy_usage": "OVERRIDE",
        "proxy_list": "proxy:3128",
        "proxy_bypass_list": "<local>",
    }
    here.fails(2, "set", job)  # nothing to set
    here.fails(3, "set", job, "--header", "no colon here")


def test_list_csv_parses_and_filters_by_state(
    sub: Cli, here: Cli, server: FileServer, dest: Path
) -> None:
    one = here.ok("create", "one, with a comma").strip()
    two = here.ok("create", "two").strip()
    here.ok("addfile", two, server.add_random_file("t.bin", 10), dest / "t.bin")
    here.ok("resume", two)
    rows = list(csv.DictReader(io.StringIO(sub.ok("list", "--csv"))))
    assert [(r["id"], r["display_name"], r["state"]) for r in rows] == [
        (one, "one, with a comma", "SUSPENDED"),
        (two, "two", "QUEUED"),
    ]
    assert rows[1]["files_total"] == "1" and rows[1]["bytes_total"] == ""
    assert [j["id"] for j in here.json("list", "--state", "queued")] == [two]
    table = here.ok("list")
    assert one[:8] in table and "SUSPENDED" in table
    here.fails(2, "list", "--state", "sleeping")


def test_monitor_count_exits_0(sub: Cli, here: Cli) -> None:
    here.ok("create", "watched")
    out = sub.ok("monitor", "--count", "2", "--interval", "0.05")
    assert out.count("bitsnb monitor") == 2 and "watched" in out


def test_error_verb_explains_codes(sub: Cli, here: Cli) -> None:
    out = sub.ok("error", "0x80190194")
    row = lookup_error(0x80190194)
    assert out.splitlines() == [
        "BG_E_HTTP_ERROR_404 (0x80190194)",
        row.description,
        f"for upload jobs: {row.upload_description}",
    ]
    assert here.ok("error", "2149122452") == out  # decimal
    assert here.ok("error", "-2145844844") == out  # signed HRESULT
    assert here.json("error", "bg_e_not_found")["hex"] == "0x80200001"
    here.fails(2, "error", "nonsense")
    # one reading only when the type is given, or when uploads read the code the same way
    assert here.ok("error", "0x80190194", "--type", "upload").splitlines()[1:] == [
        row.upload_description
    ]
    assert len(here.ok("error", "BG_E_NOT_FOUND").splitlines()) == 2


@pytest.mark.parametrize(("status", "code"), [("404", 0x80190194), ("503", 0x801901F7)])
def test_error_verb_takes_a_bare_http_status(here: Cli, status: str, code: int) -> None:
    """`bitsnb error 404` is HTTP 404 (BG_E_HTTP_ERROR_404), not the HRESULT 0x00000194."""
    data = here.json("error", status)
    assert data["code"] == code and data["name"] == f"BG_E_HTTP_ERROR_{status}"
    assert "Unknown" not in data["description"]


def test_serve_runs_the_upload_server(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitsnb", "serve", "--root", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:")
        resp = httpx.request("BITS_POST", base + "/x.bin", headers={"BITS-Packet-Type": "Ping"})
        assert resp.status_code == 200
        assert resp.headers["BITS-Packet-Type"].lower() == "ack"
    finally:
        proc.terminate()
        proc.wait(20)


def test_usage_errors(sub: Cli, here: Cli) -> None:
    sub.fails(2)
    here.fails(2, "transfer")
    here.fails(2, "create", "x", "--priority", "urgent")
    here.fails(2, "list", "--bogus")
    out = sub.ok("--help")
    for line in ("0    success", "1    a job ended in ERROR", "3    a BITS call failed", "130"):
        assert line in out
    assert "has the store" in out


def test_store_option_before_or_after_the_verb(here: Cli, tmp_path: Path) -> None:
    store = tmp_path / "elsewhere.db"
    job = here.ok("create", "x", "--store", store).strip()
    assert [j["id"] for j in here.json("--store", store, "list")] == [job]
    assert here.json("list") == []


def test_console_script_and_module_entry_point() -> None:
    from bitsnb.__main__ import main

    assert main is _cli.main
    for code in ("0", "1", "2", "3", "4", "5", "130"):
        assert f"    {code} " in (_cli.__doc__ or "")
    script = Path(sys.executable).parent / "bitsnb"
    if not script.exists():
        pytest.skip("the bitsnb console script is not installed in this environment")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and bitsnb.__version__ in proc.stdout


# -- argument parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("0x80190194", 0x80190194),
        ("8020000f", 0x8020000F),
        ("2149122452", 0x80190194),
        ("-2145844844", 0x80190194),
        ("BG_E_HTTP_ERROR_503", 0x801901F7),
        ("0", 0),
        ("404", 0x80190194),
        ("599", 0x80190257),
        ("600", 600),
    ],
)
def test_parse_code(text: str, code: int) -> None:
    assert _cli.parse_code(text) == code


def test_destinations_from_urls(tmp_path: Path) -> None:
    pairs = _cli.plan_destinations(["http://h/a/b%20c.bin?q=1", "http://h/d.txt"], str(tmp_path))
    assert pairs == [
        ("http://h/a/b%20c.bin?q=1", str(tmp_path / "b c.bin")),
        ("http://h/d.txt", str(tmp_path / "d.txt")),
    ]
    with pytest.raises(bitsnb.BitsError) as info:
        _cli.plan_destinations(["http://h/"], str(tmp_path))
    assert info.value.code == 0x80070057
    new = tmp_path / "new"
    assert _cli.plan_destinations(["http://h/x"], f"{new}/") == [("http://h/x", str(new / "x"))]


# -- core behaviour found while building the CLI -----------------------------------------------
def test_resume_after_stop_during_final_fsync_does_not_refetch(
    manager: bitsnb.Manager,
    server: FileServer,
    dest: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = server.add_random_file("whole.bin", 300_000, seed=5)
    gate, entered = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if not gate.is_set():
            entered.set()
            gate.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    job = manager.create_job("fsync")
    job.add_file(url, dest / "whole.bin")
    job.resume()
    assert entered.wait(10)  # every byte is written; the engine waits for the fsync
    job.suspend()
    gate.set()
    job.resume()
    assert job.wait(timeout=10) is bitsnb.JobState.TRANSFERRED
    job.complete()
    assert (dest / "whole.bin").read_bytes() == server.path("whole.bin").read_bytes()
    # the resume asks for the last byte only, to confirm the file did not change
    assert server.bytes_sent("whole.bin") == 300_001
    assert server.requests[-1].range == "bytes=299999-"


def test_cleanup_removes_temporary_files_no_job_owns(here: Cli, dest: Path) -> None:
    orphan = dest / ".BIT0123456789AB.tmp"
    orphan.write_bytes(b"left behind")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    listed = here.ok("cleanup", "--dry-run", dest)
    assert orphan.name in listed and orphan.exists()
    here.ok("cleanup", dest)
    assert not orphan.exists()
