"""The zero-copy hand-off to the hasher's thread: the lean transport's receive side lends views
from a small pool of buffers and reuses one only once every view kept of it is released (a
full pool makes the reader wait, it never grows); the background hasher hashes kept views
themselves, in order with copied bytes, and releases each once; a download through it is
verified on one connection and in segments, and a corruption is caught."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _support.readahead import keep_until_starved

import bitsnb
from bitsnb import JobState
from bitsnb._integrity import BackgroundHasher, new_hasher
from bitsnb._readahead import MAX_BLOCKS, ReadAhead
from bitsnb.testing import Fault, FileServer

BG_E_VALIDATION_FAILED = 0x80200053
KIB = 1024
MIB = 1024 * KIB
DATA = random.Random(11).randbytes(6 * MIB + 321)


class Lender:
    """Counts keeps and releases, as a transport would see them."""

    def __init__(self) -> None:
        self.kept = 0
        self.released = 0
        self.lock = threading.Lock()

    def keep(self) -> Callable[[], None]:
        self.kept += 1
        done = threading.Event()

        def release() -> None:
            assert not done.is_set(), "released twice"
            done.set()
            with self.lock:
                self.released += 1

        return release


@pytest.mark.parametrize("piece", [1000, 64 * KIB, MIB + 7])
def test_kept_views_hashed_and_each_released_once(piece: int) -> None:
    """Every kept view is hashed as given and released exactly once; the inline part is
    hashed at once and never kept."""
    lender = Lender()
    h = BackgroundHasher(new_hasher("sha256"), inline=100_000, wake=256 * KIB)
    view = memoryview(DATA)
    for i in range(0, len(DATA), piece):
        h.update_kept(view[i : i + piece], lender.keep)
    assert h.digest() == hashlib.sha256(DATA).digest()
    inline_pieces = -(-100_000 // piece)
    assert lender.kept == -(-len(DATA) // piece) - inline_pieces
    assert lender.released == lender.kept


def test_abandoned_hasher_gives_every_view_back_and_ends() -> None:
    """A file that stops mid-way (its hasher never asked for a digest): the idle worker still
    hashes what waits, releases every kept view (the connection's buffers come back) and
    ends, leaving no thread."""
    lender = Lender()
    h = BackgroundHasher(new_hasher("sha256"), inline=0, wake=64 * MIB, linger=0.01)
    view = memoryview(DATA)
    for i in range(0, 2 * MIB, 128 * KIB):  # far below *wake*: only idleness starts the hash
        h.update_kept(view[i : i + 128 * KIB], lender.keep)
    del h
    deadline = time.monotonic() + 10
    while lender.released < lender.kept or any(
        t.name == "bitsnb-hash" for t in threading.enumerate()
    ):
        assert time.monotonic() < deadline, (lender.kept, lender.released)
        time.sleep(0.01)
    assert lender.kept == 16


def test_copied_and_kept_bytes_stay_in_order() -> None:
    """Copied updates (a partly filled block) and kept views, interleaved: one stream."""
    lender = Lender()
    h = BackgroundHasher(new_hasher("sha256"), inline=0, block=64 * KIB, depth=2, wake=KIB)
    view = memoryview(DATA)
    pos, rng = 0, random.Random(3)
    while pos < len(DATA):
        n = rng.randrange(1, 200 * KIB)
        if rng.random() < 0.5:
            h.update(bytes(view[pos : pos + n]))
        else:
            h.update_kept(view[pos : pos + n], lender.keep)
        pos += n
    assert h.digest() == hashlib.sha256(DATA).digest()
    assert lender.released == lender.kept > 0


def test_full_pool_makes_the_reader_wait_and_kept_bytes_stay_intact() -> None:
    """A real socket read through ReadAhead, every view kept and none released: reading stops
    within MAX_BLOCKS buffers, the kept views still hold what was sent; released from another
    thread, reading goes on to the end and every byte arrives in order."""
    size = 256 * KIB
    data = random.Random(5).randbytes(4 * MAX_BLOCKS * size)

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(data)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proto = ReadAhead(size)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: proto, "127.0.0.1", port)
        assert isinstance(transport, asyncio.Transport)
        try:
            kept = await keep_until_starved(proto, transport, 30)
            got = sum(len(view) for view, _, _ in kept)
            assert 0 < got <= MAX_BLOCKS * size < len(data)
            for view, at, _ in kept:  # nothing was written over
                assert view == data[at : at + len(view)]
            releases = [r for _, _, r in kept]
            worker = threading.Thread(target=lambda: [r() for r in releases])
            worker.start()
            worker.join(timeout=30)
            parts = [bytes(v) for v, _, _ in kept]
            for _ in range(100_000):
                if got == len(data):
                    break
                if not proto.available:
                    await proto.wait_more(30)
                n = proto.available
                view = proto.lend(n)
                release = proto.keep()  # kept and given back at once, as the hasher does
                parts.append(bytes(view))
                proto.consume(n)
                release()
                got += n
            assert b"".join(parts) == data
        finally:
            transport.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("connections", [1, 4])
def test_download_verified_through_kept_views_and_corruption_caught(
    policy: bitsnb.Policy, tmp_path: Path, server: FileServer, connections: int
) -> None:
    """40 MiB with a known sha256 over the lean transport (one connection: views handed to
    the hasher; several: the prefix's connection hands its views): verified; then the same
    body with one byte changed past the inline part is caught."""
    size = 40 * MIB
    url = server.add_random_file("big.bin", size, seed=9)
    known = "sha256:" + hashlib.sha256(server.path("big.bin").read_bytes()).hexdigest()
    policy.max_connections_per_file = connections
    with bitsnb.Manager(store=tmp_path / "s.db", policy=policy) as mgr:
        job = mgr.create_job("big")
        job.add_file(url, tmp_path / "big.bin", known_hash=known)
        job.resume()
        assert job.wait(timeout=120) is JobState.TRANSFERRED
        assert job.files[0].hash == known and job.files[0].validation_state
        job.complete()
        seed = 5
        assert random.Random(seed).randrange(size) > 8 * MIB  # the server's rule for the place
        server.inject("big.bin", Fault.corrupt(seed=seed))
        job = mgr.create_job("again")
        job.add_file(url, tmp_path / "again.bin", known_hash=known)
        job.resume()
        assert job.wait(timeout=120) is JobState.ERROR
        assert job.error is not None and job.error.code == BG_E_VALIDATION_FAILED
        assert not (tmp_path / "again.bin").exists()
