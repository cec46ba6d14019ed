"""UPLOAD and UPLOAD_REPLY jobs end to end against bitsnb.server on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bitsnb
from bitsnb import BitsError, ErrorContext, JobState, JobType

pytest.importorskip("uvicorn")
from bitsnb.testing import Fault, UploadServer

MIB = 1024 * 1024
BG_E_LOCAL_FILE_CHANGED = 0x8020001D
BG_E_TOO_MANY_FILES = 0x8020001C
BG_E_TOO_LARGE = 0x80200020
E_ACCESSDENIED = 0x80070005


@pytest.fixture
def upserver(tmp_path: Path) -> Iterator[UploadServer]:
    with UploadServer(tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3 * MIB + 123))
    return path


def small_fragments(job: bitsnb.Job) -> None:
    """256 KiB fragments so a 3 MiB file takes a dozen packets."""
    job.upload_fragment_size = 256 * 1024
    assert job.upload_fragment_size == 256 * 1024


def test_fragment_size_bounds(manager: bitsnb.Manager) -> None:
    job = manager.create_job("bounds", JobType.UPLOAD)
    for bad in (0, 1024, 2 << 30, 1.5):
        with pytest.raises(BitsError) as info:
            job.upload_fragment_size = bad  # type: ignore[assignment]
        assert info.value.code == 0x80070057
    assert job.upload_fragment_size == 8 * MIB
    download = manager.create_job("download")
    with pytest.raises(BitsError) as info:
        download.upload_fragment_size = 64 * 1024
    assert info.value.code == 0x80004001


def upload(
    mgr: bitsnb.Manager, srv: UploadServer, src: Path, name: str, kind: JobType
) -> bitsnb.Job:
    job = mgr.create_job(name, kind)
    job.minimum_retry_delay = 0.05
    small_fragments(job)
    job.add_file(srv.url(name), src)
    return job


def test_plain_upload(manager: bitsnb.Manager, upserver: UploadServer, source: Path) -> None:
    job = upload(manager, upserver, source, "plain.bin", JobType.UPLOAD)
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    p = job.progress
    assert p.bytes_total == p.bytes_transferred == source.stat().st_size
    assert p.files_transferred == 1
    assert upserver.path("plain.bin").read_bytes() == source.read_bytes()
    packets = [r.packet.lower() for r in upserver.packets if r.method == "BITS_POST"]
    assert packets[0] == "create-session" and packets[-1] == "close-session"
    assert packets.count("fragment") == 13
    assert job.complete() == 0
    assert job.state is JobState.ACKNOWLEDGED
    assert source.exists()  # the local file is the user's


def test_one_connection_per_session(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    """As the Windows client does: every packet of a session comes on one connection."""
    job = upload(manager, upserver, source, "conn.bin", JobType.UPLOAD)
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    clients = {r.client for r in upserver.packets if r.method == "BITS_POST"}
    assert len(clients) == 1 and "" not in clients


def test_upload_reply(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path, tmp_path: Path
) -> None:
    job = upload(manager, upserver, source, "reply.bin", JobType.UPLOAD_REPLY)
    reply_path = tmp_path / "src" / "answer.json"
    job.set_reply_file_name(str(reply_path))
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    total, done = job.reply_progress
    assert total == done and done > 0
    data = json.loads(job.get_reply_data())
    assert data["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert not reply_path.exists()  # the reply appears on complete()
    job.complete()
    assert json.loads(reply_path.read_text())["size"] == source.stat().st_size
    assert [n for n in os.listdir(reply_path.parent) if n.startswith(".BIT")] == []


def test_default_reply_name_beside_the_upload(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    job = upload(manager, upserver, source, "r2.bin", JobType.UPLOAD_REPLY)
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    job.complete()
    assert job.reply_file_name is not None
    assert Path(job.reply_file_name).parent == source.parent
    assert json.loads(Path(job.reply_file_name).read_text())["name"] == "r2.bin"


def test_one_file_per_upload_job(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    job = manager.create_job("one", JobType.UPLOAD)
    job.add_file(upserver.url("a.bin"), source)
    with pytest.raises(BitsError) as info:
        job.add_file(upserver.url("b.bin"), source)
    assert info.value.code == BG_E_TOO_MANY_FILES
    assert len(job.files) == 1


def test_missing_source_is_refused(
    manager: bitsnb.Manager, upserver: UploadServer, tmp_path: Path
) -> None:
    job = manager.create_job("missing", JobType.UPLOAD)
    with pytest.raises(BitsError) as info:
        job.add_file(upserver.url("a.bin"), tmp_path / "nope.bin")
    assert info.value.code == 0x80070002
    assert job.files == []


def test_drop_mid_fragment_resumes(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    upserver.inject("*", Fault.drop_after(100_000, times=2))
    job = upload(manager, upserver, source, "drop.bin", JobType.UPLOAD)
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    assert job.error_count >= 1
    assert upserver.path("drop.bin").read_bytes() == source.read_bytes()
    sent = sum(r.body_bytes for r in upserver.packets if r.packet.lower() == "fragment")
    assert sent <= source.stat().st_size + 2 * 256 * 1024  # resumed, not restarted


def test_busy_server_retries_and_extra_headers_are_ignored(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    upserver.inject("*", Fault.status(503, retry_after=0))
    upserver.inject("*", Fault.extra_headers(times=5))
    job = upload(manager, upserver, source, "busy.bin", JobType.UPLOAD)
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    assert upserver.path("busy.bin").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("fmt", ["hex", "bare", "decimal", "signed"])
def test_server_error_codes_become_the_job_error(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path, fmt: str
) -> None:
    upserver.inject("*", Fault.bits_error(E_ACCESSDENIED, status=403, context=0x7, fmt=fmt))  # type: ignore[arg-type]
    job = upload(manager, upserver, source, f"err-{fmt}.bin", JobType.UPLOAD)
    job.resume()
    assert job.wait(timeout=30) is JobState.ERROR
    err = job.error
    assert err is not None
    assert err.code == E_ACCESSDENIED
    assert err.context is ErrorContext.REMOTE_APPLICATION
    assert err.file is not None and err.file.local_name == str(source)


def test_session_lost_starts_a_new_session(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    upserver.inject("*", Fault.bits_error(0x8020001F, status=500))
    job = upload(manager, upserver, source, "lost.bin", JobType.UPLOAD)
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    creates = [r for r in upserver.packets if r.packet.lower() == "create-session"]
    assert len(creates) == 2
    assert upserver.path("lost.bin").read_bytes() == source.read_bytes()


def test_oversize_is_an_error(tmp_path: Path, manager: bitsnb.Manager, source: Path) -> None:
    with UploadServer(tmp_path / "small", max_upload_size=MIB) as srv:
        job = upload(manager, srv, source, "big.bin", JobType.UPLOAD)
        job.resume()
        assert job.wait(timeout=30) is JobState.ERROR
        assert job.error is not None and job.error.code == BG_E_TOO_LARGE
        assert not (tmp_path / "small" / "big.bin").exists()


def test_traversal_is_refused(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    job = manager.create_job("evil", JobType.UPLOAD)
    job.minimum_retry_delay = 0.05
    job.add_file(upserver.base_url + "/%2e%2e/evil.bin", source)
    job.resume()
    assert job.wait(timeout=30) is JobState.ERROR
    assert not (upserver.root.parent / "evil.bin").exists()


def test_local_file_changing_is_fatal(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    upserver.inject(
        "*", Fault.status(503, retry_after=0)
    )  # the first fragment fails, the retry sees the change
    job = upload(manager, upserver, source, "changed.bin", JobType.UPLOAD)
    job.minimum_retry_delay = 1.0
    job.resume()
    deadline = time.monotonic() + 20
    while job.state is not JobState.TRANSIENT_ERROR and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state is JobState.TRANSIENT_ERROR
    with open(source, "r+b") as fh:
        fh.write(b"changed!")
    assert job.wait(timeout=30) is JobState.ERROR
    assert job.error is not None
    assert job.error.code == BG_E_LOCAL_FILE_CHANGED
    assert job.error.context is ErrorContext.LOCAL_FILE


def test_cancel_tells_the_server(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    upserver.inject("*", Fault.status(503, retry_after=0))
    job = upload(manager, upserver, source, "cancel.bin", JobType.UPLOAD)
    job.minimum_retry_delay = 30
    job.resume()
    deadline = time.monotonic() + 20
    while job.state is not JobState.TRANSIENT_ERROR and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.cancel() == 0
    kinds = [r.packet.lower() for r in upserver.packets]
    assert "cancel-session" in kinds
    assert not upserver.path("cancel.bin").exists()
    assert source.exists()


def test_server_restart_resumes(
    manager: bitsnb.Manager, upserver: UploadServer, source: Path
) -> None:
    upserver.inject("*", Fault.drop_after(10))
    job = upload(manager, upserver, source, "restart.bin", JobType.UPLOAD)
    job.minimum_retry_delay = 0.5
    upserver.inject("*", Fault.status(503, retry_after=0))
    job.resume()
    deadline = time.monotonic() + 20
    while job.state is not JobState.TRANSIENT_ERROR and time.monotonic() < deadline:
        time.sleep(0.01)
    upserver.restart()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    assert upserver.path("restart.bin").read_bytes() == source.read_bytes()


CHILD = """
import sys, time, bitsnb
store, url, src = sys.argv[1:4]
mgr = bitsnb.Manager(store=store)
job = mgr.create_job("killed", bitsnb.JobType.UPLOAD)
job.upload_fragment_size = 64 * 1024
job.add_file(url, src)
job.resume()
while job.progress.bytes_transferred < 1024 * 1024:
    time.sleep(0.005)
print(job.id, flush=True)
time.sleep(60)
"""


def test_client_killed_and_resumed(
    tmp_path: Path, upserver: UploadServer, source: Path, policy: bitsnb.Policy
) -> None:
    store = tmp_path / "kill.db"
    upserver.inject("*", Fault.extra_headers(times=-1))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), upserver.url("killed.bin"), str(source)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        assert job_id
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.get_job(job_id)
        assert job.wait(timeout=30) is JobState.TRANSFERRED
        assert upserver.path("killed.bin").read_bytes() == source.read_bytes()
        creates = [r for r in upserver.packets if r.packet.lower() == "create-session"]
        assert len(creates) == 1  # the same session continued
        sent = sum(r.body_bytes for r in upserver.packets if r.packet.lower() == "fragment")
        assert sent < 2 * source.stat().st_size


# -- the HTTP rules, as the upload client reads them ---------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1234", 1234),
        (" 1234 ", 1234),
        ("0-1233", 1234),
        ("²", None),
        ("٣", None),
        ("x", None),
        (str(2**63), None),
        (f"0-{2**63}", None),
        (None, None),
    ],
)
def test_received_content_range_is_read_by_the_shared_rules(
    value: str | None, expected: int | None
) -> None:
    """Digits that str.isdigit takes but HTTP does not, or a count over 2^63-1, are unusable
    (the fragment Ack is then an invalid response), never an unexpected ValueError."""
    from bitsnb._upload import _received

    assert _received(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(b"3", 3.0), (b"\xb2", None), (b"soon", None), (None, None)]
)
def test_an_upload_failure_keeps_a_valid_retry_after(
    value: bytes | None, expected: float | None
) -> None:
    import httpx

    from bitsnb._upload import Uploader

    headers = [] if value is None else [(b"Retry-After", value)]
    failure = Uploader._failure(httpx.Response(503, headers=headers), "Fragment")
    assert (failure.transient, failure.retry_after) == (True, expected)
