"""Room in a connection's receive buffer: unread bytes are moved only when that is cheap or a
reader needs more than the buffer holds (a real socket pair, real reads)."""

from __future__ import annotations

import asyncio
import os
import socket

from _support.readahead import keep_until_starved

from bitsnb._readahead import MAX_BLOCKS, MIN_FREE, ReadAhead

SIZE = 256 * 1024


async def _connected(proto: ReadAhead) -> tuple[socket.socket, asyncio.Transport]:
    """*proto* reading one end of a socket pair; the other end is returned for writing."""
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().create_connection(lambda: proto, sock=ours)
    assert isinstance(transport, asyncio.Transport)
    theirs.setblocking(False)
    return theirs, transport


async def _filled(proto: ReadAhead, peer: socket.socket, data: bytes) -> None:
    """Send *data* and wait until the buffer holds it all."""
    await asyncio.get_running_loop().sock_sendall(peer, data)
    for _ in range(200):  # bounded: 2 s
        if proto.available >= len(data):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{proto.available} of {len(data)} bytes came")


def test_a_body_behind_a_consumed_head_is_read_in_place_then_reading_goes_on() -> None:
    head, body = b"H" * 200, os.urandom(3 * SIZE)

    async def main() -> bytes:
        proto = ReadAhead(SIZE)
        peer, transport = await _connected(proto)
        try:
            await _filled(proto, peer, head + body[: SIZE - len(head)])  # the buffer is full
            proto.lend(len(head))
            proto.consume(len(head))
            # 200 bytes of room would cost moving 256 KiB: the body stays where it is
            assert proto.start == len(head), "the unread body was moved for 200 bytes of room"
            got = bytearray()
            send = asyncio.create_task(
                asyncio.get_running_loop().sock_sendall(peer, body[SIZE - len(head) :])
            )
            while len(got) < len(body):  # bounded by the bytes sent, each wait by 2 s
                if not proto.available:
                    await proto.wait_more(2.0)
                n = proto.available
                got += proto.lend(n)
                proto.consume(n)
            await send
            return bytes(got)
        finally:
            transport.close()
            peer.close()

    assert asyncio.run(main()) == body


def test_a_reader_that_needs_more_than_the_buffer_holds_gets_the_room() -> None:
    # a line that straddles the end of a full buffer: the bytes before it were consumed, and
    # the reader waits for more, so the unread part moves to the front however large it is
    first = os.urandom(SIZE - 100)  # no CR LF needed: the test reads by counts
    rest = os.urandom(500)

    async def main() -> bytes:
        proto = ReadAhead(SIZE)
        peer, transport = await _connected(proto)
        try:
            await _filled(proto, peer, first + rest[:100])
            proto.lend(1000)
            proto.consume(1000)  # 1000 bytes of room (under MIN_FREE), SIZE - 1000 unread
            assert len(proto.buf) - proto.end < MIN_FREE
            send = asyncio.create_task(asyncio.get_running_loop().sock_sendall(peer, rest[100:]))
            want = SIZE - 1000 + len(rest) - 100
            while proto.available < want:  # bounded: each wait 2 s, the bytes sent
                await proto.wait_more(2.0)
            await send
            return bytes(proto.lend(proto.available))
        finally:
            transport.close()
            peer.close()

    assert asyncio.run(main()) == (first + rest)[1000:]


def test_a_reader_waiting_on_a_full_pool_goes_on_when_its_buffers_come_back() -> None:
    # every buffer of the pool kept (a hasher behind), the reader waiting for more; the
    # current buffer comes back first, then an older one: the one that ends the starving must
    # let reading go on although the current buffer, all read, has nothing left to move
    size = 128 * 1024
    data = os.urandom(3 * MAX_BLOCKS * size)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        proto = ReadAhead(size)
        peer, transport = await _connected(proto)
        send = asyncio.create_task(loop.sock_sendall(peer, data))
        try:
            kept = await keep_until_starved(proto, transport, 5.0)
            assert sum(len(view) for view, _, _ in kept) <= MAX_BLOCKS * size
            waiting = asyncio.create_task(proto.wait_more(5.0))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await asyncio.to_thread(lambda: [release() for _, _, release in reversed(kept)])
            await waiting  # a ReadTimeout here: the reader was left waiting on a paused read
            return proto.available
        finally:
            send.cancel()
            transport.close()
            peer.close()

    assert asyncio.run(main()) > 0
