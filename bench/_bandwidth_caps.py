"""``python -m bench._bandwidth_caps``: cap accuracy on loopback, on the server's own clock.

A raw HTTP server (a thread, no library) sends each response 16 KiB at a time from a 16 KiB
send buffer and logs when each write was taken by its kernel; a bitsnb job capped at 100 kB/s,
5 MB/s and 50 MB/s (``job.set_max_bandwidth``; one connection) downloads 6 s worth of bytes.
Per cap: the bytes in the first second, each later 1 s window's rate against the cap, and the
whole transfer's rate. The server's write clock runs ahead of the wire by at most its send
buffer plus the client's receive buffer and read-ahead (both sized by bitsnb to the cap)."""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import bitsnb

__all__ = ["measure"]

CHUNK = 16 * 1024
SECONDS = 6.0


def _serve(listener: socket.socket, size: int, log: list[tuple[float, int]]) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(60)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
        head = b""
        while b"\r\n\r\n" not in head:  # the request head (bounded by the timeout)
            got = conn.recv(65536)
            if not got:
                return
            head += got
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        block = b"\0" * CHUNK
        sent = 0
        while sent < size:
            n = min(CHUNK, size - sent)
            conn.sendall(block[:n])
            sent += n
            log.append((time.monotonic(), sent))


def measure(rate: float) -> dict[str, float]:
    """One capped download; figures as the module docstring says."""
    size = int(rate * SECONDS)
    log: list[tuple[float, int]] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = threading.Thread(target=_serve, args=(listener, size, log), daemon=True)
    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        policy = bitsnb.Policy(background="full")
        with bitsnb.Manager(store=Path(tmp) / "jobs.db", policy=policy) as mgr:
            job = mgr.create_job("capped")
            job.set_max_bandwidth(rate)
            job.add_file(f"http://127.0.0.1:{port}/f", Path(tmp) / "f.bin")
            began = time.monotonic()
            job.resume()
            state = job.wait(timeout=SECONDS * 3 + 30)
            job.cancel()
    server.join(timeout=10)
    listener.close()
    if state is not bitsnb.JobState.TRANSFERRED or not log:
        raise RuntimeError(f"the capped download ended {state.name}")
    first = max((n for t, n in log if t - began < 1.0), default=0)
    windows = []
    for k in range(1, int(SECONDS)):
        a = max((n for t, n in log if t - began < k), default=0)
        b = max((n for t, n in log if t - began < k + 1), default=0)
        if b >= size:
            break
        windows.append((b - a) / rate)
    total = size / (log[-1][0] - began)
    return {
        "rate": rate,
        "first_second_over_cap": first - rate,
        "worst_window": max(windows, key=lambda w: abs(w - 1)) if windows else float("nan"),
        "total": total / rate,
    }


def main(argv: list[str]) -> int:
    rates = [float(a) for a in argv] or [100e3, 5e6, 50e6]
    for rate in rates:
        m = measure(rate)
        print(
            f"cap {rate / 1e6:g} MB/s: first second {m['first_second_over_cap'] / 1024:+.0f} KiB "
            f"over the cap; worst later 1 s window {100 * (m['worst_window'] - 1):+.1f} %; "
            f"whole transfer {100 * (m['total'] - 1):+.1f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
