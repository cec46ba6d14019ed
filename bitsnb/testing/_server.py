"""Loopback HTTP/1.1 static file server with fault injection, for tests, demos and benchmarks.

Standard library only: ``ThreadingHTTPServer`` in a daemon thread, bodies sent with ``sendfile``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.utils
import fnmatch
import hashlib
import math
import os
import random
import select
import socket
import socketserver
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Self, get_args

from awscrt import checksums  # type: ignore[import-untyped]

from bitsnb._http_rules import RangeNotSatisfiable, format_content_range, parse_range
from bitsnb.testing._base import ThreadedServer
from bitsnb.testing._faults import Fault, FaultKind

__all__ = ["DIGEST_KINDS", "DigestKind", "FileServer", "RequestRecord"]

DigestKind = Literal[
    "repr-sha-256",
    "repr-sha-512",
    "digest-sha-256",
    "amz-sha256",
    "amz-sha1",
    "amz-crc32",
    "amz-crc32c",
    "amz-crc64nvme",
    "goog-crc32c",
    "goog-md5",
    "content-sha-256",
    "content-md5",
]
"""Digest headers ``FileServer.send_digests`` can add: ``repr-*`` (RFC 9530 Repr-Digest, sent
when the request has Want-Repr-Digest), ``digest-*`` (RFC 3230 Digest), ``amz-*`` (S3's
x-amz-checksum-*, sent when the request has ``x-amz-checksum-mode: ENABLED``), ``goog-*``
(GCS's x-goog-hash) of the whole file; ``content-*`` (RFC 9530 Content-Digest, Content-MD5) of
the response's own bytes."""
DIGEST_KINDS: tuple[DigestKind, ...] = get_args(DigestKind)

# kind → (algorithm, scope); the algorithms computed here with hashlib, zlib and awscrt
_DIGEST_ALGS: dict[str, str] = {
    "repr-sha-256": "sha256",
    "repr-sha-512": "sha512",
    "digest-sha-256": "sha256",
    "amz-sha256": "sha256",
    "amz-sha1": "sha1",
    "amz-crc32": "crc32",
    "amz-crc32c": "crc32c",
    "amz-crc64nvme": "crc64nvme",
    "goog-crc32c": "crc32c",
    "goog-md5": "md5",
    "content-sha-256": "sha256",
    "content-md5": "md5",
}


def _digest_of(alg: str, fh: IO[bytes], start: int, length: int) -> bytes:
    """The digest of *length* bytes of *fh* from *start* (CRCs big-endian, as S3/GCS send)."""
    crc = {"crc32": (zlib.crc32, 4), "crc32c": (checksums.crc32c, 4)}
    crc["crc64nvme"] = (checksums.crc64nvme, 8)
    h = None if alg in crc else hashlib.new(alg)
    value = 0
    fh.seek(start)
    left = length
    while left > 0:  # bounded: each pass reads ≥ 1 byte or stops
        block = fh.read(min(_BLOCK, left))
        if not block:
            break
        left -= len(block)
        if h is not None:
            h.update(block)
        else:
            value = crc[alg][0](block, value)
    if h is not None:
        return h.digest()
    return int(value).to_bytes(crc[alg][1], "big")


_BLOCK = 1 << 20  # random content is generated and written in 1 MiB blocks
_CHUNK = 1 << 20  # chunk size used by the chunked-encoding fault
_STOP_JOIN_TIMEOUT = 5.0  # bound on how long stop() waits for its threads
_MAX_DRAIN = 1 << 20  # largest request body read and discarded to keep a connection alive
_POLL_INTERVAL = 0.05  # serve_forever poll interval: how fast shutdown() returns


@dataclass(slots=True)
class RequestRecord:
    """One request as seen by the server (``status`` 0 = no status line was sent).

    ``path`` is the decoded request path without its leading "/" (what fault globs match);
    ``body_bytes_sent`` counts file-content bytes handed to the socket, not error-text bodies.
    """

    method: str
    path: str
    range: str | None
    if_range: str | None
    status: int = 0
    body_bytes_sent: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    fault: FaultKind | None = None
    finished: bool = False

    def copy(self) -> RequestRecord:
        """Return an independent snapshot of this record."""
        return dataclasses.replace(self, headers=dict(self.headers))


def _normalize_name(name: str) -> str:
    """Return the canonical relative POSIX key for ``name``; refuse absolute or escaping names."""
    if not name or "\x00" in name or "\\" in name:
        raise ValueError(f"invalid file name {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"file name must be relative and stay under root: {name!r}")
    key = pure.as_posix()
    if key in ("", "."):
        raise ValueError(f"invalid file name {name!r}")
    return key


def _write_random(fh: IO[bytes], size: int, seed: int | str) -> None:
    """Write ``size`` deterministic pseudo-random bytes in 1 MiB blocks (flat memory, fast).

    The first block comes straight from ``random.Random(seed)``; each later block is that block
    rotated by a seeded offset, with its index in the first 8 bytes, so all blocks differ.
    """
    rng = random.Random(seed)
    base = rng.randbytes(min(size, _BLOCK))
    fh.write(base)
    remaining = size - len(base)
    if remaining <= 0:
        return
    src = memoryview(base)
    view = memoryview(bytearray(_BLOCK))  # reused: fresh 1 MiB buffers cost page faults
    index = 1
    while remaining > 0:
        k = rng.randrange(_BLOCK)
        view[: _BLOCK - k] = src[k:]
        view[_BLOCK - k :] = src[:k]
        view[:8] = index.to_bytes(8, "little")
        n = min(_BLOCK, remaining)
        fh.write(view[:n])
        remaining -= n
        index += 1


def _bytes_writer(data: bytes) -> Callable[[IO[bytes]], None]:
    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    return write


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
        rec = self._new_record(self._request_name())
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

    def _request_name(self) -> str:
        target = self.path.split("#", 1)[0]
        if "://" in target.split("?", 1)[0]:  # absolute-form request target
            target = urllib.parse.urlsplit(target).path or "/"
        target = target.split("?", 1)[0]
        name = urllib.parse.unquote(target)
        return name[1:] if name.startswith("/") else name

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
        name = self._request_name()
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

    def _if_range_ok(self, etag: str, last_modified: str, mtime: int) -> bool:
        value = self.headers.get("If-Range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith('"'):
            return value == etag
        if value.startswith("W/"):
            return False  # If-Range requires strong comparison
        if value == last_modified:
            return True
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return False
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp()) == mtime

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
        etag = f'"{size}-{generation}-{st.st_mtime_ns:x}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, length, status = 0, size, 200
        range_header = self.headers.get("Range")
        if (
            range_header is not None
            and kind != "ignore_range"
            and self._if_range_ok(etag, last_modified, int(st.st_mtime))
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
        for key, value in self._digest_headers(rec.path, fh, size, start, length):
            self.send_header(key, value)
        self.end_headers()
        if head:
            return

        if fault is not None and kind == "no_length":
            self._send_chunked(rec, fh, start, length)
        elif fault is not None and kind == "corrupt":
            self._send_corrupted(rec, fh, start, length, fault.seed)
        elif fault is not None and kind == "throttle":
            self._send_throttled(rec, fh, start, length, fault.nbytes)
        elif fault is None and self.server.owner.connection_rate:
            self._send_throttled(rec, fh, start, length, self.server.owner.connection_rate)
        elif fault is not None and kind in ("drop_after", "stall_after"):
            self._send_body(rec, fh, start, min(fault.nbytes, length))
            if kind == "stall_after":
                self.server.owner._stopping.wait(fault.seconds)
            self._abort()
        else:
            self._send_body(rec, fh, start, length)
            if kind == "wrong_length":
                self._abort()

    def _send_body(self, rec: RequestRecord, fh: IO[bytes], offset: int, count: int) -> None:
        """sendfile() ``count`` bytes from ``offset``; count them (optimistically, then exactly)."""
        if count <= 0:
            return
        owner = self.server.owner
        # Count before sending so a client that has read the bytes never sees a stale log;
        # corrected below to what sendfile really returned.
        owner._add_sent(rec, count)
        fh.seek(offset)
        sock: socket.socket = self.connection
        try:
            sent = sock.sendfile(fh, offset, count)
        except OSError:
            owner._add_sent(rec, max(0, fh.tell() - offset) - count)
            raise
        owner._add_sent(rec, sent - count)
        if sent != count:  # file shrank underneath us: the promised length cannot be met
            self._abort()

    def _digest_headers(
        self, name: str, fh: IO[bytes], size: int, start: int, length: int
    ) -> list[tuple[str, str]]:
        """The digest headers configured for *name* (right, or each one's first byte flipped)."""
        kinds, wrong = self.server.owner._digests_for(name)
        asked_repr = self.headers.get("Want-Repr-Digest") is not None
        asked_amz = (self.headers.get("x-amz-checksum-mode") or "").upper() == "ENABLED"
        fields: dict[str, list[str]] = {}
        for kind in kinds:
            family = kind.split("-", 1)[0]
            if (family == "repr" and not asked_repr) or (family == "amz" and not asked_amz):
                continue
            alg = _DIGEST_ALGS[kind]
            whole = family != "content"
            raw = _digest_of(alg, fh, 0 if whole else start, size if whole else length)
            if wrong:
                raw = bytes([raw[0] ^ 0xFF]) + raw[1:]
            b64 = base64.b64encode(raw).decode()
            if family in ("repr", "content") and kind != "content-md5":
                header = "Repr-Digest" if family == "repr" else "Content-Digest"
                fields.setdefault(header, []).append(f"{kind.split('-', 1)[1]}=:{b64}:")
            elif kind == "content-md5":
                fields["Content-MD5"] = [b64]
            elif family == "digest":
                fields.setdefault("Digest", []).append(f"SHA-256={b64}")
            elif family == "amz":
                fields[f"x-amz-checksum-{alg}"] = [b64]
            else:
                fields.setdefault("x-goog-hash", []).append(f"{alg}={b64}")
        return [(k, ", ".join(v)) for k, v in fields.items()]

    def _send_corrupted(
        self, rec: RequestRecord, fh: IO[bytes], start: int, length: int, seed: int
    ) -> None:
        """The body with one byte changed (seeded place and XOR mask), same length."""
        if length <= 0:
            return
        rng = random.Random(seed)
        at = rng.randrange(length)
        mask = rng.randrange(1, 256)
        self._send_body(rec, fh, start, at)
        fh.seek(start + at)
        byte = fh.read(1)
        self.wfile.write(bytes([byte[0] ^ mask]))
        self.wfile.flush()
        self.server.owner._add_sent(rec, 1)
        self._send_body(rec, fh, start + at + 1, length - at - 1)

    def _send_throttled(
        self, rec: RequestRecord, fh: IO[bytes], start: int, length: int, rate: int
    ) -> None:
        """The body in pieces of ~50 ms worth, each sent when the rate allows (stop interrupts)."""
        piece = max(1, rate // 20)
        began = time.monotonic()
        sent = 0
        while sent < length:
            n = min(piece, length - sent)
            self._send_body(rec, fh, start + sent, n)
            sent += n
            due = began + sent / rate - time.monotonic()
            if due > 0 and self.server.owner._stopping.wait(due):
                self._abort()
                return

    def _send_chunked(self, rec: RequestRecord, fh: IO[bytes], start: int, length: int) -> None:
        pos, end = start, start + length
        while pos < end and not self.close_connection:
            n = min(_CHUNK, end - pos)
            self.wfile.write(b"%x\r\n" % n)
            self._send_body(rec, fh, pos, n)
            self.wfile.write(b"\r\n")
            pos += n
        if not self.close_connection:
            self.wfile.write(b"0\r\n\r\n")


class FileServer(ThreadedServer[RequestRecord]):
    """Static file server on loopback (HTTP/1.1, keep-alive, sendfile) with injectable faults.

    ``root=None`` serves a temporary directory that ``stop()`` removes. It applies every
    ``FaultKind`` but the upload ones (``bits_error``, ``extra_headers``).
    ``connection_rate`` (bytes/s) caps every response without a fault, as mirrors cap each
    connection; ``max_concurrent`` answers 503 to a GET beyond that many requests at once;
    ``peak_concurrent`` is the most requests it answered at once. ``send_etag = False`` makes
    every file answer with Last-Modified but no ETag, as many mirrors and object stores do.
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
        self._root_resolved = self._root.resolve()
        self._host = host
        self._port = port
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._base_url: str | None = None
        self._gens: dict[str, int] = {}
        self._mtimes: dict[str, int] = {}
        self._seeds: dict[str, int] = {}
        self._handlers: dict[_Handler, threading.Thread] = {}
        self._digests: list[tuple[str, tuple[DigestKind, ...], bool]] = []
        self.connection_rate: int | None = None
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
        return self._root / _normalize_name(name)

    # -- content -------------------------------------------------------------------------------

    def _next_mtime_locked(self, key: str, target: Path) -> int:
        prev: int | None = self._mtimes.get(key)
        if prev is None:
            with contextlib.suppress(OSError):
                prev = math.floor(target.stat().st_mtime)
        now = math.floor(time.time())
        return now if prev is None or now > prev else prev + 1

    def _replace(self, key: str, writer: Callable[[IO[bytes]], None]) -> None:
        """Write new content to a temp file, then atomically swap it in with fresh validators."""
        target = self._root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".bitsnb-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
            os.chmod(tmp_name, 0o644)
            with self._lock:
                existed = target.exists()
                mtime = self._next_mtime_locked(key, target)
                os.utime(tmp_name, (mtime, mtime))
                os.replace(tmp_name, target)
                known = key in self._gens
                self._gens[key] = self._gens.get(key, 0) + 1 if (known or existed) else 0
                self._mtimes[key] = mtime
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise

    def add_file(self, name: str, data: bytes) -> str:
        """Write ``root/name`` (creating folders) with ``data``; returns its URL."""
        key = _normalize_name(name)
        self._replace(key, _bytes_writer(data))
        return self.url(key)

    def add_random_file(self, name: str, size: int, seed: int = 0) -> str:
        """Write ``size`` deterministic pseudo-random bytes (1 MiB blocks); returns its URL.

        Sizes of GiB are fine: memory stays flat and writing runs at disk speed.
        """
        if size < 0:
            raise ValueError("size must be >= 0")
        key = _normalize_name(name)
        self._replace(key, lambda fh: _write_random(fh, size, seed))
        with self._lock:
            self._seeds[key] = seed
        return self.url(key)

    def send_digests(
        self, name_glob: str, kinds: Iterable[DigestKind], *, wrong: bool = False
    ) -> None:
        """Answer requests for files matching *name_glob* with these digest headers (see
        ``DigestKind``), right or, with *wrong*, each with its first byte flipped; a later call
        for the same glob replaces it, an empty *kinds* stops them."""
        chosen = tuple(kinds)
        for kind in chosen:
            if kind not in _DIGEST_ALGS:
                raise ValueError(f"unknown digest kind {kind!r}; known: {DIGEST_KINDS}")
        glob = name_glob.lstrip("/")
        with self._lock:
            self._digests = [d for d in self._digests if d[0] != glob]
            if chosen:
                self._digests.append((glob, chosen, wrong))

    def _digests_for(self, name: str) -> tuple[tuple[DigestKind, ...], bool]:
        with self._lock:
            for glob, kinds, wrong in self._digests:
                if fnmatch.fnmatchcase(name, glob):
                    return kinds, wrong
        return (), False

    def change_file(self, name: str, data: bytes | None = None) -> None:
        """Replace the content (``None``: new random bytes, same size); ETag and mtime change."""
        key = _normalize_name(name)
        target = self._root / key
        if not target.is_file():
            raise FileNotFoundError(f"no such served file: {name!r}")
        if data is not None:
            self._replace(key, _bytes_writer(data))
            return
        size = target.stat().st_size
        with self._lock:
            seed = f"{self._seeds.get(key, 0)}:{key}:{self._gens.get(key, 0) + 1}"
        self._replace(key, lambda fh: _write_random(fh, size, seed))

    def _open(self, name: str) -> tuple[IO[bytes], os.stat_result, int] | None:
        """Open a served file with its stat and generation, consistently; None if not servable."""
        try:
            key = _normalize_name(name)
        except ValueError:
            return None
        with self._lock:
            try:
                resolved = (self._root / key).resolve(strict=True)
            except (OSError, RuntimeError):
                return None
            if not resolved.is_relative_to(self._root_resolved) or not resolved.is_file():
                return None
            try:
                fh = open(resolved, "rb")  # closed by the caller
            except OSError:
                return None
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                fh.close()
                return None
            return fh, st, self._gens.get(key, 0)

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
