"""How ``FileServer`` sends a response body: sendfile, or shaped by a fault (chunked,
corrupted, throttled), counting the file bytes handed to the socket."""

from __future__ import annotations

import io
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import IO

__all__ = ["BodySender"]

_CHUNK = 1 << 20  # chunk size used by the chunked-encoding fault


class BodySender:
    """Sends byte ranges of a file on one connection; *count* hears of every byte sent,
    *abort* ends the connection, *closing* tells whether it is ending, *stopping* is the
    server's stop event (a throttled body gives up when it is set)."""

    def __init__(
        self,
        sock: socket.socket,
        wfile: io.BufferedIOBase,
        *,
        count: Callable[[int], None],
        abort: Callable[[], None],
        closing: Callable[[], bool],
        stopping: threading.Event,
    ) -> None:
        self._sock = sock
        self._wfile = wfile
        self._count = count
        self._abort = abort
        self._closing = closing
        self._stopping = stopping

    def plain(self, fh: IO[bytes], offset: int, count: int) -> None:
        """sendfile() ``count`` bytes from ``offset``; count them (optimistically, then exactly)."""
        if count <= 0:
            return
        # Count before sending so a client that has read the bytes never sees a stale log;
        # corrected below to what sendfile really returned.
        self._count(count)
        fh.seek(offset)
        try:
            sent = self._sock.sendfile(fh, offset, count)
        except OSError:
            self._count(max(0, fh.tell() - offset) - count)
            raise
        self._count(sent - count)
        if sent != count:  # file shrank underneath us: the promised length cannot be met
            self._abort()

    def corrupted(self, fh: IO[bytes], start: int, length: int, seed: int) -> None:
        """The body with one byte changed (seeded place and XOR mask), same length."""
        if length <= 0:
            return
        rng = random.Random(seed)
        at = rng.randrange(length)
        mask = rng.randrange(1, 256)
        self.plain(fh, start, at)
        fh.seek(start + at)
        byte = fh.read(1)
        self._wfile.write(bytes([byte[0] ^ mask]))
        self._wfile.flush()
        self._count(1)
        self.plain(fh, start + at + 1, length - at - 1)

    def throttled(
        self, fh: IO[bytes], start: int, length: int, rate: int, every: float = 0.05
    ) -> None:
        """The body in pieces of *every* seconds' worth, each sent when the rate allows (stop
        interrupts): 50 ms gaps look like a capping server holding the connection back."""
        piece = max(1, int(rate * every))
        began = time.monotonic()
        sent = 0
        while sent < length:
            n = min(piece, length - sent)
            self.plain(fh, start + sent, n)
            sent += n
            due = began + sent / rate - time.monotonic()
            if due > 0 and self._stopping.wait(due):
                self._abort()
                return

    def chunked(self, fh: IO[bytes], start: int, length: int) -> None:
        """The body in chunked transfer coding, 1 MiB chunks (the ``no_length`` fault)."""
        pos, end = start, start + length
        while pos < end and not self._closing():
            n = min(_CHUNK, end - pos)
            self._wfile.write(b"%x\r\n" % n)
            self.plain(fh, pos, n)
            self._wfile.write(b"\r\n")
            pos += n
        if not self._closing():
            self._wfile.write(b"0\r\n\r\n")
