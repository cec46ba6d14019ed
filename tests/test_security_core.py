"""Security in the core (issue 18): temporary files that a planted link cannot redirect."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import bitsnb
from bitsnb import AuthScheme, AuthTarget, JobState, JobType
from bitsnb.testing import Fault, FileServer, UploadServer

E_ACCESSDENIED = 0x80070005
BG_E_INVALID_SERVER_RESPONSE = 0x8020001B


def test_a_link_planted_at_the_temporary_name_is_not_written_through(
    manager: bitsnb.Manager, server: FileServer, dest: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    job = manager.create_job("planted")
    job.add_file(server.add_file("a.bin", b"payload" * 100), dest / "a.bin")
    temp = Path(job.files[0].temporary_name)
    os.symlink(victim, temp)  # another local user guessed (or read) the name
    job.resume()
    assert job.wait(timeout=20) is JobState.ERROR
    assert job.error is not None and job.error.code == E_ACCESSDENIED
    assert "symbolic link" in job.error.message
    assert victim.read_bytes() == b"precious"
    assert temp.is_symlink()  # left as it was; complete() never moves it into place


def test_a_link_swapped_in_for_a_partial_temporary_file_is_refused(
    manager: bitsnb.Manager, server: FileServer, dest: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    url = server.add_random_file("b.bin", 400_000)
    server.inject("b.bin", Fault.drop_after(100_000))
    job = manager.create_job("swapped")
    job.add_file(url, dest / "b.bin")
    job.minimum_retry_delay = 30  # stay in TRANSIENT_ERROR while the link is planted
    job.resume()
    deadline = time.monotonic() + 20
    while job.state is not JobState.TRANSIENT_ERROR:
        assert time.monotonic() < deadline, job.state
        time.sleep(0.02)
    temp = Path(job.files[0].temporary_name)
    assert temp.stat().st_size > 0
    temp.unlink()
    os.symlink(victim, temp)
    job.resume()
    assert job.wait(timeout=20) is JobState.ERROR
    assert job.error is not None and job.error.code == E_ACCESSDENIED
    assert victim.read_bytes() == b"precious"


def test_temporary_files_are_private(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("c.bin", 300_000)
    server.inject("c.bin", Fault.throttle(300_000))
    job = manager.create_job("private")
    job.add_file(url, dest / "c.bin")
    job.resume()
    temp = Path(job.files[0].temporary_name)
    deadline = time.monotonic() + 20
    while not temp.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert stat.S_IMODE(temp.stat().st_mode) == 0o600
    assert job.wait(timeout=20) is JobState.TRANSFERRED


# -- uploads: a reply URL on another host, a server that acks without taking data -------------
def _upload_job(mgr: bitsnb.Manager, srv: UploadServer, source: Path, kind: JobType) -> bitsnb.Job:
    job = mgr.create_job("up", kind)
    job.add_file(srv.url("up.bin"), source)
    return job


def test_a_reply_url_on_another_host_gets_no_credentials(
    manager: bitsnb.Manager, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(20_000))
    with UploadServer(tmp_path / "srv") as up, FileServer(host="127.0.0.2") as other:
        reply_url = other.add_file("reply", b"a reply from elsewhere")
        # the final Ack names a reply on another host (a hostile or misconfigured server)
        up.inject("*", Fault.extra_headers({"BITS-Reply-URL": reply_url}, times=-1))
        job = _upload_job(manager, up, source, JobType.UPLOAD_REPLY)
        job.set_credentials(AuthTarget.SERVER, AuthScheme.BASIC, "alice", "s3cret")
        job.set_custom_headers("Cookie: session=42\r\nX-Plain: kept")
        job.resume()
        assert job.wait(timeout=30) is JobState.TRANSFERRED
        assert job.get_reply_data() == b"a reply from elsewhere"
        [request] = [r for r in other.requests if r.path == "reply"]
    sent = {k.lower(): v for k, v in request.headers.items()}
    assert "authorization" not in sent and "cookie" not in sent
    assert sent.get("x-plain") == "kept"


def test_an_upload_server_that_never_takes_the_data_is_a_transient_error(
    manager: bitsnb.Manager, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(200_000))
    with UploadServer(tmp_path / "srv") as up:
        up.inject("*", Fault.extra_headers({"BITS-Received-Content-Range": "0"}, times=-1))
        job = _upload_job(manager, up, source, JobType.UPLOAD)
        job.upload_fragment_size = 16 * 1024
        job.minimum_retry_delay = 60
        job.resume()
        deadline = time.monotonic() + 30
        while job.state is not JobState.TRANSIENT_ERROR:
            assert time.monotonic() < deadline, job.state
            time.sleep(0.02)
        assert job.error is not None and job.error.code == BG_E_INVALID_SERVER_RESPONSE
        assert "without taking any data" in job.error.message
        fragments = [r for r in up.requests if r.packet.lower() == "fragment"]
        assert len(fragments) <= 5  # not thousands: it gave up after a few Acks
