"""A loopback TCP server that answers each request with bytes a test scripts, no HTTP library.

Each path has a script ``(socket, request head) -> keep the connection``: it writes the exact
bytes of a response (chunked bodies, HTTP/1.0, lying lengths, malformed heads, stalls, a byte
at a time), so the client side of every framing and failure path meets a real socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable

Script = Callable[[socket.socket, bytes], bool]  # (socket, request head) -> keep the connection
TIMEOUT = 10.0  # bound on every blocking call of the server


class ScriptServer:
    """Answers each request on 127.0.0.1 with the script of its path (``/x?y`` → ``/x``)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.scripts: dict[str, Script] = {}
        self.requests: list[bytes] = []
        self.connections = 0
        self._tls = tls
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    @property
    def base(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def stopping(self) -> threading.Event:
        """Set when the server closes: scripts that wait or drip should stop on it."""
        return self._stop

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            conn.settimeout(TIMEOUT)
            buf = b""
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head)
                target = head.split(b" ")[1].decode()
                path = target.split("?", 1)[0]
                if path.startswith("http://"):  # absolute form: the request came through a proxy
                    path = "/" + path.split("/", 3)[3]
                if not self.scripts[path](conn, head):
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        # wakes the accept thread at once (closing alone does not: it would sleep out its 0.2 s)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._accept.join(timeout=TIMEOUT)
        for t in self._threads:
            t.join(timeout=TIMEOUT)


def reply(body: bytes, *headers: str, status: str = "200 OK", keep: bool = True) -> Script:
    """A script sending a Content-Length response."""
    extra = "".join(f"{h}\r\n" for h in headers)
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()

    def script(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(head + body)
        return keep

    return script


def raw(data: bytes, keep: bool = False) -> Script:
    """A script sending *data* as is, then keeping or closing the connection."""

    def script(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(data)
        return keep

    return script


def drip(
    slow: bytes, every: float, stop: threading.Event, *, before: bytes = b"", after: bytes = b""
) -> Script:
    """A script sending *before*, then *slow* one byte every *every* seconds (until *stop*),
    then *after*; it closes the connection."""

    def script(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(before)
        for i in range(len(slow)):
            if stop.wait(every):
                return False
            conn.sendall(slow[i : i + 1])
        conn.sendall(after)
        return False

    return script


def endless(data: bytes, stop: threading.Event, limit: float = TIMEOUT) -> Script:
    """A script sending *data* again and again until the client goes or *limit* seconds pass."""

    def script(conn: socket.socket, _head: bytes) -> bool:
        until = time.monotonic() + limit
        while not stop.is_set() and time.monotonic() < until:
            conn.sendall(data)
        return False

    return script


def stall(data: bytes, stop: threading.Event, seconds: float = TIMEOUT) -> Script:
    """A script sending *data*, then nothing for *seconds* (or until *stop*); it closes."""

    def script(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(data)
        stop.wait(seconds)
        return False

    return script
