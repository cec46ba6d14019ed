"""One lean connection's receive side: asyncio's buffered protocol reading into one reusable
buffer, lent out as views, reading paused while the buffer is full or the read-ahead reached.

A lent view may be *kept* past its turn (``keep``: the body's hasher on its own thread reads
it there, no copy): its buffer is then never moved or written over before the view's release,
and reading goes on in another buffer of the connection's small pool (at most ``MAX_BLOCKS``
buffers; with all of them kept, reading pauses until one is released, it never grows).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

import httpx

__all__ = ["MAX_BLOCKS", "MIN_FREE", "Eof", "ReadAhead"]

MIN_FREE = 64 * 1024  # compact the buffer before a read would get less room than this
MAX_BLOCKS = 8  # buffers one connection may have while views of them are kept


class _Block:
    """One receive buffer and how many kept views of it are still out."""

    __slots__ = ("buf", "kept", "view")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.kept = 0


class Eof(Exception):
    """The peer closed the connection (or it broke) while we waited for bytes."""


class ReadAhead(asyncio.BufferedProtocol):
    """One connection's receive side: a byte buffer ``[start, end)`` and one waiter."""

    def __init__(self, size: int) -> None:
        self._block = _Block(size)
        self.buf = self._block.buf
        self.view = self._block.view
        self.start = 0
        self.end = 0
        self.held = 0  # bytes from ``start`` lent out as a view; not moved until consumed
        self.eof = False
        self.error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._want = 1  # wake the waiter once this many bytes are buffered
        self._paused = False
        self.received = 0  # bytes ever received (tells a stale keep-alive from a reply)
        self.high = size  # reading pauses once this many bytes wait unread (read-ahead)
        self._lent: _Block = self._block  # the buffer the last lent view is of
        self._spare: list[_Block] = []  # released buffers, for the next switch
        self._blocks = 1  # buffers this connection has (current, kept and spare)
        self._starved = False  # paused until a kept buffer comes back
        self._lock = threading.Lock()  # kept counts: released on the hasher's thread
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- asyncio callbacks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._loop = asyncio.get_running_loop()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._block.kept:  # bytes before ``end`` may not move: go on after them, or switch
            if len(self.buf) - self.end < MIN_FREE and not self.held:
                self._switch()
        elif self.start == self.end and not self.held:
            self.start = self.end = 0
        elif len(self.buf) - self.end < MIN_FREE and not self.held and self._cheap():
            self._compact()
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        self.received += nbytes
        if self.end == len(self.buf) or self.end - self.start >= self.high:
            # full: a view lent now (the engine may hold it across an await, e.g. a bandwidth
            # bucket) would leave get_buffer nothing to give; consume() makes room and resumes
            self._pause()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    # -- consumer side ----------------------------------------------------------------------
    @property
    def available(self) -> int:
        return self.end - self.start

    def lend(self, n: int) -> memoryview:
        """The next *n* bytes as a view, valid until ``consume``. A full buffer stops reading
        meanwhile: it cannot be compacted under a lent view, and ``get_buffer`` must not
        answer with no room (asyncio drops the connection)."""
        self.held = n
        self._lent = self._block
        if self.end == len(self.buf):
            self._pause()
        return self.view[self.start : self.start + n]

    def keep(self) -> Callable[[], None]:
        """Keep the view lent last valid after ``consume``, until the returned function is
        called (once, from any thread): its buffer is not reused meanwhile."""
        block = self._lent
        with self._lock:
            block.kept += 1

        def release() -> None:
            with self._lock:
                block.kept -= 1
                if block.kept or block is self._block:
                    return
                self._spare.append(block)
                if not self._starved or self._loop is None:
                    return
                self._starved = False
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing waits to read
                self._loop.call_soon_threadsafe(self._make_room)

        return release

    def consume(self, n: int) -> None:
        """Drop *n* bytes from the front (and let reading go on if the buffer was full)."""
        self.start += n
        self.held = 0
        if self.start == self.end and not self._block.kept:
            self.start = self.end = 0
        self._make_room()

    def _cheap(self) -> bool:
        """Whether moving the unread bytes to the front copies no more than the room it frees.

        A response's head read with a buffer's worth of its body left the body behind a few
        hundred bytes of room: moving it there copied every 1 MiB body once more (200 × 1 MiB
        in 16 jobs: 199 compactions of ~1 MiB). The reader drains those bytes next anyway, and
        reading goes on in the emptied buffer. Nothing unread is always cheap."""
        return self.end - self.start <= self.start

    def _make_room(self, *, needed: bool = False) -> None:
        """A paused read goes on once there is room: compacted, or another buffer taken.
        *needed*: the reader waits for more than the buffer holds, so room is made whatever the
        copy costs."""
        if not self._paused or self.held:
            return
        # a reader already waiting (a kept buffer came back) needs room as much as a new one
        needed = needed or (self._waiter is not None and not self._waiter.done())
        if len(self.buf) - self.end < MIN_FREE:
            if self._block.kept:
                self._switch()
            elif self.start and (needed or self._cheap()):
                self._compact()
            elif not needed:
                return  # the reader drains the unread bytes first (never a tiny read)
        if self.end < len(self.buf) and self.end - self.start < self.high:
            self._paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def _switch(self) -> None:
        """Go on reading in another buffer (the unread bytes copied to its front): a spare
        one, or a new one while the pool is below MAX_BLOCKS; else starve until a release."""
        with self._lock:
            old = self._block
            if not old.kept:  # released meanwhile: this buffer can be compacted after all
                new = None
            elif self._spare:
                new = self._spare.pop()
            elif self._blocks < MAX_BLOCKS:
                self._blocks += 1
                new = _Block(len(old.buf))
            else:
                self._starved = True
                self._pause()
                return
            if new is not None:
                self._block = new
        if new is None:
            if self.start:
                self._compact()
            return
        n = self.end - self.start
        new.view[:n] = old.view[self.start : self.end]  # one copy (a bytearray slice is two)
        self.buf, self.view = new.buf, new.view
        self.start, self.end = 0, n

    def trim(self) -> None:
        """Let spare buffers go (the connection goes idle)."""
        with self._lock:
            self._blocks -= len(self._spare)
            self._spare.clear()

    async def wait_more(self, timeout: float | None) -> None:
        """Return once a byte more than now is buffered; raise ``Eof`` or ``ReadTimeout``.

        The timeout thus counts from the last byte received, as a read timeout should.
        """
        if self.eof:
            raise Eof
        if self._paused and not self.held:
            self._make_room(needed=True)  # the caller needs more than the buffer holds
            if self._paused and not (self._starved or self._spare):  # (not a kept buffer's wait)
                raise httpx.RemoteProtocolError("the response does not fit the read buffer")
        fut = self._waiter = asyncio.get_running_loop().create_future()
        self._want = self.available + 1
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            # a loop that stalled past the timeout can run the timer in the same turn as the
            # bytes it waited for (found by a loaded CI run): when they came, they win
            if not fut.done() or fut.cancelled():
                raise httpx.ReadTimeout("timed out waiting for the server") from None
        finally:
            self._waiter = None
        if self.available < self._want:
            raise Eof

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done() and (self.eof or self.available >= self._want):
            w.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _compact(self) -> None:
        # a memoryview's slice assignment is one memmove, right where the slices overlap (a
        # bytearray slice on the right would copy the bytes twice); rare, see _cheap
        n = self.end - self.start
        self.view[:n] = self.view[self.start : self.end]
        self.start, self.end = 0, n
