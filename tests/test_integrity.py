"""Integrity: known hashes, the digests servers send, same-size corruption, validation states,
resumes that still verify, and verification that reads nothing back."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from _support.helpers import store_state, temp_files, wait_until

import bitsnb
from bitsnb import BitsError, ErrorContext, JobState
from bitsnb._integrity import (
    content_digest,
    known_digest,
    new_hasher,
    parse_known_hash,
    representation_digest,
)
from bitsnb._store_rows import SCHEMA_VERSION
from bitsnb.testing import Fault, FileServer
from bitsnb.testing._server import DIGEST_KINDS, DigestKind

BG_E_VALIDATION_FAILED = 0x80200053
E_INVALIDARG = 0x80070057
E_PENDING = 0x8000000A
KIB = 1024
MIB = 1024 * KIB


def sha256(path: Path) -> str:
    """``sha256:<hex>`` of a file."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def engine_of(mgr: bitsnb.Manager) -> bitsnb._engine.Engine:
    """The manager's download engine (its re-hash counter)."""
    parts = mgr.async_manager._parts
    assert parts is not None
    return parts.engine


# -- rules ------------------------------------------------------------------------------------
def test_known_hash_forms() -> None:
    """pooch's format: alg:hex (lower-cased), bare hex = sha256; wrong lengths, non-hex and
    unknown algorithms are refused."""
    hex64 = "AB" * 32
    assert parse_known_hash(hex64) == "sha256:" + hex64.lower()
    assert parse_known_hash("SHA256:" + hex64) == "sha256:" + hex64.lower()
    assert parse_known_hash("md5:" + "0" * 32) == "md5:" + "0" * 32
    assert parse_known_hash("blake2b:" + "1" * 128).startswith("blake2b:")
    for bad in ("sha256:abc", "sha256:" + "g" * 64, "crc99:00", "md5:" + "0" * 64, "", ":"):
        with pytest.raises(ValueError):
            parse_known_hash(bad)


def test_crcs_match_their_check_values() -> None:
    """The CRC hashers (zlib, awscrt) give the catalogue check values of b"123456789"."""
    for alg, check in (
        ("crc32", 0xCBF43926),
        ("crc32c", 0xE3069283),
        ("crc64nvme", 0xAE8B14860A799888),
    ):
        h = new_hasher(alg)
        h.update(b"1234")
        h.update(memoryview(b"56789"))
        assert int.from_bytes(h.digest(), "big") == check, alg


def test_digest_headers_parsed() -> None:
    """Each header kind is read (structured fields through http-sf); the strongest wins; S3's
    composite checksums and malformed fields are ignored."""
    raw = hashlib.sha256(b"x").digest()
    import base64

    b64 = base64.b64encode(raw).decode()
    d = representation_digest({"repr-digest": f"sha-256=:{b64}:, md5=:AAAAAAAAAAAAAAAAAAAAAA==:"})
    assert d is not None and d.algorithm == "sha256" and d.value == raw
    assert representation_digest({"digest": f"SHA-256={b64}"}) == d.__class__(
        "sha256", raw, "Digest"
    )
    assert representation_digest({"x-amz-checksum-crc32c": "AAAAAA==-3"}) is None
    assert representation_digest({"repr-digest": "sha-256=not a field"}) is None
    c = content_digest({"content-md5": base64.b64encode(hashlib.md5(b"x").digest()).decode()})
    assert c is not None and c.scope == "content"
    assert known_digest("md5:" + hashlib.md5(b"x").hexdigest()).value == hashlib.md5(b"x").digest()


# -- known hashes ----------------------------------------------------------------------------
def test_bad_known_hash_changes_nothing(manager: bitsnb.Manager, dest: Path) -> None:
    """A malformed hash or an unknown algorithm: E_INVALIDARG, and no file is added."""
    job = manager.create_job("bad hash")
    with pytest.raises(BitsError) as err:
        job.add_file("http://127.0.0.1:9/a", dest / "a", known_hash="sha256:1234")
    assert err.value.code == E_INVALIDARG
    with pytest.raises(BitsError) as err:
        job.add_file_set(
            [
                ("http://127.0.0.1:9/b", dest / "b", "sha256:" + "0" * 64),
                ("http://127.0.0.1:9/c", dest / "c", "whirlpool:00"),
            ]
        )
    assert err.value.code == E_INVALIDARG
    assert job.files == []


def test_known_hash_verified(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """A right known hash: TRANSFERRED, the hash recorded, the file valid, nothing re-read."""
    url = server.add_random_file("ok.bin", 300 * KIB, seed=1)
    known = sha256(server.path("ok.bin"))
    job = manager.create_job("known")
    job.add_file_set([(url, dest / "ok.bin", known)])
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    (f,) = job.files
    assert (f.known_hash, f.hash, f.validation_state) == (known, known, True)
    assert engine_of(manager).bytes_rehashed == 0
    # the known hash wins: digests were not asked for
    (req,) = [r for r in server.requests if r.path == "ok.bin"]
    assert "Want-Repr-Digest" not in req.headers
    job.complete()
    assert sha256(dest / "ok.bin") == known


def test_mismatch_then_resume(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """A same-size corrupted body: ERROR with BG_E_VALIDATION_FAILED for that file, saying
    expected and got; progress 0, temp emptied, no final name; resume() fetches it again."""
    url = server.add_random_file("bad.bin", 200 * KIB, seed=2)
    known = sha256(server.path("bad.bin"))
    server.inject("bad.bin", Fault.corrupt(seed=7))
    job = manager.create_job("mismatch")
    job.add_file(url, dest / "bad.bin", known_hash=known)
    job.resume()
    assert job.wait(timeout=20) is JobState.ERROR
    err = job.error
    assert err is not None
    assert (err.code, err.context) == (BG_E_VALIDATION_FAILED, ErrorContext.REMOTE_FILE)
    assert err.file is not None and err.file.local_name == str(dest / "bad.bin")
    assert known.split(":")[1] in err.message and "got" in err.message
    (f,) = job.files
    assert f.progress.bytes_transferred == 0 and not f.transferred
    assert f.validation_state is False and f.hash is None
    (tmp,) = temp_files(dest)
    assert (dest / tmp).stat().st_size == 0
    assert not (dest / "bad.bin").exists()
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    assert job.files[0].validation_state is True
    job.complete()
    assert sha256(dest / "bad.bin") == known


def test_known_hash_wins_over_a_lying_server(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Every digest header wrong, the user's known hash right: the file is accepted."""
    url = server.add_random_file("liar.bin", 100 * KIB, seed=3)
    server.send_digests("liar.bin", DIGEST_KINDS, wrong=True)
    job = manager.create_job("liar")
    job.add_file(url, dest / "liar.bin", known_hash=sha256(server.path("liar.bin")))
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED


# -- server digests -----------------------------------------------------------------------------
@pytest.mark.parametrize("wrong", [False, True], ids=["right", "wrong"])
@pytest.mark.parametrize("kind", DIGEST_KINDS)
def test_each_digest_header(
    manager: bitsnb.Manager, server: FileServer, dest: Path, kind: DigestKind, wrong: bool
) -> None:
    """Each header kind: accepted when right, caught (BG_E_VALIDATION_FAILED) when wrong;
    the client asks with Want-Repr-Digest and x-amz-checksum-mode."""
    url = server.add_random_file("d.bin", 96 * KIB, seed=4)
    server.send_digests("d.bin", [kind], wrong=wrong)
    job = manager.create_job(kind)
    job.add_file(url, dest / "d.bin")
    job.resume()
    state = job.wait(timeout=20)
    (req,) = [r for r in server.requests if r.path == "d.bin"]
    assert req.headers.get("Want-Repr-Digest") == "sha-256=10, sha-512=3"
    assert req.headers.get("x-amz-checksum-mode") == "ENABLED"
    if wrong:
        assert state is JobState.ERROR
        assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED
        assert not (dest / "d.bin").exists()
        return
    assert state is JobState.TRANSFERRED
    (f,) = job.files
    if not kind.startswith("content"):  # a whole-file digest: its hash is recorded
        assert f.hash is not None and f.validation_state
        alg = f.hash.split(":")[0]
        assert f.hash == f"{alg}:" + new_digest(alg, server.path("d.bin"))


def new_digest(alg: str, path: Path) -> str:
    """Hex digest of a file with our hashers."""
    h = new_hasher(alg)
    h.update(path.read_bytes())
    return h.digest().hex()


def test_resumed_file_checked_by_whole_digest_and_content_digest(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A dropped connection: the 206 that follows carries a Content-Digest of its range only
    and a Repr-Digest of the whole file; both check; the prefix was not read back (this
    process kept its partial hash)."""
    url = server.add_random_file("r.bin", 512 * KIB, seed=5)
    server.send_digests("r.bin", ["repr-sha-512", "content-sha-256"])
    server.inject("r.bin", Fault.drop_after(200 * KIB))
    job = manager.create_job("resume digest")
    job.minimum_retry_delay = 0.05
    job.add_file(url, dest / "r.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    reqs = [r for r in server.requests if r.path == "r.bin"]
    assert [r.status for r in reqs] == [200, 206]
    assert job.files[0].hash == "sha512:" + new_digest("sha512", server.path("r.bin"))
    assert engine_of(manager).bytes_rehashed == 0


def test_resumed_corruption_caught(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """The first response is corrupted and dropped, the second (206) clean: the whole-file
    digest catches what no Content-Digest of the second response could."""
    url = server.add_random_file("rc.bin", 512 * KIB, seed=6)
    server.send_digests("rc.bin", ["repr-sha-256"])
    # corrupt the first response (the byte lands in the first 200 KiB for this seed)...
    server.inject("rc.bin", Fault.corrupt(seed=11))
    job = manager.create_job("resume corrupt")
    job.add_file(url, dest / "rc.bin")
    job.resume()
    assert job.wait(timeout=20) is JobState.ERROR
    assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED


def test_same_size_corruption_always_caught(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """200 seeded same-size corruptions (a known hash for half, a server Repr-Digest for the
    others): every one caught, every file named, no final name written."""
    runs = 200
    jobs = []
    for i in range(runs):
        name = f"c{i}.bin"
        url = server.add_random_file(name, 8 * KIB + i, seed=100 + i)
        server.inject(name, Fault.corrupt(seed=i))
        job = manager.create_job(name)
        if i % 2:
            server.send_digests(name, ["repr-sha-256"])
            job.add_file(url, dest / name)
        else:
            job.add_file(url, dest / name, known_hash=sha256(server.path(name)))
        jobs.append(job)
    for job in jobs:
        job.resume()
    caught = 0
    for i, job in enumerate(jobs):
        assert job.wait(timeout=60) is JobState.ERROR, i
        err = job.error
        assert err is not None and err.code == BG_E_VALIDATION_FAILED
        assert err.file is not None and err.file.local_name.endswith(f"c{i}.bin")
        caught += 1
    assert caught == runs
    assert not any((dest / f"c{i}.bin").exists() for i in range(runs))


# -- the application's verdict -----------------------------------------------------------------
def test_set_validation_state(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """File3 SetValidationState: E_PENDING before the file is in; True changes nothing;
    False → ERROR with BG_E_VALIDATION_FAILED, progress 0, temp emptied; resume() again."""
    url = server.add_random_file("v.bin", 64 * KIB, seed=8)
    server.inject("v.bin", Fault.stall(30))
    job = manager.create_job("verdict")
    job.add_file(url, dest / "v.bin")
    with pytest.raises(BitsError) as err:
        job.set_validation_state(0, False)
    assert err.value.code == E_PENDING
    server.clear_faults()
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    job.set_validation_state(0, True)
    assert job.state is JobState.TRANSFERRED and job.files[0].validation_state
    job.set_validation_state(job.files[0], False)
    assert job.state is JobState.ERROR
    err_info = job.error
    assert err_info is not None and err_info.code == BG_E_VALIDATION_FAILED
    assert err_info.context is ErrorContext.REMOTE_FILE
    (f,) = job.files
    assert (f.progress.bytes_transferred, f.transferred, f.validation_state) == (0, False, False)
    (tmp,) = temp_files(dest)
    assert (dest / tmp).stat().st_size == 0
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    assert len([r for r in server.requests if r.path == "v.bin" and r.status == 200]) == 2


def test_async_set_validation_state_in_step() -> None:
    """AsyncJob and Job both have the new members with the same signatures."""
    import inspect

    for name in ("set_validation_state", "add_file", "add_file_set"):
        a = inspect.signature(getattr(bitsnb.AsyncJob, name))
        b = inspect.signature(getattr(bitsnb.Job, name))
        assert list(a.parameters) == list(b.parameters), name


# -- the store ---------------------------------------------------------------------------------
def test_store_migrates_from_schema_1(store: Path, policy: bitsnb.Policy, dest: Path) -> None:
    """A schema-1 store (no hash columns) opens: migrated in place to the current version,
    its files valid."""
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("old")
        job.add_file("http://127.0.0.1:9/x", dest / "x")
        job_id = job.id
    db = sqlite3.connect(store)
    for column in ("known_hash", "hash", "validation_state"):
        db.execute(f"ALTER TABLE files DROP COLUMN {column}")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        (f,) = mgr.get_job(job_id).files
        assert (f.known_hash, f.hash, f.validation_state) == (None, None, True)
        job = mgr.get_job(job_id)
        job.add_file("http://127.0.0.1:9/y", dest / "y", known_hash="md5:" + "a" * 32)
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rows = db.execute("SELECT idx, known_hash, validation_state FROM files ORDER BY idx").fetchall()
    db.close()
    assert rows == [(0, None, 1), (1, "md5:" + "a" * 32, 1)]


# -- across processes --------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import json, sys, time
    import bitsnb

    store, url, local, known, mode = sys.argv[1:6]
    policy = bitsnb.Policy(min_retry_delay_floor=0.05, poll_interval=0.05, lease_seconds=2.0,
                           checkpoint_interval=0.2, connect_timeout=5.0, read_timeout=60.0)
    mgr = bitsnb.Manager(store=store, policy=policy)
    job = mgr.create_job("child")
    job.add_file(url, local, known_hash=known or None)

    def io():
        with open("/proc/self/io") as fh:
            return dict(line.split(": ") for line in fh.read().splitlines())

    before = io()
    job.resume()
    if mode == "kill":
        deadline = time.monotonic() + 30
        while job.progress.bytes_transferred == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(job.id, flush=True)
        time.sleep(60)
    state = job.wait(timeout=60)
    after = io()
    print(json.dumps({"state": state.name, "rchar": int(after["rchar"]) - int(before["rchar"]),
                      "read_bytes": int(after["read_bytes"]) - int(before["read_bytes"]),
                      "rehashed": mgr.async_manager._parts.engine.bytes_rehashed}), flush=True)
    mgr.close()
    """
)


def _child(store: Path, url: str, local: Path, known: str, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), url, str(local), known, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"the child said nothing within {timeout} s")
    return proc.stdout.readline().strip()


def test_clean_transfer_reads_nothing_back(server: FileServer, tmp_path: Path) -> None:
    """/proc/self/io of a process that downloads 32 MiB: with a known hash it reads (rchar)
    no more than without one, far less than the file; nothing is re-hashed."""
    size = 32 * MIB
    url = server.add_random_file("io.bin", size, seed=9)
    known = sha256(server.path("io.bin"))
    results = {}
    for mode, hash_ in (("plain", ""), ("hashed", known)):
        out = tmp_path / mode
        out.mkdir()
        proc = _child(tmp_path / f"{mode}.db", url, out / "io.bin", hash_, "run")
        try:
            results[mode] = json.loads(_line(proc, 60))
        finally:
            proc.wait(30)
    print("io:", results)
    assert results["hashed"]["state"] == results["plain"]["state"] == "TRANSFERRED"
    assert results["hashed"]["rehashed"] == 0
    assert results["hashed"]["rchar"] - results["plain"]["rchar"] < MIB
    assert results["hashed"]["rchar"] < size // 8
    assert results["hashed"]["read_bytes"] < size // 8


@pytest.mark.parametrize("corrupt_prefix", [False, True], ids=["verifies", "prefix-corrupted"])
def test_resume_after_sigkill(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path, corrupt_prefix: bool
) -> None:
    """A process is SIGKILLed mid-file: a new one resumes with a Range, re-hashes only the
    prefix on disk (once) and verifies; a prefix changed on disk while it was dead is caught."""
    size = 6 * MIB
    url = server.add_random_file("k.bin", size, seed=10)
    known = sha256(server.path("k.bin"))
    server.inject("k.bin", Fault.stall_after(size // 2, 60))  # killed at (at most) 50 %
    local = dest / "k.bin"
    proc = _child(store, url, local, known, "kill")
    try:
        job_id = uuid.UUID(_line(proc, 30))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert store_state(store, job_id) in (JobState.CONNECTING, JobState.TRANSFERRING)
    (tmp,) = temp_files(dest)
    on_disk = (dest / tmp).stat().st_size
    assert 0 < on_disk <= size // 2
    if corrupt_prefix:
        with open(dest / tmp, "r+b") as fh:
            fh.seek(on_disk // 2)
            byte = fh.read(1)
            fh.seek(on_disk // 2)
            fh.write(bytes([byte[0] ^ 0x5A]))
    policy.lease_seconds = 60.0
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.get_job(job_id)
        state = job.wait(timeout=30)
        reqs = [r for r in server.requests if r.path == "k.bin"]
        assert reqs[1].range == f"bytes={on_disk}-"
        assert engine_of(mgr).bytes_rehashed == on_disk  # the prefix on disk, read once
        if corrupt_prefix:
            assert state is JobState.ERROR
            assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED
            job.resume()
            wait_until(lambda: job.state is JobState.TRANSFERRED, 30, "transferred again")
        else:
            assert state is JobState.TRANSFERRED
        assert job.files[0].hash == known
        job.complete()
    assert sha256(local) == known
