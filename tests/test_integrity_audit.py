"""Issue 15's audit, the gaps filled against the real FileServer: xxh64/xxh128 known hashes;
every whole-representation digest kind checking a resumed file (right and wrong) and every
per-response kind covering its own range only; the user's known hash over every lying digest
on a resumed file; a segmented file with a known hash SIGKILLed mid-way, resumed and verified
(and a segment's bytes corrupted on disk while the process was dead, caught)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _support.helpers import temp_files
from _support.segmented_kill import kill_when_split

import bitsnb
from bitsnb import JobState
from bitsnb._integrity import KNOWN_ALGORITHMS, new_hasher
from bitsnb.testing import Fault, FileServer
from bitsnb.testing._server import DIGEST_KINDS

BG_E_VALIDATION_FAILED = 0x80200053
KIB = 1024
MIB = 1024 * KIB
WHOLE_KINDS = [k for k in DIGEST_KINDS if not k.startswith("content")]
CONTENT_KINDS = [k for k in DIGEST_KINDS if k.startswith("content")]


def digest_of(alg: str, path: Path) -> str:
    """``alg:hex`` of a file, with bitsnb's hashers."""
    h = new_hasher(alg)
    h.update(path.read_bytes())
    return f"{alg}:{h.digest().hex()}"


def requests_for(server: FileServer, name: str) -> list[int]:
    return [r.status for r in server.requests if r.path == name]


def rehashed(mgr: bitsnb.Manager) -> int:
    parts = mgr.async_manager._parts
    assert parts is not None
    return parts.engine.bytes_rehashed


@pytest.mark.parametrize("alg", ["xxh64", "xxh128"])
def test_xxhash_known_hashes(
    manager: bitsnb.Manager, server: FileServer, dest: Path, alg: str
) -> None:
    """With ``xxhash`` installed, xxh64 and xxh128 known hashes verify; a wrong one fails the
    file with BG_E_VALIDATION_FAILED and no final name."""
    assert alg in KNOWN_ALGORITHMS
    url = server.add_random_file("x.bin", 300 * KIB, seed=31)
    known = digest_of(alg, server.path("x.bin"))
    job = manager.create_job(alg)
    job.add_file(url, dest / "x.bin", known_hash=known)
    job.resume()
    assert job.wait(timeout=20) is JobState.TRANSFERRED
    assert job.files[0].hash == known and job.files[0].validation_state
    wrong = known[:-1] + ("0" if known[-1] != "0" else "1")
    job = manager.create_job(alg + " wrong")
    job.add_file(url, dest / "y.bin", known_hash=wrong)
    job.resume()
    assert job.wait(timeout=20) is JobState.ERROR
    assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED
    assert not (dest / "y.bin").exists()


def _dropped_then_resumed(
    manager: bitsnb.Manager, server: FileServer, dest: Path, name: str, known: str | None = None
) -> tuple[bitsnb.Job, JobState]:
    """Fetch *name* with its connection dropped after 100 KiB: a 200, then a 206 for the rest."""
    server.inject(name, Fault.drop_after(100 * KIB))
    job = manager.create_job(name)
    job.minimum_retry_delay = 0.05
    job.add_file(server.url(name), dest / name, known_hash=known)
    job.resume()
    state = job.wait(timeout=20)
    assert requests_for(server, name) == [200, 206]
    return job, state


@pytest.mark.parametrize("wrong", [False, True], ids=["right", "wrong"])
@pytest.mark.parametrize("kind", WHOLE_KINDS)
def test_whole_digest_checks_a_resumed_file(
    manager: bitsnb.Manager, server: FileServer, dest: Path, kind: str, wrong: bool
) -> None:
    """The connection drops mid-way and a 206 brings the rest: a digest of the whole
    representation checks the file as a whole (right: its hash recorded; wrong: caught),
    and the prefix this process hashed is not read back."""
    name = "w.bin"
    server.add_random_file(name, 256 * KIB, seed=32)
    server.send_digests(name, [kind], wrong=wrong)  # type: ignore[list-item]
    job, state = _dropped_then_resumed(manager, server, dest, name)
    assert rehashed(manager) == 0
    if wrong:
        assert state is JobState.ERROR
        assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED
        assert job.files[0].progress.bytes_transferred == 0
        assert not (dest / name).exists()
        return
    assert state is JobState.TRANSFERRED
    (f,) = job.files
    assert f.hash is not None and f.validation_state
    assert f.hash == digest_of(f.hash.split(":")[0], server.path(name))


@pytest.mark.parametrize("wrong", [False, True], ids=["right", "wrong"])
@pytest.mark.parametrize("kind", CONTENT_KINDS)
def test_content_digest_covers_its_own_range(
    manager: bitsnb.Manager, server: FileServer, dest: Path, kind: str, wrong: bool
) -> None:
    """Content-Digest / Content-MD5 on a resumed file: the 206's digest is of its range only
    (right: accepted); wrong: the response is caught."""
    name = "c.bin"
    server.add_random_file(name, 256 * KIB, seed=33)
    server.send_digests(name, [kind], wrong=wrong)  # type: ignore[list-item]
    job, state = _dropped_then_resumed(manager, server, dest, name)
    if wrong:
        assert state is JobState.ERROR
        assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED
        assert "this response" in job.error.message
        assert not (dest / name).exists()
    else:
        assert state is JobState.TRANSFERRED
        job.complete()
        assert (dest / name).read_bytes() == server.path(name).read_bytes()


def test_known_hash_wins_over_every_lying_digest_on_a_resumed_file(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Every digest header wrong on both responses, the user's known hash right: accepted,
    the recorded hash the known one; digests were not even asked for."""
    name = "l.bin"
    server.add_random_file(name, 256 * KIB, seed=34)
    known = "sha256:" + hashlib.sha256(server.path(name).read_bytes()).hexdigest()
    server.send_digests(name, DIGEST_KINDS, wrong=True)
    job, state = _dropped_then_resumed(manager, server, dest, name, known)
    assert state is JobState.TRANSFERRED
    assert job.files[0].hash == known
    reqs = [r for r in server.requests if r.path == name]
    assert all("Want-Repr-Digest" not in r.headers for r in reqs)


@pytest.mark.parametrize("corrupt", [False, True], ids=["verifies", "segment-corrupted"])
def test_segmented_file_resumed_after_sigkill_verifies(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path, corrupt: bool
) -> None:
    """A file with a known hash fetched in segments, the process SIGKILLed once two segments
    are checkpointed: a new manager resumes the table and verifies the file (its prefix on
    disk re-hashed, each byte at most once); a byte of a finished part of a segment changed
    on disk while the process was dead is caught (BG_E_VALIDATION_FAILED), and resume()
    fetches the file again, right."""
    size = 8 * MIB
    server.connection_rate = 500_000  # slow enough to be caught mid-file on a loaded machine
    url = server.add_random_file("seg.bin", size, seed=35)
    data = server.path("seg.bin").read_bytes()
    known = "sha256:" + hashlib.sha256(data).hexdigest()
    local = dest / "seg.bin"
    job_id, table = kill_when_split(store, url, local, known)
    if corrupt:  # a byte the table says is done, in the last segment that has some
        start, done, _ = [seg for seg in table if seg[1] > seg[0]][-1]
        (tmp,) = temp_files(dest)
        with open(dest / tmp, "r+b") as fh:
            fh.seek((start + done) // 2)
            byte = fh.read(1)
            fh.seek((start + done) // 2)
            fh.write(bytes([byte[0] ^ 0x5A]))
    server.connection_rate = None
    policy.lease_seconds = 60.0  # taken over from the dead pid
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.get_job(job_id)
        state = job.wait(timeout=60)
        assert rehashed(mgr) <= size
        if corrupt:
            assert state is JobState.ERROR
            assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED
            assert not local.exists()
            job.resume()
            state = job.wait(timeout=60)
        assert state is JobState.TRANSFERRED, job.error
        assert job.files[0].hash == known
        job.complete()
    assert local.read_bytes() == data
