"""``python -m bench._bandwidth_caps [--conns 1,16,200] [--cpu [--rounds N]] [RATE ...]``: caps on the server's clock.

A raw HTTP server (another process, a thread per connection, no library) sends each response in chunks of 1 % of the cap (1–16
KiB) from a 16 KiB send buffer and logs when each write was taken by its kernel; one bitsnb job
capped at 100 kB/s, 5 MB/s and 50 MB/s (``job.set_max_bandwidth``) downloads 6 s worth of bytes
asking for 1, 16 and 200 files in flight (``files_in_flight``; under a cap bitsnb opens only
the connections the cap needs, and each line says how many the server saw open at once).
Per case and per clock: the bytes in
the first second over the cap, the worst later 1 s window against the cap, and the whole
transfer's rate (the first request's arrival to the last byte). Two clocks: **the wire**, the
bytes the client's kernel acknowledged (each connection's bytes written less its ``SIOCOUTQ``,
unsent plus unacknowledged, sampled every 2 ms by one thread), which is what crossed the link;
and **the write**, when each write was taken by the server's kernel, which runs ahead of the
wire by the server's send buffer (32 KiB here; a connection's first write fills it whatever the
client does, so 16 files of 37.5 kB one after another are a staircase of 32 KiB steps on it).
``--cpu``: CPU seconds per GiB of bitsnb's process (the server is another process) for 512 MB
over one connection at 50 MB/s capped against the same bytes uncapped, each run in a fresh
process, ``--rounds`` pairs (default 3) interleaved, the order alternating; the pairs' ratios and
their median (on this VM one run's page-cache writes cost 0.2 to 2 CPU-s per GiB, see the README's
"Bandwidth": a single pair says little)."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import bitsnb
from bitsnb.testing import unacked_bytes

from ._stats import pair_ratios, spread

__all__ = ["cpu_cost", "measure"]

SNDBUF = 16 * 1024
SECONDS = 6.0


_SAMPLE = 0.002  # seconds between the wire clock's samples


class _Wire:
    """The wire clock: one thread samples each open connection's acknowledged bytes."""

    def __init__(self) -> None:
        self.log: list[tuple[float, int]] = []  # (t, bytes acknowledged since the last sample)
        self._conns: dict[socket.socket, list[int]] = {}  # conn → [written, acknowledged]
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, conn: socket.socket) -> list[int]:
        with self._lock:
            self._conns[conn] = counts = [0, 0]
        return counts

    def drain(self, conn: socket.socket, timeout: float) -> None:
        """Wait (bounded) until the client acknowledged all *conn*'s bytes, then stop sampling it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and unacked_bytes(conn) > 0:
            time.sleep(_SAMPLE)
        self._sample(conn)
        with self._lock:
            del self._conns[conn]

    def _sample(self, conn: socket.socket) -> None:
        with self._lock:
            counts = self._conns.get(conn)
            if counts is None:
                return
            written = counts[0]  # read before the queue: a write between undercounts, once
            acked = max(counts[1], written - unacked_bytes(conn))
            if acked > counts[1]:
                self.log.append((time.monotonic(), acked - counts[1]))
                counts[1] = acked

    def _run(self) -> None:
        while not self._done.wait(_SAMPLE):  # bounded by close()
            with self._lock:
                conns = list(self._conns)
            for conn in conns:
                try:
                    self._sample(conn)
                except OSError:
                    pass  # closed between the listing and the sample

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def _serve_one(
    conn: socket.socket,
    size: int,
    chunk: int,
    log: list[tuple[float, int]],
    wire: _Wire | None = None,
) -> None:
    with conn:
        conn.settimeout(60)
        if chunk <= SNDBUF:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        head = b""
        while b"\r\n\r\n" not in head:  # the request head (bounded by the timeout)
            got = conn.recv(65536)
            if not got:
                return
            head += got
        log.append((time.monotonic(), 0))  # the request arrived
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
        counts = wire.add(conn) if wire is not None else [0, 0]
        conn.sendall(head)
        counts[1] = counts[0] = len(head)  # the wire clock counts the body's bytes only
        block = b"\0" * chunk
        sent = 0
        while sent < size:
            n = min(chunk, size - sent)
            conn.sendall(block[:n])
            sent += n
            counts[0] += n
            log.append((time.monotonic(), n))
        log.append((time.monotonic(), -1))  # the response written: the connection ends
        if wire is not None:
            wire.drain(conn, 60)


def _serve(
    listener: socket.socket,
    n: int,
    size: int,
    chunk: int,
    log: list[tuple[float, int]],
    wire: _Wire | None = None,
) -> list[threading.Thread]:
    threads = []
    for _ in range(n):  # bounded: one accept per file
        conn, _ = listener.accept()
        t = threading.Thread(target=_serve_one, args=(conn, size, chunk, log, wire), daemon=True)
        t.start()
        threads.append(t)
    return threads


def _serve_process(listener: socket.socket, n: int, size: int, chunk: int, out: Connection) -> None:
    """The server of ``measure``: serve *n* responses, then send the write and wire logs back."""
    log: list[tuple[float, int]] = []
    wire = _Wire()
    for t in _serve(listener, n, size, chunk, log, wire):
        t.join(timeout=SECONDS * 3 + 60)
    wire.close()
    out.send((log, wire.log))


def _download(
    port: int, files: int, rate: float | None, tmp: Path, timeout: float
) -> bitsnb.JobState:
    policy = bitsnb.Policy(
        background="full",
        files_in_flight=files,
        max_connections_per_host=files,
        max_connections_per_file=1,
        max_files_per_job=max(200, files),
    )
    with bitsnb.Manager(store=tmp / "jobs.db", policy=policy) as mgr:
        job = mgr.create_job("capped")
        job.set_max_bandwidth(rate)
        job.add_file_set(
            [(f"http://127.0.0.1:{port}/f{i}", tmp / f"f{i}.bin") for i in range(files)]
        )
        job.resume()
        state = job.wait(timeout=timeout)
        job.cancel()
    return state


def _clock(
    log: list[tuple[float, int]], start: float, total_bytes: int, rate: float
) -> dict[str, float]:
    """One clock's figures from its (time, bytes) log: the first second over the cap, the worst
    later 1 s window (a fraction of the cap), how many, and the whole transfer's rate / cap."""
    cum: list[tuple[float, int]] = []
    acc = 0
    for t, n in sorted(log):
        if n > 0:
            acc += n
            cum.append((t, acc))

    def by(s: float) -> int:
        return max((b for t, b in cum if t - start < s), default=0)

    windows = []
    for k in range(1, int(SECONDS) + 2):
        a, b = by(k), by(k + 1)
        if b >= total_bytes:
            break
        windows.append((b - a) / rate)
    last = cum[-1][0] if cum else start
    return {
        "first_second_over_cap": by(1.0) - rate,
        "worst_window": max(windows, key=lambda w: abs(w - 1)) if windows else float("nan"),
        "windows": len(windows),
        "total": total_bytes / max(last - start, 1e-9) / rate,
    }


def measure(rate: float, conns: int = 1) -> dict[str, dict[str, float]]:
    """One capped download over *conns* files; per clock ("wire", "write") the figures of the
    module docstring, and under "run" the set-up time and the connections open at once."""
    size = max(1, int(rate * SECONDS / conns))
    chunk = max(1024, min(SNDBUF, int(rate / 100)))
    log: list[tuple[float, int]] = []
    wire: list[tuple[float, int]] = []
    listener = socket.create_server(("127.0.0.1", 0), backlog=conns)
    port = listener.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    theirs, ours = ctx.Pipe(duplex=False)
    server = ctx.Process(
        target=_serve_process, args=(listener, conns, size, chunk, ours), daemon=True
    )
    server.start()  # its own process: a thread would share bitsnb's GIL (and skew the clock)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.monotonic()  # CLOCK_MONOTONIC: the same clock in both processes
        state = _download(port, conns, rate, Path(tmp), SECONDS * 3 + 60)
    if theirs.poll(90):
        log, wire = theirs.recv()
    server.join(timeout=10)
    if server.is_alive():
        server.kill()
    listener.close()
    if state is not bitsnb.JobState.TRANSFERRED or not log:
        raise RuntimeError(f"the capped download ended {state.name}")
    log.sort()
    start = min(t for t, n in log if n == 0)  # the first request's arrival
    open_now = peak = 0
    for _, n in log:
        open_now += 1 if n == 0 else -1 if n < 0 else 0
        peak = max(peak, open_now)
    total_bytes = size * conns
    return {
        "wire": _clock(wire, start, total_bytes, rate),
        "write": _clock(log, start, total_bytes, rate),
        "run": {"setup": start - began, "open_at_once": peak},
    }


def _serve_forked(listener: socket.socket, nbytes: int) -> None:
    """The CPU run's server, in its own process (a thread would share bitsnb's GIL and CPU)."""
    conn, _ = listener.accept()
    _serve_one(conn, nbytes, 256 * 1024, [])


def cpu_cost(rate: float | None, nbytes: int = 512_000_000) -> float:
    """bitsnb's CPU seconds per GiB for one download of *nbytes* at *rate* (None: uncapped)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(
        target=_serve_forked, args=(listener, nbytes), daemon=True
    )
    server.start()  # before the manager's threads exist
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = time.process_time()
        state = _download(port, 1, rate, Path(tmp), 600)
        cpu = time.process_time() - cpu0
    server.join(timeout=30)
    if server.is_alive():
        server.kill()
    listener.close()
    if state is not bitsnb.JobState.TRANSFERRED:
        raise RuntimeError(f"the download ended {state.name}")
    return cpu / (nbytes / 2**30)


def _cpu_one(rate: str) -> float:
    """``cpu_cost`` at *rate* ("none": uncapped) in a fresh Python process."""
    out = subprocess.run(
        [sys.executable, "-m", "bench._bandwidth_caps", "--cpu-one", rate],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(out.stdout.split()[-1])


def _cpu_rounds(rounds: int) -> None:
    """Interleaved pairs of uncapped and 50 MB/s runs; print each and the median extra CPU."""
    free: list[float] = []
    capped: list[float] = []
    for r in range(rounds):
        order = ("none", "50e6") if r % 2 == 0 else ("50e6", "none")
        got = {rate: _cpu_one(rate) for rate in order}
        free.append(got["none"])
        capped.append(got["50e6"])
        print(
            f"round {r + 1}: CPU per GiB uncapped {free[-1]:.2f} s, capped at 50 MB/s "
            f"{capped[-1]:.2f} s ({100 * (capped[-1] / free[-1] - 1):+.1f} %)",
            flush=True,
        )
    extra = [100 * (ratio - 1) for ratio in pair_ratios(capped, free)]
    print(
        f"CPU per GiB, median of {rounds}: uncapped {spread(free).median:.2f} s, capped"
        f" {spread(capped).median:.2f} s; capped / uncapped pair by pair, extra %:"
        f" {spread(extra).fmt(1)}"
    )


def main(argv: list[str]) -> int:
    conns = [1]
    if "--conns" in argv:
        i = argv.index("--conns")
        conns = [int(c) for c in argv[i + 1].split(",")]
        argv = argv[:i] + argv[i + 2 :]
    if "--cpu-one" in argv:  # one run, in this fresh process (what --cpu spawns)
        rate = argv[argv.index("--cpu-one") + 1]
        print(cpu_cost(None if rate == "none" else float(rate)))
        return 0
    if "--cpu" in argv:
        rounds = 3
        if "--rounds" in argv:
            i = argv.index("--rounds")
            rounds = int(argv[i + 1])
            argv = argv[:i] + argv[i + 2 :]
        _cpu_rounds(rounds)
        argv = [a for a in argv if a != "--cpu"]
        if not argv and "--conns" not in sys.argv:
            return 0
    rates = [float(a) for a in argv] or [100e3, 5e6, 50e6]
    for rate in rates:
        for n in conns:
            m = measure(rate, n)
            print(
                f"cap {rate / 1e6:g} MB/s, {n} files in flight asked "
                f"({m['run']['open_at_once']:.0f} connections open at most):"
            )
            for clock in ("wire", "write"):
                c = m[clock]
                print(
                    f"  {clock:5}: first second {c['first_second_over_cap'] / 1024:+.0f} KiB over"
                    f" the cap; worst of {c['windows']:.0f} later 1 s windows"
                    f" {100 * (c['worst_window'] - 1):+.1f} %; whole transfer"
                    f" {100 * (c['total'] - 1):+.1f} %",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
