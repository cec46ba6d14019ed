"""A cap on a real connection: a ``bitsnb.testing.FileServer`` download through httpx (not
bitsnb's engine), paced by ``Throttle.take`` per chunk, the receive buffer sized by
``receive_buffer_for``.

Timed three ways: the client's reads; the server's log (a request is finished once its
``sendfile`` has returned); and the bytes the client's kernel took off the wire
(``tcp_info``'s ``bytes_received``), which is what "the cap holds on the wire" means. The
server's side cannot show the pacing for a file this small: its socket's send buffer takes the
whole 600 kB at once (measured: finished at 0.00 s), so the receiver's kernel counter is the
wire clock here. A cap is a lower bound on time, so only loose bounds are asserted; the figures
are printed (``pytest -s``) for the report.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from bitsnb._bandwidth import receive_buffer_for
from bitsnb._buckets import Throttle, TokenBucket
from bitsnb._tcpinfo import tcp_info, tcp_info_available
from bitsnb.testing import FileServer

SIZE = 600_000
RATE = 200_000
KiB = 1024


def _download(server: FileServer, url: str, rcvbuf: int | None) -> dict[str, Any]:
    """GET *url* paced at RATE; → timings (s from the request) and the kernel's read-ahead."""
    server.reset_log()
    server_done: list[float] = []

    def watch() -> None:
        server.wait_requests(1, timeout=30)
        server_done.append(time.monotonic())

    async def main() -> dict[str, Any]:
        options = [] if rcvbuf is None else [(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)]
        transport = httpx.AsyncHTTPTransport(socket_options=options)
        throttle = Throttle(TokenBucket(RATE))
        read = chunks = 0
        ahead = 0  # most bytes the kernel had taken off the wire beyond what was read
        wire: list[tuple[float, int]] = []
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            began = time.monotonic()
            async with client.stream("GET", url) as resp:
                assert resp.status_code == 200
                sock = resp.extensions["network_stream"].get_extra_info("socket")
                async for chunk in resp.aiter_raw():
                    read += len(chunk)
                    chunks += 1
                    info = tcp_info(sock) if sock is not None else None
                    if info is not None and info.bytes_received is not None:
                        body_on_wire = min(SIZE, info.bytes_received)  # the head: a few bytes
                        wire.append((time.monotonic() - began, body_on_wire))
                        ahead = max(ahead, body_on_wire - read)
                    await throttle.take(len(chunk))
            ended = time.monotonic()
        return {
            "read": read,
            "chunks": chunks,
            "client_s": ended - began,
            "ahead": ahead,
            "wire": wire,
            "began": began,
        }

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = asyncio.run(main())
    watcher.join(timeout=30)
    out["server_s"] = server_done[0] - out["began"]
    return out


@pytest.mark.skipif(not tcp_info_available(), reason="TCP_INFO is Linux-only")
def test_a_200_kb_s_cap_holds_on_the_wire(server: FileServer) -> None:
    url = server.add_random_file("capped.bin", SIZE)
    rcvbuf = receive_buffer_for(RATE, 0.0001)  # loopback: the floor
    assert rcvbuf is not None
    sized = _download(server, url, rcvbuf)
    assert sized["read"] == SIZE and server.bytes_sent("capped.bin") == SIZE
    wire_full = next(t for t, n in sized["wire"] if n >= SIZE)
    first_second = max((n for t, n in sized["wire"] if t < 1.0), default=0)
    free = _download(server, url, None)  # the kernel's autotuning, for comparison only
    print(
        f"\n600 kB at a 200 kB/s cap, SO_RCVBUF {rcvbuf}: client {sized['client_s']:.2f} s, "
        f"{sized['chunks']} chunks; on the wire: all in at {wire_full:.2f} s, "
        f"{first_second} B in the first second, at most {sized['ahead']} B ahead of the "
        f"reads; server finished sending at {sized['server_s']:.2f} s (ideal {SIZE / RATE:.2f} s)"
        f"\nwithout SO_RCVBUF: client {free['client_s']:.2f} s, at most {free['ahead']} B "
        f"ahead of the reads, {free['chunks']} chunks"
    )
    assert sized["client_s"] >= 2.5  # a cap only bounds time from below
    assert sized["client_s"] < 10.0  # ... and pacing did not stall
    # on the wire: the kernel holds at most its (doubled) buffer beyond the reads
    assert sized["ahead"] <= 2 * rcvbuf + 64 * KiB
    assert wire_full >= 2.5 - (2 * rcvbuf + 64 * KiB) / RATE
    assert first_second <= RATE + 64 * KiB + 2 * rcvbuf
