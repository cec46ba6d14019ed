"""BITS fidelity in the core (issue 18): proxies, fresh enumeration, notification fallbacks,
valid calls, FileTransferred order, and what the store keeps or refuses."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

import bitsnb
from bitsnb import BitsError, JobState, ProxyUsage
from bitsnb.testing import FileServer

BG_E_INVALID_PROXY_INFO = 0x8020003F
E_INVALIDARG = 0x80070057
E_FAIL = 0x80004005


def settings_json(store: Path, job_id: object) -> dict[str, object]:
    db = sqlite3.connect(store)
    try:
        row = db.execute("SELECT settings FROM jobs WHERE id=?", (str(job_id),)).fetchone()
    finally:
        db.close()
    return dict(json.loads(row[0]))


@pytest.mark.parametrize(
    "proxy",
    ["::::bad", "http://user:PASS@proxy.invalid:8080", "ftp://proxy.invalid:21", "http://:80"],
)
def test_a_bad_proxy_is_refused_at_the_call(
    manager: bitsnb.Manager, store: Path, proxy: str
) -> None:
    job = manager.create_job("proxy")
    with pytest.raises(BitsError) as info:
        job.set_proxy_settings(ProxyUsage.OVERRIDE, proxy)
    assert info.value.code == BG_E_INVALID_PROXY_INFO
    assert "PASS" not in str(info.value)
    assert job.proxy_settings == (ProxyUsage.PRECONFIG, None, None)
    assert settings_json(store, job.id)["proxy_list"] is None


def test_a_good_proxy_list_is_kept(manager: bitsnb.Manager) -> None:
    job = manager.create_job("proxy")
    job.set_proxy_settings(ProxyUsage.OVERRIDE, "http=proxy.invalid:8080 https://p2.invalid")
    assert job.proxy_settings[1] == "http=proxy.invalid:8080 https://p2.invalid"


def test_secret_headers_stay_in_memory(manager: bitsnb.Manager, store: Path) -> None:
    job = manager.create_job("headers")
    job.set_custom_headers(
        "X-Api-Key: k1\r\nX-Amz-Security-Token: t1\r\nProxy-Authorization: Basic p1\r\nX-Plain: v"
    )
    text = json.dumps(settings_json(store, job.id))
    assert "X-Plain" in text
    for secret in ("k1", "t1", "p1"):
        assert secret not in text


def test_enum_jobs_sees_another_processs_new_job_at_once(store: Path) -> None:
    slow = bitsnb.Policy(poll_interval=60.0)  # housekeeping would not look for a minute
    with (
        bitsnb.Manager(store=store, policy=slow) as one,
        bitsnb.Manager(store=store, policy=slow) as two,
    ):
        made = two.create_job("from the other manager")
        assert made.id in {j.id for j in one.enum_jobs()}
        assert one.get_job(made.id).display_name == "from the other manager"


def test_suspend_is_a_valid_call_on_a_suspended_job(manager: bitsnb.Manager) -> None:
    job = manager.create_job("suspended")
    assert job.state is JobState.SUSPENDED
    assert "suspend" in job.allowed_calls
    job.suspend()  # a no-op, as in BITS
    assert job.state is JobState.SUSPENDED


def _counting_script(folder: Path, fail_first: int) -> Path:
    """A notify program that appends a line per run and fails its first *fail_first* runs."""
    log = folder / "runs.log"
    script = folder / "notify.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo run >> "{log}"\n'
        f'n=$(wc -l < "{log}")\n'
        f'[ "$n" -gt {fail_first} ] || exit 3\n'
    )
    script.chmod(0o755)
    return script


def _runs(folder: Path) -> int:
    log = folder / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _wait(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[str] = []
        self.files: list[int] = []

    def job_transferred(self, job: bitsnb.Job) -> None:
        self.events.append("transferred")
        if self.fail:
            raise RuntimeError("callback failed")

    def file_transferred(self, job: bitsnb.Job, file: bitsnb.FileInfo) -> None:
        self.files.append(file.index)


def _transfer(manager: bitsnb.Manager, server: FileServer, dest: Path, target: object) -> None:
    job = manager.create_job("notify")
    job.add_file(server.add_file("n.bin", b"n" * 100), dest / "n.bin")
    job.set_notify_cmd_line(str(dest.parent / "notify.sh"), "notify.sh")
    if target is not None:
        job.set_notify_interface(target)
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED


def test_the_command_line_does_not_run_when_a_callback_handles_the_event(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    _counting_script(dest.parent, fail_first=0)
    target = Recorder()
    _transfer(manager, server, dest, target)
    assert _wait(lambda: target.events, 10)
    manager.close()  # spawned commands would have started by now; closing settles them
    assert _runs(dest.parent) == 0


def test_the_command_line_runs_when_the_callback_raises(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    _counting_script(dest.parent, fail_first=0)
    _transfer(manager, server, dest, Recorder(fail=True))
    assert _wait(lambda: _runs(dest.parent) == 1, 10)


def test_a_failing_command_line_runs_again_after_the_retry_delay(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    _counting_script(dest.parent, fail_first=2)
    job = manager.create_job("notify")
    job.minimum_retry_delay = 0.05
    job.add_file(server.add_file("n.bin", b"n" * 100), dest / "n.bin")
    job.set_notify_cmd_line(str(dest.parent / "notify.sh"), "notify.sh")
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    assert _wait(lambda: _runs(dest.parent) == 3, 10)  # failed, failed, succeeded
    time.sleep(0.3)  # (a bounded look that nothing more runs after a success)
    assert _runs(dest.parent) == 3


def test_file_transferred_follows_the_job_order_with_one_file_in_flight(
    store: Path, server: FileServer, dest: Path
) -> None:
    policy = bitsnb.Policy(files_in_flight=1, min_retry_delay_floor=0.05, poll_interval=0.05)
    sizes = [300_000, 10, 200_000, 5, 100_000, 1]  # big then small: overlap would reorder
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("order")
        job.add_file_set(
            [
                (server.add_random_file(f"f{i}.bin", n), dest / f"f{i}.bin")
                for i, n in enumerate(sizes)
            ]
        )
        target = Recorder()
        job.set_notify_interface(target)
        job.notify_flags = bitsnb.NotifyFlags.FILE_TRANSFERRED | bitsnb.NotifyFlags.JOB_TRANSFERRED
        job.resume()
        assert job.wait(timeout=30) is JobState.TRANSFERRED
        assert _wait(lambda: len(target.files) == len(sizes), 10)
    assert target.files == list(range(len(sizes)))


def test_the_store_is_for_its_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "bitsnb"
    store = home / "jobs.db"
    with bitsnb.Manager(store=store) as mgr:
        mgr.create_job("private")
        assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
        for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):
            path = home / name
            assert path.exists(), name
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, name


def test_an_existing_store_is_tightened(tmp_path: Path) -> None:
    store = tmp_path / "jobs.db"
    with bitsnb.Manager(store=store) as mgr:
        mgr.create_job("x")
    os.chmod(store, 0o644)
    with bitsnb.Manager(store=store):
        pass
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600


@pytest.mark.parametrize("name", ["bad\udce9", "ok"])
def test_undecodable_names_are_refused_and_nothing_changes(
    manager: bitsnb.Manager, server: FileServer, dest: Path, name: str
) -> None:
    if name == "ok":
        job = manager.create_job("ok")
        with pytest.raises(BitsError) as info:
            job.add_file(server.add_file("u.bin", b"u"), str(dest) + "/\udcff.bin")
        assert info.value.code == E_INVALIDARG
        assert job.files == []
        return
    before = len(manager.enum_jobs())
    with pytest.raises(BitsError) as info:
        manager.create_job(name)
    assert info.value.code == E_INVALIDARG
    assert len(manager.enum_jobs()) == before


def test_destinations_that_are_not_regular_files_are_refused(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    fifo = dest / "pipe"
    os.mkfifo(fifo)
    job = manager.create_job("fifo")
    url = server.add_file("d.bin", b"d")
    for target in (fifo, Path("/dev/null")):
        with pytest.raises(BitsError) as info:
            job.add_file(url, target)
        assert info.value.code == E_INVALIDARG
    assert job.files == []


def test_one_damaged_row_leaves_the_rest_of_the_queue_working(store: Path) -> None:
    with bitsnb.Manager(store=store) as mgr:
        good = mgr.create_job("good")
        bad_state = mgr.create_job("bad state")
        bad_json = mgr.create_job("bad settings")
        ids = good.id, bad_state.id, bad_json.id
    db = sqlite3.connect(store, isolation_level=None)
    db.execute("UPDATE jobs SET state=42 WHERE id=?", (str(ids[1]),))
    db.execute("UPDATE jobs SET settings='{not json' WHERE id=?", (str(ids[2]),))
    db.close()
    with bitsnb.Manager(store=store) as mgr:
        assert [j.display_name for j in mgr.enum_jobs()] == ["good"]
        for damaged in ids[1:]:
            with pytest.raises(BitsError) as info:
                mgr.get_job(damaged)
            assert info.value.code == E_FAIL
            assert str(damaged) in str(info.value) and "damaged" in str(info.value)
        mgr.get_job(ids[0]).display_name = "still works"
        assert set(mgr.damaged_jobs()) == set(ids[1:])
    import subprocess
    import sys

    listed = subprocess.run(
        [sys.executable, "-m", "bitsnb", "--store", str(store), "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "still works" in listed.stdout
    for damaged in ids[1:]:
        assert f"job {damaged} is damaged in the store" in listed.stderr


def test_a_store_that_lost_its_files_table_opens(store: Path) -> None:
    with bitsnb.Manager(store=store) as mgr:
        mgr.create_job("kept")
    db = sqlite3.connect(store, isolation_level=None)
    db.execute("DROP TABLE files")
    db.close()
    with bitsnb.Manager(store=store) as mgr:
        assert [j.display_name for j in mgr.enum_jobs()] == ["kept"]


def test_a_bad_proxy_stored_by_an_older_version_fails_the_job_clearly(
    store: Path, server: FileServer, dest: Path
) -> None:
    with bitsnb.Manager(store=store) as mgr:
        job = mgr.create_job("old proxy")
        job.add_file(server.add_file("p.bin", b"p"), dest / "p.bin")
        job_id = job.id
    db = sqlite3.connect(store, isolation_level=None)
    settings = settings_json(store, job_id)
    settings.update(proxy_usage=int(ProxyUsage.OVERRIDE), proxy_list="::::bad")
    db.execute("UPDATE jobs SET settings=? WHERE id=?", (json.dumps(settings), str(job_id)))
    db.close()
    with bitsnb.Manager(store=store) as mgr:
        job = mgr.get_job(job_id)
        job.resume()
        assert job.wait(timeout=20) is JobState.ERROR
        assert job.error is not None and job.error.code == BG_E_INVALID_PROXY_INFO


OWNER_PROBE = """
import os, sys
import bitsnb
os.setgid(65534); os.setuid(65534)  # now nobody (whatever $USER says)
try:
    bitsnb.Manager(store=sys.argv[1], policy=bitsnb.Policy(owner="root"))
except bitsnb.BitsError as exc:
    print(hex(exc.code), exc.message)
else:
    print("accepted")
"""


def test_only_root_may_act_under_another_owner(tmp_path: Path) -> None:
    """Off Windows a job's owner is a name in the store: a user who is not root may not
    open a manager under another user's name."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    tmp_path.chmod(0o755)
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", OWNER_PROBE, str(folder / "jobs.db")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BITSNB_HOME": str(folder), "USER": "root", "LOGNAME": "root"},
    )
    assert out.stdout.startswith("0x80070005"), out.stdout + out.stderr
    assert "only root" in out.stdout


@pytest.mark.parametrize("url", ["postgresql://user@host/db", "sqlite:///tmp/x.db", "s3://b/k"])
def test_a_store_url_is_refused_not_taken_for_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BitsError) as info:
        bitsnb.Manager(store=url)
    assert info.value.code == E_INVALIDARG
    monkeypatch.setenv("BITSNB_STORE", url)
    with pytest.raises(BitsError):
        bitsnb.Manager()
    assert os.listdir(tmp_path) == []  # no "postgresql:" folder


def test_bitsnb_store_overrides_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BITSNB_STORE", str(tmp_path / "elsewhere.db"))
    with bitsnb.Manager() as mgr:
        mgr.create_job("x")
    assert (tmp_path / "elsewhere.db").exists()
