"""The bytes a connection holds ahead of the engine: its kernel receive queue and the lean
transport's unread read-ahead.

A cap charged only for what the engine reads lets every buffer fill ahead of it: the sender's
clock saw a connection's first window (and, at 50 MB/s, megabytes of buffer) in the first
second. The pacer charges these bytes to the connection's buckets as they arrive and gives them
back as the engine reads them (``Pacer``, which also pays one read-ahead in advance), so the
buckets count what crossed the wire.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios

import httpx

from ._transport import unread_bytes

__all__ = ["held_ahead"]

_INT = struct.Struct("i")


def held_ahead(sock: socket.socket, resp: httpx.Response) -> int:
    """Bytes received on *sock* for *resp* that the engine has not read yet (0 if unknown)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * _INT.size)
        queued = int(_INT.unpack(raw)[0])
    except (OSError, ValueError):
        queued = 0
    return max(0, queued) + unread_bytes(resp)
