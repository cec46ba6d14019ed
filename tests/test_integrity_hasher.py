"""The background hasher: the same digest as hashlib whatever the chunking, the caller's
buffers free for reuse at once, no thread left behind; and a large download verified (and a
same-size corruption past the inline part caught) through it."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

import bitsnb
from bitsnb import JobState
from bitsnb._integrity import BackgroundHasher, new_hasher, streaming_hasher
from bitsnb.testing import Fault, FileServer

BG_E_VALIDATION_FAILED = 0x80200053
MIB = 1024 * 1024
DATA = random.Random(1).randbytes(3 * MIB + 12345)


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bitsnb-hash"]


@pytest.mark.parametrize("chunk", [1, 1000, 65536, MIB, 5 * MIB])
@pytest.mark.parametrize("alg", ["sha256", "md5", "blake2b"])
def test_same_digest_as_hashlib(alg: str, chunk: int) -> None:
    """Small blocks and a tiny inline part, so the worker thread does most of the work."""
    size = len(DATA) if chunk >= 1000 else 70_000
    h = BackgroundHasher(new_hasher(alg), inline=10_000, block=64 * 1024, depth=2)
    view = memoryview(DATA)[:size]
    for i in range(0, size, chunk):
        h.update(view[i : i + chunk])
    assert h.digest() == hashlib.new(alg, DATA[:size]).digest()


def test_callers_buffer_reused_at_once() -> None:
    """The caller overwrites its buffer after each update (as a connection buffer is): the
    digest is still of the bytes given."""
    h = BackgroundHasher(new_hasher("sha256"), inline=0, block=256 * 1024, depth=2)
    buf = bytearray(100_000)
    want = hashlib.sha256()
    rng = random.Random(2)
    for _ in range(40):
        buf[:] = rng.randbytes(len(buf))
        want.update(buf)
        h.update(memoryview(buf))
    buf[:] = bytes(len(buf))  # scribbled over once more before the digest
    assert h.digest() == want.digest()


def test_no_thread_left_behind() -> None:
    """The worker ends once nothing waits; an abandoned hasher leaves no thread running."""
    h = BackgroundHasher(new_hasher("sha256"), inline=0, block=64 * 1024, depth=2)
    for _ in range(20):
        h.update(DATA[: 64 * 1024])
    del h  # never digested
    deadline = time.monotonic() + 10
    while hash_threads():
        assert time.monotonic() < deadline, "a bitsnb-hash thread is still running"
        time.sleep(0.01)


def test_idle_worker_takes_the_partial_block_and_ends() -> None:
    """A paused stream (a file suspended mid-way): the worker hashes the partly filled block
    and ends; more bytes later start it again; the digest covers everything in order."""
    h = BackgroundHasher(new_hasher("sha256"), inline=0, block=64 * 1024, depth=2, linger=0.01)
    h.update(DATA[:100_000])  # one full block and a partial one
    deadline = time.monotonic() + 10
    while hash_threads():
        assert time.monotonic() < deadline, "the worker did not end"
        time.sleep(0.01)
    h.update(DATA[100_000:300_000])
    assert h.digest() == hashlib.sha256(DATA[:300_000]).digest()


def test_streaming_hasher_kinds() -> None:
    """hashlib's algorithms go to the background; CRCs stay inline."""
    assert isinstance(streaming_hasher("sha256"), BackgroundHasher)
    assert not isinstance(streaming_hasher("crc32"), BackgroundHasher)


def test_large_download_verified_and_corruption_caught(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """24 MiB with a known sha256: verified through the worker thread; the same body with
    one byte changed past the first 8 MiB (hashed inline) is caught."""
    size = 24 * MIB
    url = server.add_random_file("big.bin", size, seed=3)
    known = "sha256:" + hashlib.sha256(server.path("big.bin").read_bytes()).hexdigest()
    job = manager.create_job("big")
    job.add_file(url, dest / "big.bin", known_hash=known)
    job.resume()
    assert job.wait(timeout=60) is JobState.TRANSFERRED
    assert job.files[0].hash == known
    job.complete()
    seed = 5
    assert random.Random(seed).randrange(size) > 8 * MIB  # the server's rule for the place
    server.inject("big.bin", Fault.corrupt(seed=seed))
    job = manager.create_job("big again")
    job.add_file(url, dest / "again.bin", known_hash=known)
    job.resume()
    assert job.wait(timeout=60) is JobState.ERROR
    assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED
    assert not os.path.exists(dest / "again.bin")
