"""The receive buffer a new connection starts with, set before it connects (a cap's window).

Linux picks a connection's first receive window, and its clamp, from the buffer the socket has
when it connects (ten segments: 640 KiB on loopback), and never shrinks a window once offered:
set after the body has begun, a 100 kB/s cap's first second got +174 KiB. The job's run (a
task) says here what its new connections should start with (``use``, a context variable, so
its segment tasks inherit it); the lean transport asks (``wanted``) and, when a size is
wanted, opens the socket itself with ``SO_RCVBUF`` set before ``connect`` (the first window
offered) and ``TCP_WINDOW_CLAMP`` right after it, before the request (``connect_sized``). The
pacer grows both once the body's round trip is known; a window can grow, never shrink.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import socket
from collections.abc import Callable

__all__ = ["autotune_max", "clamp_window", "connect_sized", "fixed_buffer_max", "use", "wanted"]

_WINDOW_CLAMP: int | None = getattr(socket, "TCP_WINDOW_CLAMP", None)

_wanted: contextvars.ContextVar[Callable[[], int | None] | None] = contextvars.ContextVar(
    "bitsnb_connect_buffer", default=None
)


def use(size: Callable[[], int | None]) -> None:
    """This task's (and its children's) new connections start with ``size()`` (None: the
    kernel's default)."""
    _wanted.set(size)


def wanted() -> int | None:
    """The receive buffer a connection opened now should start with; None for the default."""
    size = _wanted.get()
    return size() if size is not None else None


def _proc_ints(path: str) -> list[int]:
    try:
        with open(path, encoding="ascii") as fh:
            return [int(v) for v in fh.read().split()]
    except (OSError, ValueError):
        return []


@functools.cache
def fixed_buffer_max() -> int:
    """The largest ``SO_RCVBUF`` an unprivileged process may set (``net.core.rmem_max``;
    212992 on a stock Linux, which is a 4 MB/s window at 50 ms). Unknown: 4 MiB."""
    got = _proc_ints("/proc/sys/net/core/rmem_max")
    return got[0] if got else 4 * 1024 * 1024


@functools.cache
def autotune_max() -> int:
    """The most Linux's receive-buffer autotuning grows a socket to (``tcp_rmem``'s third
    value; 6 MiB stock). Unknown: 6 MiB."""
    got = _proc_ints("/proc/sys/net/ipv4/tcp_rmem")
    return got[2] if len(got) == 3 else 6 * 1024 * 1024


def clamp_window(sock: socket.socket, size: int) -> None:
    """Clamp *sock*'s receive window to *size* bytes (after connect: a clamp set before it
    would also cap the window scale agreed in the handshake, and so the window for good)."""
    if _WINDOW_CLAMP is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _WINDOW_CLAMP, size)


async def connect_sized(host: str, port: int, size: int) -> socket.socket:
    """A TCP socket connected to *host*:*port*, its receive buffer sized to *size* before the
    handshake; each resolved address in turn, the last error raised if none answers."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"{host}:{port} resolved to no address")
    for family, kind, proto, _, addr in infos:  # bounded: the resolved addresses
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # the first window
            await loop.sock_connect(sock, addr)
            clamp_window(sock, size)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error
