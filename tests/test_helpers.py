"""bitsnb.helpers: download, download_many, explain, errors_frame, default_manager and run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import bitsnb
import bitsnb.notebook
from bitsnb import JobPriority, JobState, helpers
from bitsnb._codes import (
    BG_E_ERROR_INFORMATION_UNAVAILABLE,
    BG_E_NOT_FOUND,
    BG_S_PARTIAL_COMPLETE,
    E_INVALIDARG,
    E_NOTIMPL,
    ERROR_PATH_NOT_FOUND,
)
from bitsnb.helpers import Explanation, download, download_many, explain, run
from bitsnb.testing import Fault, FileServer

TIMEOUT = 20.0
ROOT = Path(__file__).resolve().parent.parent


def queue_ids(mgr: bitsnb.Manager) -> list[str]:
    return [str(j.id) for j in mgr.enum_jobs()]


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll *predicate* until true; AssertionError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def visible_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith(".BIT"))


def temp_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(".BIT"))


# -- download -----------------------------------------------------------------------------------


def test_download_single_url_to_folder(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("data/report 2024.bin", 30_000, seed=1)
    job = download(url, dest, manager=manager, complete=False)  # BITS's two steps
    assert isinstance(job, bitsnb.Job)
    assert job.display_name == "report 2024.bin"
    assert job.priority is JobPriority.NORMAL
    assert [f.local_name for f in job.files] == [str(dest / "report 2024.bin")]
    assert job.wait(TIMEOUT) is JobState.TRANSFERRED
    assert job.complete() == 0
    assert (dest / "report 2024.bin").read_bytes() == server.path(
        "data/report 2024.bin"
    ).read_bytes()


def test_download_single_url_to_file_path(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    url = server.add_file("x.csv", b"a,b\n1,2\n")
    job = download(
        url, dest / "renamed.csv", name="my csv", priority=JobPriority.HIGH, manager=manager,
        wait=True,
    )  # fmt: skip
    assert job.state is JobState.ACKNOWLEDGED
    assert job.display_name == "my csv" and job.priority is JobPriority.HIGH
    assert visible_files(dest) == ["renamed.csv"]
    assert (dest / "renamed.csv").read_bytes() == b"a,b\n1,2\n"


def test_download_relative_destination(
    manager: bitsnb.Manager, server: FileServer, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(dest)
    job = download(server.add_file("r.txt", b"r"), ".", manager=manager, wait=True)
    assert job.files[0].local_name == str(dest / "r.txt")
    assert (dest / "r.txt").read_bytes() == b"r"


def test_download_list_of_urls_wait(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    urls = [server.add_random_file(f"d/{n}.bin", 5000 + n, seed=n) for n in range(3)]
    job = download(urls, dest, manager=manager, wait=True)
    assert job.state is JobState.ACKNOWLEDGED  # wait=True returns when the files are there
    assert job.display_name == "0.bin and 2 more"
    assert job.progress.files_total == 3 and job.progress.bytes_transferred == 15_003
    assert visible_files(dest) == ["0.bin", "1.bin", "2.bin"] and temp_files(dest) == []
    assert helpers.paths(job) == [dest / "0.bin", dest / "1.bin", dest / "2.bin"]
    assert all(p.exists() for p in helpers.paths(job))


def test_download_completes_in_the_background_by_default(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """The one-liner returns at once; the files appear under their names without a Complete."""
    url = server.add_random_file("bg.csv", 20_000, seed=3)
    server.inject("bg.csv", Fault.stall(0.2))
    job = download(url, f"{dest / 'new' / 'folder'}/", manager=manager)  # folder created
    assert job.state is not JobState.ACKNOWLEDGED  # returned before the transfer
    wait_until(lambda: job.state is JobState.ACKNOWLEDGED)
    assert helpers.paths(job) == [dest / "new" / "folder" / "bg.csv"]
    assert helpers.paths(job)[0].read_bytes() == server.path("bg.csv").read_bytes()
    assert temp_files(dest / "new" / "folder") == []


def test_wait_raises_when_the_job_ends_in_error(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """As pooch raises: a 404 with wait=True is a BitsError naming the job; the job stays."""
    with pytest.raises(bitsnb.BitsError) as info:
        download(f"{server.base_url}/missing.csv", dest, manager=manager, wait=True)
    assert info.value.code == 0x80190194
    assert "missing.csv" in str(info.value) and "job.resume()" in str(info.value)
    (job,) = manager.enum_jobs()
    assert job.state is JobState.ERROR


def test_download_many_wait_raises_after_waiting_for_all(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    ok = server.add_file("fine.txt", b"fine")
    with pytest.raises(bitsnb.BitsError) as info:
        download_many(
            [f"{server.base_url}/gone.txt", ok], dest, per_job=1, manager=manager, wait=True
        )
    assert info.value.code == 0x80190194
    states = sorted(j.state.name for j in manager.enum_jobs(include_finished=True))
    assert states == ["ACKNOWLEDGED", "ERROR"]
    assert (dest / "fine.txt").read_bytes() == b"fine"


@pytest.mark.parametrize(
    "paths",
    [
        ["a/same.bin", "b/same.bin"],  # duplicate names
        ["ok.bin", "folder/"],  # empty last segment
        ["ok.bin", "a%2Fb"],  # '/' after unquoting
        ["ok.bin", "x/%2E%2E"],  # '..' after unquoting
        ["ok.bin", "x/."],  # '.'
        ["ok.bin", "bad%00name"],  # NUL
        ["ok.bin", "x/%20"],  # blank
    ],
)
def test_download_refuses_unsafe_or_duplicate_names(
    manager: bitsnb.Manager, server: FileServer, dest: Path, paths: list[str]
) -> None:
    existing = manager.create_job("already there")
    before = queue_ids(manager)
    urls = [f"{server.base_url}/{p}" for p in paths]
    with pytest.raises(bitsnb.BitsError) as info:
        download(urls, dest, manager=manager)
    assert info.value.code == E_INVALIDARG
    with pytest.raises(bitsnb.BitsError) as info:
        download_many(urls, dest, per_job=1, manager=manager)
    assert info.value.code == E_INVALIDARG
    assert queue_ids(manager) == before == [str(existing.id)]
    assert os.listdir(dest) == []
    assert server.requests == []


def test_download_refusals_leave_queue_unchanged(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    url = server.add_file("a.bin", b"a")
    cases: list[tuple[object, object, int]] = [
        ([url, "ftp://host/b.bin"], dest, E_INVALIDARG),  # bad scheme, second URL
        ([url, url.replace("a.bin", "b.bin")], Path(__file__), ERROR_PATH_NOT_FOUND),  # a file
        ([], dest, E_INVALIDARG),
        (42, dest, E_INVALIDARG),
    ]
    for urls, target, code in cases:
        with pytest.raises(bitsnb.BitsError) as info:
            download(urls, target, manager=manager)  # type: ignore[arg-type]
        assert info.value.code == code, (urls, target)
    with pytest.raises(bitsnb.BitsError) as info:
        download(url, dest, priority=9, manager=manager)  # type: ignore[arg-type]
    assert info.value.code == E_NOTIMPL
    assert queue_ids(manager) == []
    assert os.listdir(dest) == []


def test_download_uses_default_manager(server: FileServer, dest: Path) -> None:
    try:
        job = download(server.add_file("d.txt", b"d"), dest, wait=True, timeout=TIMEOUT)
        mgr = helpers.default_manager()
        assert job.manager is mgr
        assert Path(mgr.store_path) == Path(os.environ["BITSNB_HOME"]) / "jobs.db"
        assert (dest / "d.txt").read_bytes() == b"d"
    finally:
        helpers.default_manager().close()


def test_default_manager_is_shared_and_thread_safe() -> None:
    seen: list[bitsnb.Manager] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait(5)
        seen.append(helpers.default_manager())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        assert len(seen) == 8 and all(m is seen[0] for m in seen)
        first = seen[0]
        first.close()
        second = helpers.default_manager()  # a closed default is replaced
        assert second is not first and not second.closed
    finally:
        helpers.default_manager().close()


def test_wait_timeout_raises_and_job_continues(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("slow.bin", 1000, seed=9)
    server.inject("slow.bin", Fault.stall(1.0))
    with pytest.raises(TimeoutError):
        download(url, dest, manager=manager, wait=True, timeout=0.1)
    (job,) = manager.enum_jobs()
    assert job.wait(TIMEOUT) in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED)
    wait_until(lambda: job.state is JobState.ACKNOWLEDGED)


# -- download_many ----------------------------------------------------------------------------


def test_download_many_series_one_job(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    frame = pd.DataFrame({"url": [server.add_file(f"s{i}.txt", b"x" * i) for i in range(4)]})
    jobs = download_many(frame["url"], dest, manager=manager, name="series", wait=True)
    assert len(jobs) == 1 and jobs[0].display_name == "series"
    assert jobs[0].state is JobState.ACKNOWLEDGED
    assert visible_files(dest) == ["s0.txt", "s1.txt", "s2.txt", "s3.txt"]
    assert temp_files(dest) == []


def test_download_many_per_job(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    urls = (server.add_file(f"p{i}.txt", b"%d" % i) for i in range(5))  # any iterable
    jobs = download_many(
        urls, dest, per_job=2, priority=JobPriority.LOW, manager=manager, complete=False
    )
    assert [j.progress.files_total for j in jobs] == [2, 2, 1]
    assert [j.display_name for j in jobs] == [
        "p0.txt and 4 more (1/3)",
        "p0.txt and 4 more (2/3)",
        "p0.txt and 4 more (3/3)",
    ]
    assert all(j.priority is JobPriority.LOW for j in jobs)
    assert queue_ids(manager) == [str(j.id) for j in jobs]
    for job in jobs:
        assert job.wait(TIMEOUT) is JobState.TRANSFERRED
        job.complete()
    assert visible_files(dest) == [f"p{i}.txt" for i in range(5)]


def test_download_many_one_column_frame_and_refusals(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    urls = [server.add_file(f"f{i}.txt", b"f") for i in range(2)]
    jobs = download_many(pd.DataFrame({"u": urls}), dest, manager=manager, wait=True)
    assert jobs[0].state is JobState.ACKNOWLEDGED
    before = queue_ids(manager)
    with pytest.raises(bitsnb.BitsError) as info:
        download_many(pd.DataFrame({"u": urls, "v": urls}), dest, manager=manager)
    assert info.value.code == E_INVALIDARG
    with pytest.raises(bitsnb.BitsError) as info:
        download_many(pd.Series([urls[0], None]), dest, manager=manager)
    assert info.value.code == E_INVALIDARG
    with pytest.raises(bitsnb.BitsError):
        download_many(urls, dest, per_job=0, manager=manager)
    assert queue_ids(manager) == before


# -- explain ------------------------------------------------------------------------------------


def test_explain_int_and_text() -> None:
    e = explain(0x80190194)
    assert isinstance(e, Explanation)
    assert (e.name, e.code, e.hex, e.known) == (
        "BG_E_HTTP_ERROR_404",
        0x80190194,
        "0x80190194",
        True,
    )
    assert e.description and e.context is None
    assert explain(-0x7FDFFFFF).hex == "0x80200001"  # signed HRESULTs wrap
    assert explain("0x80200001").name == "BG_E_NOT_FOUND"
    assert explain("bg_e_not_found").code == BG_E_NOT_FOUND
    assert "BG_E_HTTP_ERROR_404" in str(e) and "0x80190194" in str(e)
    assert repr(e).startswith("<Explanation BG_E_HTTP_ERROR_404 (0x80190194)")
    html = e._repr_html_()
    assert html.startswith("<table") and "<td style='text-align:left'>0x80190194</td>" in html


def test_explain_unknown_code() -> None:
    e = explain(0x12345678)
    assert e.known is False and e.hex == "0x12345678"
    assert "0x12345678" in e.description
    with pytest.raises(bitsnb.BitsError) as info:
        explain("not a code")
    assert info.value.code == E_INVALIDARG
    with pytest.raises(bitsnb.BitsError):
        explain(1.5)  # type: ignore[arg-type]


def test_explain_bits_error(manager: bitsnb.Manager) -> None:
    with pytest.raises(bitsnb.BitsError) as info:
        manager.get_job("00000000-0000-0000-0000-000000000000")
    e = explain(info.value)
    assert e.name == "BG_E_NOT_FOUND" and e.code == BG_E_NOT_FOUND
    assert e.context is bitsnb.ErrorContext.GENERAL_QUEUE_MANAGER
    assert e.message and "no job" in e.message
    assert "message" in str(e)


def test_explain_job_and_error_info(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    job = download(f"{server.base_url}/nope.bin", dest, manager=manager)
    assert job.wait(TIMEOUT) is JobState.ERROR
    e = explain(job)
    assert e.hex == "0x80190194" and e.name == "BG_E_HTTP_ERROR_404"
    assert e.context is bitsnb.ErrorContext.REMOTE_FILE
    assert e.context_description and e.file == f"{server.base_url}/nope.bin"
    assert explain(job.error) == e  # type: ignore[arg-type]
    assert explain(job.async_job) == e
    assert "REMOTE_FILE" in e._repr_html_()
    job.cancel()
    ok = manager.create_job("fine")
    none = explain(ok)  # no error yet: said, not raised (a Run All goes on)
    assert none.name == "no error" and "SUSPENDED" in none.description
    with pytest.raises(bitsnb.BitsError) as info:
        ok.get_error()  # the BITS call still answers as BITS does
    assert info.value.code == BG_E_ERROR_INFORMATION_UNAVAILABLE


def test_explain_a_bare_http_status() -> None:
    for value in (404, "404"):
        e = explain(value)
        assert e.name == "BG_E_HTTP_ERROR_404" and e.hex == "0x80190194" and e.known
    assert explain(503).name == "BG_E_HTTP_ERROR_503"


def test_explain_html_is_escaped() -> None:
    err = bitsnb.BitsError(0x80070057, "<script>alert(1)</script>")
    assert "<script>" not in explain(err)._repr_html_()


# -- run ------------------------------------------------------------------------------------------


async def _add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


def test_run_without_a_loop() -> None:
    assert run(_add(1, 2)) == 3
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_run_with_async_manager_without_a_loop(
    store: Path, server: FileServer, dest: Path, policy: bitsnb.Policy
) -> None:
    url = server.add_file("am.txt", b"async")

    async def go() -> JobState:
        async with bitsnb.AsyncManager(store, policy=policy) as amgr:
            job = await amgr.create_job("async")
            await job.add_file(url, dest / "am.txt")
            await job.resume()
            state = await job.wait(TIMEOUT)
            await job.complete()
            return state

    assert run(go()) is JobState.TRANSFERRED
    assert (dest / "am.txt").read_bytes() == b"async"


NESTED = r"""
import asyncio, sys
import bitsnb
from bitsnb.helpers import run
from bitsnb.testing import FileServer

async def add(a, b):
    await asyncio.sleep(0.01)
    return a + b

def sync_code(job):
    # plain sync code called from a coroutine, as a notebook cell is: the loop is running
    return run(job.wait(20))

async def main(store, dest):
    loop = asyncio.get_running_loop()
    assert "nest_asyncio2" not in sys.modules  # nothing was patched at import
    ticks = []
    async def ticker():
        while True:
            ticks.append(1)
            await asyncio.sleep(0.002)
    task = asyncio.create_task(ticker())
    assert run(add(1, 2)) == 3  # re-entrant run_until_complete on the running loop
    assert asyncio.get_running_loop() is loop
    assert ticks, "tasks already on the loop ran during the nested run"
    task.cancel()
    with FileServer() as srv:
        url = srv.add_random_file("n.bin", 200_000, seed=5)
        amgr = bitsnb.AsyncManager(store, policy=bitsnb.Policy(poll_interval=0.05))
        run(amgr.start())  # the manager lives on this (running) loop
        job = run(amgr.create_job("nested"))
        run(job.add_file(url, dest + "/n.bin"))
        run(job.resume())
        state = sync_code(job)  # transfers run while the nested loop waits
        assert state is bitsnb.JobState.TRANSFERRED, state
        run(job.complete())
        await amgr.aclose()
    print("NESTED-OK", run(add(2, 3)))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_run_inside_a_running_loop(tmp_path: Path, dest: Path) -> None:
    """nest_asyncio2 patches asyncio for the whole process, so this runs in a child process."""
    proc = subprocess.run(
        [sys.executable, "-c", NESTED, str(tmp_path / "nested.db"), str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "NESTED-OK 5" in proc.stdout
    assert (dest / "n.bin").stat().st_size == 200_000


def test_helpers_import_is_light() -> None:
    """The core imports helpers eagerly: no pandas, IPython, ipywidgets or nest_asyncio2."""
    code = (
        "import sys, bitsnb.helpers; "
        "print(sorted(m for m in ('pandas', 'IPython', 'ipywidgets', 'nest_asyncio2') "
        "if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_display_is_skipped_outside_a_kernel(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    assert bitsnb.notebook.in_kernel() is False
    job = download(server.add_file("nd.txt", b"n"), dest, manager=manager, display=None)
    assert job.wait(TIMEOUT) is JobState.TRANSFERRED


def test_partial_complete_keeps_the_files_before_the_failure(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Regression: a fatal error on file 1 cancelled file 0 still in flight (files_in_flight
    overlap), so complete() dropped a file that BITS, transferring in order, delivers."""
    ok = server.add_file("ok.txt", b"fine\n")
    server.inject("ok.txt", Fault.stall(0.3))  # file 0 is still in flight when file 1 fails
    job = download([ok, f"{server.base_url}/gone.txt"], dest, manager=manager)
    assert job.wait(TIMEOUT) is JobState.ERROR
    assert job.error is not None and job.error.code == 0x80190194
    assert [f.transferred for f in job.files] == [True, False]
    assert job.complete() == BG_S_PARTIAL_COMPLETE
    assert visible_files(dest) == ["ok.txt"]


def test_jobs_frame_helper(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    job = download(server.add_file("j.txt", b"j"), dest, manager=manager, wait=True, complete=False)
    frame = helpers.jobs_frame(manager)
    assert list(frame.index) == [str(job.id)]
    assert frame.loc[str(job.id), "state"] == "TRANSFERRED"
    job.complete()
    assert len(helpers.jobs_frame(manager)) == 0
    assert len(helpers.jobs_frame(manager, include_finished=True)) == 1


def test_display_forced_outside_a_kernel_prints_a_line(
    manager: bitsnb.Manager, server: FileServer, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("bitsnb.notebook")
    urls = [server.add_file(f"show{i}.txt", b"s") for i in range(2)]
    download(urls[0], dest, name="shown", manager=manager, display=True)
    download_many(urls[1:], dest, name="also shown", manager=manager, display=True, per_job=1)
    out = capsys.readouterr().out
    assert "shown" in out and "also shown" in out


def test_preempted_job_runs_again(store: Path, server: FileServer, dest: Path) -> None:
    """Regression: a job pre-empted at a file boundary was left QUEUED in no queue (its
    re-enqueue ran while it was still listed as running), so it never ran again."""
    policy = bitsnb.Policy(
        max_active_jobs=1, files_in_flight=1, poll_interval=0.05, min_retry_delay_floor=0.05
    )
    urls = [server.add_file(f"low{i}.txt", b"low") for i in range(3)]
    server.inject("low0.txt", Fault.stall(0.5))  # the LOW job is busy when FOREGROUND arrives
    with bitsnb.Manager(store, policy=policy) as mgr:
        states: list[tuple[object, str]] = []
        mgr.subscribe(
            lambda e: states.append((e.job_id, e.state.name)) if e.kind == "state" else None
        )
        low = download(urls, dest, name="low", priority=JobPriority.LOW, manager=mgr)
        wait_until(lambda: low.state is JobState.CONNECTING)
        (dest / "fg").mkdir()
        fg = download(
            server.add_file("fg.txt", b"fg"), dest / "fg", priority=JobPriority.HIGH,
            manager=mgr,
        )  # fmt: skip
        assert fg.wait(TIMEOUT) is JobState.TRANSFERRED
        assert low.wait(TIMEOUT) is JobState.TRANSFERRED
    low_states = [s for who, s in states if who == low.id]
    assert low_states.count("QUEUED") == 2, low_states  # it was pre-empted once
    assert states.index((fg.id, "TRANSFERRED")) < states.index((low.id, "TRANSFERRED"))


def test_run_refuses_a_managers_loop_thread(manager: bitsnb.Manager) -> None:
    async def call_run_there() -> str:
        try:
            run(_add(1, 1))
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    fut = asyncio.run_coroutine_threadsafe(call_run_there(), manager.loop)
    assert "own loop thread" in fut.result(TIMEOUT)


def test_wait_in_a_script_prints_a_line_per_change(
    manager: bitsnb.Manager, server: FileServer, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a terminal: the CLI's renderer writes plain lines (a live bar on a terminal)."""
    url = server.add_random_file("s.bin", 50_000, seed=5)
    download(url, dest, name="scripted", manager=manager, wait=True)
    out = capsys.readouterr().out.splitlines()
    assert any("scripted" in ln and "TRANSFERRED" in ln for ln in out), out
    assert out[-1] == "scripted: 1 file in place"
    download(url.replace("s.bin", "s.bin?x"), dest / "quiet", manager=manager, wait=True,
             display=False)  # fmt: skip
    assert capsys.readouterr().out == ""


def test_cleanup_removes_orphaned_temporary_files_only(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A temporary file no live job owns goes; a suspended job's partial data stays."""
    url = server.add_random_file("part.bin", 400_000, seed=7)
    server.inject("part.bin", Fault.stall_after(100_000, 30.0))
    job = download(url, dest, manager=manager)
    wait_until(lambda: job.progress.bytes_transferred > 0)
    job.suspend()
    claimed = Path(job.files[0].temporary_name)
    assert claimed.exists()
    orphan = dest / ".BIT0123456789AB.tmp"  # left by a job whose store is gone
    orphan.write_bytes(b"x" * 1000)
    fresh = dest / ".BITFFFFFFFFFFFF.tmp"  # just written: may belong to a job being set up
    fresh.write_bytes(b"y")
    old = time.time() - 3600
    for p in (orphan, claimed):
        os.utime(p, (old, old))

    listed = helpers.cleanup(manager=manager, dry_run=True)
    assert listed.paths == [orphan] and listed.bytes == 1000 and not listed.removed
    assert "would remove 1 temporary file (1.0 kB)" in str(listed)
    assert orphan.exists()
    report = helpers.cleanup(manager=manager)
    assert report.paths == [orphan] and report.removed
    assert not orphan.exists() and claimed.exists() and fresh.exists()
    job.cancel()  # cancelled: BITS deletes its temporary files itself
    assert not claimed.exists()
    assert len(helpers.cleanup([dest], manager=manager)) == 0
