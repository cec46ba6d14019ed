"""A capped job's connections start with the cap's window (issue 14): the receive buffer is
set before ``connect`` (Linux's first window comes from it and is never taken back), the window
clamp right after; outside a job's run nothing is changed."""

from __future__ import annotations

import asyncio
import contextvars
import socket

import pytest

from bitsnb import _connectbuf
from bitsnb._tcpinfo import tcp_info_available

linux_only = pytest.mark.skipif(not tcp_info_available(), reason="TCP_WINDOW_CLAMP is Linux's")


def test_nothing_is_wanted_outside_a_jobs_run() -> None:
    assert contextvars.Context().run(_connectbuf.wanted) is None


def test_a_task_and_its_children_want_what_it_said() -> None:
    async def child() -> int | None:
        return _connectbuf.wanted()

    async def run() -> tuple[int | None, int | None]:
        _connectbuf.use(lambda: 20_000)
        return _connectbuf.wanted(), await asyncio.create_task(child())

    async def main() -> tuple[tuple[int | None, int | None], int | None]:
        got = await asyncio.create_task(run())
        return got, _connectbuf.wanted()  # the job's task set it, not its parent

    assert asyncio.run(main()) == ((20_000, 20_000), None)


@linux_only
def test_a_sized_connection_has_its_buffer_and_clamp_from_the_start() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def main() -> tuple[int, int]:
        sock = await _connectbuf.connect_sized("127.0.0.1", port, 16 * 1024)
        with sock:
            clamp = getattr(socket, "TCP_WINDOW_CLAMP", 10)
            return (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                sock.getsockopt(socket.IPPROTO_TCP, clamp),
            )

    with listener:
        rcvbuf, clamp = asyncio.run(main())
    assert rcvbuf == 2 * 16 * 1024  # Linux doubles it for its bookkeeping
    assert clamp == 16 * 1024


def test_no_address_answers_raises_the_connect_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(_connectbuf.connect_sized("127.0.0.1", port, 16 * 1024))
