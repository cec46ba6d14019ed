"""Reading a real connection through ``ReadAhead`` with every view kept, as a hasher that falls
behind does, until the pool of buffers is full and reading stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bitsnb._readahead import ReadAhead

Kept = tuple[memoryview, int, Callable[[], None]]  # the view, its offset, its release


async def keep_until_starved(
    proto: ReadAhead, transport: asyncio.Transport, timeout: float
) -> list[Kept]:
    """Take every byte that comes as a kept view until reading stops (each wait *timeout*)."""
    kept: list[Kept] = []
    got = 0
    for _ in range(100_000):  # bounded: each pass takes bytes or waits for them
        if proto.available:
            n = proto.available
            view = proto.lend(n)
            kept.append((view, got, proto.keep()))
            proto.consume(n)
            got += n
        elif not transport.is_reading():
            return kept  # starved: every buffer is kept
        else:
            await proto.wait_more(timeout)
    raise AssertionError("reading never stopped")
