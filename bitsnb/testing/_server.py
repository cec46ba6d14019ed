"""Loopback HTTP/1.1 static file server with fault injection, for tests, demos and benchmarks.

Standard library only: ``ThreadingHTTPServer`` in a daemon thread, bodies sent with ``sendfile``.
Here are the handler (one request: faults, Range, headers) and ``FileServer`` (life cycle, the
request log, admission); the served files are in ``_content``, the digest headers in
``_digests``, the bodies in ``_bodies`` and the logged request in ``_requests``.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import socketserver
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Self, get_args

from bitsnb._http_rules import RangeNotSatisfiable, format_content_range, parse_range
from bitsnb.testing._base import ThreadedServer
from bitsnb.testing._bodies import BodySender
from bitsnb.testing._content import ServedFiles, if_range_matches, validators
from bitsnb.testing._digests import DIGEST_KINDS, DigestBook, DigestKind, digest_fields
from bitsnb.testing._faults import Fault, FaultKind
from bitsnb.testing._requests import RequestRecord, request_name

__all__ = ["DIGEST_KINDS", "DigestKind", "FileServer"]

_STOP_JOIN_TIMEOUT = 5.0  # bound on how long stop() waits for its threads
_MAX_DRAIN = 1 << 20  # largest request body read and discarded to keep a connection alive
_POLL_INTERVAL = 0.05  # serve_forever poll interval: how fast shutdown() returns


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that never blocks on close and knows its owning FileServer."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: FileServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind: its socket.getfqdn() may do a slow reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError) or self.owner._stopping.is_set():
            return  # client went away or we are stopping: stay quiet
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """Serves files under the owner's root (GET/HEAD, single Range, If-Range) and applies faults."""

    protocol_version = "HTTP/1.1"
    server_version = "bitsnb-testing/1.0"
    sys_version = ""
    timeout = 60.0  # idle keep-alive connections end after this many seconds
    server: _Server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._register(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._unregister(self)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and notebooks do not want access logs on stderr."""

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _not_allowed(self) -> None:
        rec = self._new_record(request_name(self.path))
        owner = self.server.owner
        owner._begin(rec)
        try:
            self._send_simple(rec, 405, b"method not allowed\n", [("Allow", "GET, HEAD")], True)
        except OSError:
            self.close_connection = True
        finally:
            owner._finish(rec)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    # -- helpers -------------------------------------------------------------------------------

    def _shutdown_socket(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _abort(self) -> None:
        """Close the connection abruptly (shutdown now; the socket is closed when we return)."""
        self.close_connection = True
        self._shutdown_socket()

    def _new_record(self, name: str) -> RequestRecord:
        return RequestRecord(
            method=self.command,
            path=name,
            range=self.headers.get("Range"),
            if_range=self.headers.get("If-Range"),
            headers=dict(self.headers.items()),
        )

    def _drain_request_body(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return
        length = self.headers.get("Content-Length")
        if not length:
            return
        try:
            n = int(length)
        except ValueError:
            n = -1
        if 0 <= n <= _MAX_DRAIN:
            self.rfile.read(n)
        else:
            self.close_connection = True

    busy = False  # answering a request now

    def _peer_open(self) -> bool:
        """Whether the client still has this connection open (no EOF or reset waiting)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            # readable: an EOF or a reset (peeked without waiting), or a next request
            return not readable or self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        name = request_name(self.path)
        rec = self._new_record(name)
        owner._begin(rec)
        self.busy = True
        try:
            self._drain_request_body()
            self._respond(rec, name, head)
        except OSError:  # client went away, or stop() shut the socket down
            self.close_connection = True
        finally:
            self.busy = False
            owner._finish(rec)

    def _respond(self, rec: RequestRecord, name: str, head: bool) -> None:
        owner = self.server.owner
        fault = owner._take_fault(name)
        if fault is not None:
            rec.fault = fault.kind
            if fault.kind == "close_before_headers":
                self._abort()
                return
            if fault.kind == "status":
                self._send_status_fault(rec, fault, head)
                return
            if fault.kind == "stall" and owner._stopping.wait(fault.seconds):
                self._abort()
                return
            if fault.kind == "change_before":
                with contextlib.suppress(ValueError, OSError):
                    owner.change_file(name)
        if owner._admit(self) and not head:
            # more requests at once than the server takes: 503, as a busy host answers
            self._send_simple(rec, 503, b"too many connections\n", [("Retry-After", "1")])
            return
        opened = owner._open(name)
        if opened is None:
            self._send_simple(rec, 404, b"not found\n", head=head)
            return
        fh, st, generation = opened
        with fh:
            self._send_file(rec, fh, st, generation, fault, head)

    def _send_simple(
        self,
        rec: RequestRecord,
        code: int,
        body: bytes,
        extra: list[tuple[str, str]] | None = None,
        close: bool = False,
        head: bool = False,
    ) -> None:
        if code < 200 or code in (204, 304):
            body = b""
        rec.status = code
        self.send_response(code)
        if body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        if code >= 200 and code != 204 and code != 304:
            self.send_header("Content-Length", str(len(body)))
        for key, value in extra or []:
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _send_status_fault(self, rec: RequestRecord, fault: Fault, head: bool) -> None:
        try:
            phrase = HTTPStatus(fault.code).phrase
        except ValueError:
            phrase = "Injected"
        extra: list[tuple[str, str]] = []
        if fault.retry_after is not None:
            extra.append(("Retry-After", str(math.ceil(fault.retry_after))))
        body = f"{fault.code} {phrase} (injected fault)\n".encode()
        self._send_simple(rec, fault.code, body, extra, head=head)

    def _send_file(
        self,
        rec: RequestRecord,
        fh: IO[bytes],
        st: os.stat_result,
        generation: int,
        fault: Fault | None,
        head: bool,
    ) -> None:
        kind = fault.kind if fault is not None else None
        size = st.st_size
        etag, last_modified = validators(st, generation)
        start, length, status = 0, size, 200
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if (
            range_header is not None
            and kind != "ignore_range"
            and if_range_matches(if_range, etag, last_modified, int(st.st_mtime))
        ):
            try:
                parsed = parse_range(range_header, size)
            except RangeNotSatisfiable:
                self._send_simple(rec, 416, b"", [("Content-Range", f"bytes */{size}")], head=head)
                return
            if parsed is not None:
                start, length = parsed
                status = 206

        rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if kind != "no_validators":
            if self.server.owner.send_etag or kind == "weak_etag":
                self.send_header("ETag", "W/" + etag if kind == "weak_etag" else etag)
            self.send_header("Last-Modified", last_modified)
        if status == 206:
            self.send_header("Content-Range", format_content_range(start, start + length - 1, size))
        if kind == "no_length":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            delta = fault.delta if fault is not None and kind == "wrong_length" else 0
            self.send_header("Content-Length", str(max(0, length + delta)))
        if kind in ("drop_after", "stall_after", "wrong_length"):
            self.send_header("Connection", "close")
            self.close_connection = True
        kinds, wrong = self.server.owner._digests_for(rec.path)
        fields = digest_fields(
            kinds,
            wrong,
            want_repr=self.headers.get("Want-Repr-Digest") is not None,
            want_amz=(self.headers.get("x-amz-checksum-mode") or "").upper() == "ENABLED",
            fh=fh,
            size=size,
            start=start,
            length=length,
        )
        for key, value in fields:
            self.send_header(key, value)
        self.end_headers()
        if head:
            return

        owner = self.server.owner
        body = BodySender(
            self.connection,
            self.wfile,
            count=lambda n: owner._add_sent(rec, n),
            abort=self._abort,
            closing=lambda: self.close_connection,
            stopping=owner._stopping,
        )
        if fault is not None and kind == "no_length":
            body.chunked(fh, start, length)
        elif fault is not None and kind == "corrupt":
            body.corrupted(fh, start, length, fault.seed)
        elif fault is not None and kind == "throttle":
            body.throttled(fh, start, length, fault.nbytes)
        elif fault is None and owner.connection_rate:
            body.throttled(fh, start, length, owner.connection_rate, owner.connection_pace)
        elif fault is not None and kind in ("drop_after", "stall_after"):
            body.plain(fh, start, min(fault.nbytes, length))
            if kind == "stall_after":
                owner._stopping.wait(fault.seconds)
            self._abort()
        else:
            body.plain(fh, start, length)
            if kind == "wrong_length":
                self._abort()


class FileServer(ThreadedServer[RequestRecord]):
    """Static file server on loopback (HTTP/1.1, keep-alive, sendfile) with injectable faults.

    ``root=None`` serves a temporary directory that ``stop()`` removes. It applies every
    ``FaultKind`` but the upload ones (``bits_error``, ``extra_headers``).
    ``connection_rate`` (bytes/s) caps every response without a fault, as mirrors cap each
    connection, in pieces ``connection_pace`` seconds apart (50 ms: idle gaps a client sees as
    its sender holding the connection back; 10 ms: a level flow); ``max_concurrent`` answers
    503 to a GET beyond that many requests at once; ``peak_concurrent`` is the most requests
    it answered at once. ``send_etag = False`` makes every file answer with Last-Modified but
    no ETag, as many mirrors and object stores do.
    """

    fault_kinds = frozenset(get_args(FaultKind)) - {"bits_error", "extra_headers"}

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(
                prefix="bitsnb-fileserver-", ignore_cleanup_errors=True
            )
            root = self._tmp.name
        super().__init__(Path(root).absolute())
        self._root.mkdir(parents=True, exist_ok=True)
        self._files = ServedFiles(self._root, self._lock)
        self._host = host
        self._port = port
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._base_url: str | None = None
        self._handlers: dict[_Handler, threading.Thread] = {}
        self._digests = DigestBook()
        self.connection_rate: int | None = None
        self.connection_pace = 0.05
        self.max_concurrent: int | None = None
        self.peak_concurrent = 0
        self.send_etag = True

    def __repr__(self) -> str:
        return f"FileServer(root={str(self._root)!r}, url={self._base_url!r})"

    # -- lifecycle -----------------------------------------------------------------------------

    def _bind_locked(self) -> _Server:
        if self._httpd is None:
            if self._stopped:
                raise RuntimeError("FileServer was stopped; create a new one")
            cls = _Server6 if ":" in self._host else _Server
            self._httpd = cls((self._host, self._port), self)
            port = int(self._httpd.server_address[1])
            host = f"[{self._host}]" if ":" in self._host else self._host
            self._base_url = f"http://{host}:{port}"
        return self._httpd

    def start(self) -> Self:
        """Bind (if not yet) and serve in a daemon thread; returns self."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("FileServer was stopped; create a new one")
            if self._thread is None:
                httpd = self._bind_locked()
                self._thread = threading.Thread(
                    target=httpd.serve_forever,
                    kwargs={"poll_interval": _POLL_INTERVAL},
                    name=f"bitsnb-FileServer-{self._base_url}",
                    daemon=True,
                )
                self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end live connections (even stalled ones) and join threads (bounded)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._stopping.set()
            httpd, thread = self._httpd, self._thread
            handlers = dict(self._handlers)
            # Under the lock: a handler unregisters (before its socket is closed) under it too,
            # so we never shut down a recycled file descriptor.
            for handler in handlers:
                handler._shutdown_socket()
            self._cond.notify_all()
        if httpd is not None:
            if thread is not None:
                httpd.shutdown()
            httpd.server_close()
        deadline = time.monotonic() + _STOP_JOIN_TIMEOUT
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        for worker in handlers.values():
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (binds the socket on first use if not started yet)."""
        with self._lock:
            if self._base_url is None:
                self._bind_locked()
            assert self._base_url is not None
            return self._base_url

    def path(self, name: str) -> Path:
        """On-disk path of ``name`` under root (traversal refused with ValueError)."""
        return self._files.path(name)

    # -- content -------------------------------------------------------------------------------

    def add_file(self, name: str, data: bytes) -> str:
        """Write ``root/name`` (creating folders) with ``data``; returns its URL."""
        return self.url(self._files.add(name, data))

    def add_random_file(self, name: str, size: int, seed: int = 0) -> str:
        """Write ``size`` deterministic pseudo-random bytes (1 MiB blocks); returns its URL.

        Sizes of GiB are fine: memory stays flat and writing runs at disk speed.
        """
        return self.url(self._files.add_random(name, size, seed))

    def send_digests(
        self, name_glob: str, kinds: Iterable[DigestKind], *, wrong: bool = False
    ) -> None:
        """Answer requests for files matching *name_glob* with these digest headers (see
        ``DigestKind``), right or, with *wrong*, each with its first byte flipped; a later call
        for the same glob replaces it, an empty *kinds* stops them."""
        with self._lock:
            self._digests.set(name_glob, kinds, wrong)

    def _digests_for(self, name: str) -> tuple[tuple[DigestKind, ...], bool]:
        with self._lock:
            return self._digests.for_name(name)

    def change_file(self, name: str, data: bytes | None = None) -> None:
        """Replace the content (``None``: new random bytes, same size); ETag and mtime change."""
        self._files.change(name, data)

    def _open(self, name: str) -> tuple[IO[bytes], os.stat_result, int] | None:
        """Open a served file with its stat and generation, consistently; None if not servable."""
        return self._files.open(name)

    # -- request log ---------------------------------------------------------------------------

    def _register(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers[handler] = threading.current_thread()
            if self._stopping.is_set():
                handler._shutdown_socket()

    def _unregister(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers.pop(handler, None)

    def _admit(self, handler: _Handler) -> bool:
        """Count the requests answered now (this one, and those whose client is still there:
        a handler may not have noticed yet that its client closed); True when over the limit."""
        with self._lock:
            others = [h for h in self._handlers if h.busy and h is not handler]
            live = 1 + sum(h._peer_open() for h in others)
            self.peak_concurrent = max(self.peak_concurrent, live)
            return self.max_concurrent is not None and live > self.max_concurrent

    def _add_sent(self, rec: RequestRecord, nbytes: int) -> None:
        with self._lock:
            rec.body_bytes_sent += nbytes

    def bytes_sent(self, name_glob: str = "*") -> int:
        """Total file-body bytes sent for logged requests whose path matches the glob."""
        with self._lock:
            return sum(rec.body_bytes_sent for rec in self._matching(name_glob))

    def _stopped_now(self) -> bool:
        return self._stopped
