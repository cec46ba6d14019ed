"""The read timeout and bytes that came in the same loop turn: the bytes win."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bitsnb._readahead import ReadAhead


def test_bytes_that_beat_a_stalled_loops_timer_are_taken() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        proto = ReadAhead(64 * 1024)

        def deliver() -> None:
            view = proto.get_buffer(-1)
            view[:5] = b"hello"
            proto.buffer_updated(5)

        def stall_then_deliver() -> None:
            time.sleep(0.3)  # the loop stalls past the read timeout (a loaded machine) ...
            loop.call_soon(deliver)  # ... and the bytes are handled in the timer's own turn

        loop.call_later(0.05, stall_then_deliver)
        await proto.wait_more(0.1)
        return proto.available

    assert asyncio.run(main()) == 5


def test_a_timeout_with_no_bytes_is_a_read_timeout() -> None:
    async def main() -> None:
        await ReadAhead(64 * 1024).wait_more(0.05)

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(main())
