"""Caps that count what crossed the wire (issue 14, session 6): bytes a connection holds ahead
of the engine are charged as they arrive; a cap opens only the connections it needs; a capped
manager's bandwidth loop does not tick 100 times a second. Real sockets, the server's clock."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from _support.raw_http import ScriptServer

import bitsnb
from bitsnb import JobState
from bitsnb._buckets import Budgets, burst_for
from bitsnb._pacing import Pacer
from bitsnb._tcpinfo import tcp_info_available
from bitsnb.testing import unacked_bytes

KiB = 1024
linux_only = pytest.mark.skipif(not tcp_info_available(), reason="TCP_INFO is Linux-only")


def test_a_cap_needs_one_connection_on_a_short_round_trip() -> None:
    """No cap: no limit on files at once; a cap over a round trip one window carries: one."""
    budgets = Budgets()
    pacer = Pacer(bitsnb.Policy(background="full"), budgets, available=True)
    job = uuid.uuid4()
    assert pacer.connections_for(job, False) is None
    budgets.set_job_rate(job, 100_000)
    assert pacer.connections_for(job, False) == 1
    budgets.set_max_bandwidth(50_000_000)  # the manager's cap counts for background only
    budgets.set_job_rate(job, None)
    assert pacer.connections_for(job, True) is None
    assert pacer.connections_for(job, False) == 2  # 50 MB/s × 0.1 s (guessed) over 4 MiB


def test_a_files_turn_under_a_cap_ends_once_its_bytes_are_in() -> None:
    """A cap that needs one connection admits one file at a time; once that file's body is
    all in (``received``, before its final fsync) the next file may connect, and the first's
    turn is not ended twice when its block ends: a third still waits for the second."""
    budgets = Budgets()
    pacer = Pacer(bitsnb.Policy(background="full"), budgets, available=True)
    job = uuid.uuid4()
    budgets.set_job_rate(job, 100_000)
    assert pacer.connections_for(job, False) == 1
    order: list[str] = []

    async def file(name: str, received: asyncio.Event, leave: asyncio.Event) -> None:
        async with pacer.admit(job, False):
            order.append(f"{name} in")
            await received.wait()
            pacer.received()  # the body's last byte: its fsync follows, still in the block
            order.append(f"{name} received")
            await leave.wait()
        order.append(f"{name} out")

    async def main() -> None:
        events = {n: (asyncio.Event(), asyncio.Event()) for n in "abc"}
        tasks = [asyncio.create_task(file(n, *events[n])) for n in "abc"]

        async def settle() -> None:
            for _ in range(20):  # bounded: enough loop turns for any waiter to get in
                await asyncio.sleep(0)

        await settle()
        assert order == ["a in"]
        events["a"][0].set()
        await settle()
        assert order == ["a in", "a received", "b in"]  # b connects while a is still syncing
        events["a"][1].set()
        await settle()
        assert order[-1] == "a out" and "c in" not in order  # a's turn ended once, not twice
        events["b"][0].set()
        await settle()
        assert order[-2:] == ["b received", "c in"]
        for n in "bc":
            events[n][0].set()
            events[n][1].set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(main())


def counting_body(
    size: int,
    log: list[tuple[float, int]],
    live: list[int],
    *,
    write: int = KiB,
    sndbuf: int = 4 * KiB,
) -> Callable[..., bool]:
    """A script sending *size* bytes *write* bytes at a time from a *sndbuf* send buffer (1 KiB
    from 4 KiB: a slow sender; 16 KiB from 16 KiB: as fast as the client lets it), logging when
    the kernel took each write, and counting the connections open at once (``live``: now, peak)."""
    lock = threading.Lock()

    def script(conn: socket.socket, _head: bytes) -> bool:
        with lock:
            live[0] += 1
            live[1] = max(live[1], live[0])
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
            )
            block = b"\0" * write
            for i in range(0, size, write):
                n = min(write, size - i)
                conn.sendall(block[:n])
                with lock:
                    log.append((time.monotonic(), n))
        finally:
            with lock:
                live[0] -= 1
        return False

    return script


def one_capped_body(
    srv: ScriptServer, store: Path, dest: Path, name: str, rate: int
) -> tuple[float, float, int]:
    """Fetch ``/name`` as one job capped at *rate*: (when it was resumed, how long it took to
    TRANSFERRED, the pacer's wake-ups meanwhile)."""
    with bitsnb.Manager(store=store, policy=bitsnb.Policy(background="full")) as mgr:
        pacer = mgr._amgr._open_parts().runner.pacer
        job = mgr.create_job(name)
        job.set_max_bandwidth(rate)
        job.add_file(f"{srv.base}/{name}", dest / f"{name}.bin")
        began = time.monotonic()
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED
        return began, time.monotonic() - began, pacer.wakeups


@linux_only
def test_a_cap_over_many_files_in_flight_opens_one_connection(
    srv: ScriptServer, store: Path, dest: Path
) -> None:
    """16 files asked in flight under a 100 kB/s cap on loopback: one connection at a time
    (the cap needs no more), and the server's first second carries at most the cap + 64 KiB
    (16 first windows carried every file out at once before)."""
    rate, files, size = 100_000, 16, 15_000
    log: list[tuple[float, int]] = []
    live = [0, 0]
    for i in range(files):
        srv.scripts[f"/f{i}"] = counting_body(size, log, live)
    policy = bitsnb.Policy(
        background="full",
        files_in_flight=files,
        max_connections_per_host=files,
        max_connections_per_file=1,
    )
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("many")
        job.set_max_bandwidth(rate)
        job.add_file_set([(f"{srv.base}/f{i}", dest / f"f{i}.bin") for i in range(files)])
        began = time.monotonic()
        job.resume()
        assert job.wait(timeout=120) is JobState.TRANSFERRED
        job.complete()
    assert all((dest / f"f{i}.bin").stat().st_size == size for i in range(files))
    assert live[1] == 1
    first = sum(n for t, n in log if t - began < 1.0)
    print(f"\nfirst second {first} B of {files * size}; at most {live[1]} connection(s) at once")
    assert first <= rate + 64 * KiB
    assert log[-1][0] - began >= (files * size - rate - 64 * KiB) / rate


@linux_only
def test_a_capped_body_charges_its_buffers_and_the_loop_ticks_slowly(
    srv: ScriptServer, store: Path, dest: Path
) -> None:
    """One 300 kB body at 100 kB/s: the server's clock sees at most the cap + 64 KiB in the
    first second (the first window charged as it lands), and with no connection yielding the
    bandwidth loop wakes a few times a second (at least 2.5 s of transfer: 100 a second before)."""
    rate, size = 100_000, 300_000
    log: list[tuple[float, int]] = []
    srv.scripts["/one"] = counting_body(size, log, [0, 0])
    began, took, wakeups = one_capped_body(srv, store, dest, "one", rate)
    first = sum(n for t, n in log if t - began < 1.0)
    print(f"\nfirst second {first} B; {wakeups} pacer wake-ups in {took:.1f} s")
    assert first <= rate + 64 * KiB
    assert took >= (size - rate - 64 * KiB) / rate
    assert wakeups <= 6 * took + 5


def fast_body(size: int, log: list[tuple[float, int]]) -> Callable[..., bool]:
    """``counting_body`` as fast as the client lets it: 16 KiB writes from 16 KiB."""
    return counting_body(size, log, [0, 0], write=16 * KiB, sndbuf=16 * KiB)


@linux_only
def test_a_fast_cap_pays_ahead_for_the_window_a_take_reopens(
    srv: ScriptServer, store: Path, dest: Path
) -> None:
    """One 32 MB body at 20 MB/s from a server that sends as fast as it may: its clock sees at
    most the cap + 64 KiB in the first second (charged only as they landed, the bytes that came
    in while a take waited put 0.1-1.7 MB over it at 5-50 MB/s), and the cap still holds after."""
    rate, size = 20_000_000, 32_000_000
    log: list[tuple[float, int]] = []
    srv.scripts["/fast"] = fast_body(size, log)
    began, _, _ = one_capped_body(srv, store, dest, "fast", rate)
    first = sum(n for t, n in log if t - began < 1.0)
    print(f"\nfirst second {first} B, {first - rate:+d} B against the cap")
    assert first <= rate + 64 * KiB
    assert log[-1][0] - began >= (size - rate - 64 * KiB) / rate


@linux_only
def test_a_run_of_files_pays_the_advance_once(srv: ScriptServer, store: Path, dest: Path) -> None:
    """Eight 1 MB files one after another at 5 MB/s, a connection each: what the job's bucket
    let through is the files' bytes plus at most one read-ahead paid in advance (each body
    hands the advance it did not use to the next), not eight."""
    rate, files, size = 5_000_000, 8, 1_000_000
    log: list[tuple[float, int]] = []
    for i in range(files):
        srv.scripts[f"/r{i}"] = fast_body(size, log)
    policy = bitsnb.Policy(background="full", files_in_flight=1, max_connections_per_file=1)
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        budgets = mgr._amgr._open_parts().runner.budgets
        job = mgr.create_job("run")
        job.set_max_bandwidth(rate)
        job.add_file_set([(f"{srv.base}/r{i}", dest / f"r{i}.bin") for i in range(files)])
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED
        granted = budgets.job(job.id).granted
    print(f"\nthe job's bucket let {granted} B through for {files * size} B of files")
    assert files * size <= granted <= files * size + burst_for(rate)


def wire_body(size: int, acked: list[tuple[float, int]]) -> Callable[..., bool]:
    """A script sending *size* bytes in 1 KiB writes from a 16 KiB send buffer (32 KiB in the
    kernel) that logs the body's bytes the client's kernel acknowledged (the wire, not the
    write: a write lands in the send buffer whatever the client does), after each write and
    then every millisecond until all is acknowledged (at most 10 s)."""

    def script(conn: socket.socket, _head: bytes) -> bool:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KiB)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        while unacked_bytes(conn) > 0:  # the head first: only the body's bytes are counted
            time.sleep(0.001)
        block = b"\0" * KiB
        for i in range(0, size, KiB):
            conn.sendall(block[: min(KiB, size - i)])
            acked.append((time.monotonic(), i + min(KiB, size - i) - unacked_bytes(conn)))
        end = time.monotonic() + 10
        while time.monotonic() < end and (left := unacked_bytes(conn)) > 0:
            time.sleep(0.001)
            acked.append((time.monotonic(), size - left))
        acked.append((time.monotonic(), size - unacked_bytes(conn)))
        return False

    return script


@linux_only
def test_a_slow_cap_takes_each_body_at_its_rate_from_the_first_byte(
    srv: ScriptServer, store: Path, dest: Path
) -> None:
    """Six 40 kB files one after another at 100 kB/s: on the wire (what the client's kernel
    acknowledged), each body's first 24 kB take at least their time at the cap less a small
    window (a 4 KiB receive window and 4 KiB of read-ahead, with 4 KiB to spare). Before, a
    body was read ahead in full until the pacer first saw it: 37 of a 37.5 kB body crossed at
    once, and the job's 1 s windows swung ±25 %."""
    rate, files, size, part = 100_000, 6, 40_000, 24_000
    logs: list[list[tuple[float, int]]] = [[] for _ in range(files)]
    for i in range(files):
        srv.scripts[f"/s{i}"] = wire_body(size, logs[i])
    policy = bitsnb.Policy(background="full", files_in_flight=files, max_connections_per_file=1)
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("slow")
        job.set_max_bandwidth(rate)
        job.add_file_set([(f"{srv.base}/s{i}", dest / f"s{i}.bin") for i in range(files)])
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED
    assert all(log and log[-1][1] == size for log in logs)
    spans = [next(t for t, n in log if n >= part) - log[0][0] for log in logs]
    print(
        f"\neach body's first {part} B on the wire took, s: " + " ".join(f"{s:.3f}" for s in spans)
    )
    assert min(spans) >= (part - 12 * KiB) / rate
