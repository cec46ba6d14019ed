"""What a server's socket has not yet had acknowledged: the wire clock of the caps' tests and
bench (bytes written less these are bytes the client's kernel took)."""

from __future__ import annotations

import fcntl
import socket
import sys
import termios

__all__ = ["unacked_bytes"]


def unacked_bytes(conn: socket.socket) -> int:
    """Bytes *conn* holds unsent or unacknowledged (``SIOCOUTQ``, which is ``TIOCOUTQ``)."""
    got = fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int.from_bytes(got, sys.byteorder, signed=True)
