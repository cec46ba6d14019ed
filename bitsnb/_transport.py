"""A lean HTTP/1.1 transport for httpx: body-less requests over asyncio's buffered protocol.

httpx's default transport (httpcore, h11, anyio) copies every socket read three times and spends
about a millisecond of Python per request in its pool (shared/perf-notes.md). This transport
reads the socket straight into one reusable buffer per connection, has a vetted parser
(``_response_head``: llhttp, with h11 as the judge of what llhttp refuses) parse each response
head and trailer section, and hands the body out as
views of that buffer, which the engine writes to disk without a copy. Its own are only the
framing around the body (chunk-size lines) and the limits the parsers leave to their caller: a status in
100–599, HTTP/1.x only, at most ``_MAX_INTERIM`` interim responses, and the read timeout as the
time budget of a whole head. It serves GET and HEAD without a body over http and https; anything
else (request bodies, other methods) goes to the fallback transport, so httpx's client
(redirects, auth, cookies, proxies, event hooks) stays the one API above it. Every failure comes
out as an httpx exception.

``fallback_transport`` (in ``_wide_reads``; the receive buffer is ``_readahead``) is httpx's
default transport with larger socket reads, which it gets from a network backend of its own
rather than from httpcore's ``READ_NUM_BYTES``, a class attribute every httpx client in the
process shares.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from ._connectbuf import connect_sized
from ._connectbuf import wanted as connect_buffer
from ._readahead import MIN_FREE, Eof, ReadAhead
from ._response_head import MAX_HEAD, HeadError, ResponseHead, parse_head
from ._tcpinfo import tcp_info

__all__ = [
    "MIN_READ_AHEAD",
    "LeanTransport",
    "body_buffered",
    "body_views",
    "fallback_transport",
    "keep_view",
    "limit_read_ahead",
    "read_ahead_limit",
    "unread_bytes",
]


def fallback_transport(read_size: int, **kwargs: Any) -> httpx.AsyncHTTPTransport:
    """``_wide_reads.fallback_transport``, imported on first use: httpcore (a fifth of
    ``import bitsnb``, 38 ms) loads only once a request needs more than the lean transport."""
    from ._wide_reads import fallback_transport as wide

    return wide(read_size, **kwargs)


_MAX_INTERIM = 10  # interim (1xx) responses allowed before the final one
MIN_READ_AHEAD = 4096  # the least read-ahead a capped body is held to (a slow cap's window)
_IDLE_EXPIRY = 5.0  # seconds an idle keep-alive connection is kept
_NO_BODY_STATUS = frozenset({204, 304})
# A path whose connect took at most _NEAR_RTT (loopback, a LAN) gets a fixed _NEAR_RCVBUF
# receive buffer even when autotuning is asked for: its window (the kernel doubles the buffer:
# 4 MiB per ms = 4 GB/s) cannot bound the rate there, while autotuning starts each new
# connection at ~64 KiB and makes the sender wait on the reader until it grew (200 x 1 MiB
# from nginx on loopback in 16 jobs: 426 files/s autotuned, 491 fixed; see README).
_NEAR_RTT = 0.001
_NEAR_RCVBUF = 2 * 1024 * 1024
_CTL = frozenset(b"\r\n\0")
_CRLF = re.compile(rb"\r\n")  # ends a chunk-size line (as in h11)
_LF = re.compile(rb"\n")  # ends a trailer line, a CR before it optional (as in h11)
_BLANK_LINE = re.compile(rb"\n\r?\n")  # ends a head (h11's own rule)
# chunk-size [BWS] [";" chunk-ext] (RFC 9112 §7.1.1); 16 hex digits exceed any file's size
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?")


class _Connection:
    """One keep-alive HTTP/1.1 connection (the request side is a plain ``write``)."""

    def __init__(
        self, origin: tuple[str, str, int], proto: ReadAhead, sized: int | None = None
    ) -> None:
        self.origin = origin
        self.proto = proto
        self.idle_since = 0.0
        self.sized = sized  # the receive buffer it was opened with for a cap (None: the kernel's)

    @property
    def transport(self) -> asyncio.Transport:
        assert self.proto.transport is not None
        return self.proto.transport

    def usable(self) -> bool:
        """Idle, open and quiet: a server that closed it or sent stray bytes rules it out."""
        p = self.proto
        return (
            not p.eof
            and p.error is None
            and p.available == 0
            and not self.transport.is_closing()
            and time.monotonic() - self.idle_since < _IDLE_EXPIRY
        )

    def close(self) -> None:
        if self.proto.transport is not None:
            self.proto.transport.close()


class _Body(httpx.AsyncByteStream):
    """A response body read from a lean connection: views for the engine, bytes for the rest."""

    def __init__(
        self,
        transport: LeanTransport,
        conn: _Connection,
        request: httpx.Request,
        framing: str,
        length: int,
        reusable: bool,
        timeout: float | None,
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._request = request
        self._framing = framing  # "length", "chunked" or "close"
        self._length = length
        self._reusable = reusable
        self._timeout = timeout
        self._done = framing == "length" and length == 0
        self._closed = False
        self.received = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for view in self.views():
            yield bytes(view)

    async def views(self) -> AsyncIterator[memoryview]:
        """The body as views of the connection's buffer; each is valid until the next one."""
        p = self._conn.proto
        try:
            if self._framing == "length":
                async for view in self._exactly(self._length):
                    yield view
            elif self._framing == "chunked":
                async for view in self._chunks():
                    yield view
            else:  # until the server closes
                while True:
                    if not p.available:
                        try:
                            await p.wait_more(self._timeout)
                        except Eof:
                            if p.error is not None:
                                raise
                            break
                    n = min(p.available, p.high)  # a capped body: pieces of its read-ahead
                    yield p.lend(n)
                    p.consume(n)
                    self.received += n
            self._done = True
        except Eof:
            raise self._broken() from None
        except httpx.RequestError as exc:
            exc.request = self._request
            raise

    async def _exactly(self, count: int) -> AsyncIterator[memoryview]:
        """The next *count* bytes, as views lent from the buffer until the next one."""
        p = self._conn.proto
        while count:
            if not p.available:
                await p.wait_more(self._timeout)
            n = min(p.available, count, p.high)  # a capped body: pieces of its read-ahead
            yield p.lend(n)
            p.consume(n)
            count -= n
            self.received += n

    async def _chunks(self) -> AsyncIterator[memoryview]:
        p = self._conn.proto
        while True:
            line = await _read_until(p, _CRLF, "chunk line", self._timeout, self._request)
            m = _CHUNK_LINE.fullmatch(line, 0, len(line) - 2)
            if m is None:
                raise httpx.RemoteProtocolError(
                    f"bad chunk size {line[:20]!r}", request=self._request
                )
            size = int(m[1], 16)
            if size == 0:
                await self._trailers()
                return
            async for view in self._exactly(size):
                yield view
            if await _read_until(p, _CRLF, "chunk end", self._timeout, self._request) != b"\r\n":
                raise httpx.RemoteProtocolError("chunk not followed by CRLF", request=self._request)

    async def _trailers(self) -> None:
        """The trailer section: field lines up to an empty one, checked as a head's are,
        with a head's size limit and time budget; then dropped."""
        p = self._conn.proto
        deadline = _deadline(self._timeout)
        block = bytearray()
        while True:
            line = await _read_until(p, _LF, "trailer", self._timeout, self._request, deadline)
            if line in (b"\n", b"\r\n"):
                break
            block += line
            if len(block) > MAX_HEAD:
                raise httpx.RemoteProtocolError("trailer section too large", request=self._request)
        if block:
            _checked_head(b"HTTP/1.1 200 OK\r\n" + block + b"\r\n", self._request)

    def _broken(self) -> httpx.HTTPError:
        p = self._conn.proto
        if p.error is not None:
            return httpx.ReadError(str(p.error) or type(p.error).__name__, request=self._request)
        expected = f", expected {self._length}" if self._framing == "length" else ""
        return httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body: "
            f"received {self.received} bytes{expected}",
            request=self._request,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if self._done and self._reusable and conn.proto.available == 0:
            self._transport._release(conn)
        else:
            conn.close()


def _deadline(budget: float | None) -> float | None:
    """When a head (or trailer section) given *budget* seconds from now must be complete."""
    return None if budget is None else time.monotonic() + budget


async def _read_until(
    p: ReadAhead,
    end: re.Pattern[bytes],
    what: str,
    timeout: float | None,
    request: httpx.Request,
    deadline: float | None = None,
) -> bytes:
    """The bytes up to and including the next match of *end*, consumed; *what* over 64 KiB is
    refused. Each wait lasts at most *timeout*, and all of them end at *deadline*: a server
    that sends a byte now and then cannot stretch a head forever."""
    scanned = 0
    while True:
        m = end.search(p.buf, p.start + scanned, p.end)
        if m is not None and m.end() - p.start <= MAX_HEAD:
            data = bytes(p.view[p.start : m.end()])
            p.consume(m.end() - p.start)
            return data
        if m is not None or p.available > MAX_HEAD:
            raise httpx.RemoteProtocolError(f"{what} too large", request=request)
        scanned = max(0, p.available - 2)  # a match is at most 3 bytes long
        wait = timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise httpx.ReadTimeout(f"the {what} took too long to arrive", request=request)
            wait = left if timeout is None else min(timeout, left)
        try:
            await p.wait_more(wait)
        except httpx.ReadTimeout:
            if deadline is not None and time.monotonic() >= deadline:
                raise httpx.ReadTimeout(
                    f"the {what} took too long to arrive", request=request
                ) from None
            raise


def _checked_head(head: bytes, request: httpx.Request) -> ResponseHead:
    """One whole head (status line, field lines, blank line), parsed and checked."""
    try:
        return parse_head(head)
    except HeadError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from None


def _check_header(name: bytes, value: bytes, request: httpx.Request) -> None:
    if _CTL.intersection(name) or _CTL.intersection(value) or not name:
        raise httpx.LocalProtocolError(f"illegal header {name[:40]!r}", request=request)


class LeanTransport(httpx.AsyncBaseTransport):
    """GET/HEAD over HTTP/1.1 with keep-alive and zero-copy bodies; the rest to *fallback*.
    *ssl_context* may be a function that makes it, called at the first https connection."""

    def __init__(
        self,
        fallback: httpx.AsyncBaseTransport,
        *,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        read_size: int = 1024 * 1024,
        max_idle_per_host: int = 4,
        receive_buffer: int | None = None,
    ) -> None:
        self._fallback = fallback
        self._rcvbuf = receive_buffer
        self._ssl = ssl_context
        self._read_size = max(read_size, 2 * MIN_FREE)
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (
            request.method not in ("GET", "HEAD")
            or url.scheme not in ("http", "https")
            or "content-length" in request.headers
            or "transfer-encoding" in request.headers
            or (url.scheme == "https" and self._ssl is None)
        ):
            return await self._fallback.handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = self._head(request)
        # the IDNA (ASCII) form of the host, which is what DNS and TLS want
        host = url.raw_host.decode("ascii")
        origin = (url.scheme, host, url.port or (443 if url.scheme == "https" else 80))
        for attempt in range(2):
            conn = self._take_idle(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, timeouts.get("connect"), request)
            before = conn.proto.received
            try:
                conn.transport.write(head)
                return await self._response(conn, request, timeouts.get("read"))
            except Eof:
                conn.close()
                if reused and attempt == 0 and conn.proto.received == before:
                    continue  # the server closed an idle connection as we sent: once more
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                ) from conn.proto.error
            except httpx.RequestError as exc:
                conn.close()
                exc.request = request
                raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _head(request: httpx.Request) -> bytes:
        url = request.url
        parts = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            _check_header(name, value, request)
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _connect(
        self, origin: tuple[str, str, int], timeout: float | None, request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        proto = ReadAhead(self._read_size)
        kwargs: dict[str, Any] = {}
        if scheme == "https":
            tls = self._ssl() if callable(self._ssl) else self._ssl  # made on first use
            kwargs = {"ssl": tls, "server_hostname": host}
        size = connect_buffer()  # a cap's window from the first segment on (_connectbuf)
        try:
            async with asyncio.timeout(timeout):
                if size is None:
                    await loop.create_connection(lambda: proto, host, port, **kwargs)
                else:
                    sized = await connect_sized(host, port, size)
                    await loop.create_connection(lambda: proto, sock=sized, **kwargs)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from exc
        except ssl.SSLError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        sock = proto.transport.get_extra_info("socket") if proto.transport else None
        if size is not None:  # nor userspace: reading pauses at a burst until the pacer says
            proto.high = _read_ahead_for(size, len(proto.buf))
        if sock is not None and size is None:
            rcvbuf = self._rcvbuf or _near_buffer(sock)
            if rcvbuf:
                # a fixed receive buffer turns the kernel's autotuning off, which would otherwise
                # let tens of MiB sit in flight (lost on a kill, queued behind a slow disk)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        return _Connection(origin, proto, size)

    async def _response(
        self, conn: _Connection, request: httpx.Request, timeout: float | None
    ) -> httpx.Response:
        p = conn.proto
        deadline = _deadline(timeout)  # the read timeout is also the budget of the whole head
        for _ in range(_MAX_INTERIM + 1):
            head = await _read_until(p, _BLANK_LINE, "response head", timeout, request, deadline)
            event = _checked_head(head, request)
            if event.status >= 200:
                break
        else:
            raise httpx.RemoteProtocolError(
                f"more than {_MAX_INTERIM} interim responses", request=request
            )
        status, version = event.status, event.version
        if status > 599:
            raise httpx.RemoteProtocolError(f"status {status} is not 100–599", request=request)
        if not version.startswith(b"1."):
            raise httpx.RemoteProtocolError(
                f"HTTP/{version.decode('ascii', 'replace')} is not HTTP/1", request=request
            )
        # the parser checked the fields: names are tokens, values hold no CR, LF or NUL, obs-folds are
        # unfolded, Transfer-Encoding is "chunked" alone and Content-Length one number
        chunked = False
        length: int | None = None
        close = version == b"1.0"
        for raw_name, value in event.fields:
            name = raw_name.lower()
            if name == b"transfer-encoding":
                chunked = True
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if b"close" in tokens:
                    close = True
                elif b"keep-alive" in tokens and version == b"1.0":
                    close = False
        if request.method == "HEAD" or status in _NO_BODY_STATUS:
            framing, length = "length", 0
        elif chunked:
            # a Content-Length beside it is ignored, and the connection not trusted again
            framing, close = "chunked", close or length is not None
        elif length is not None:
            framing = "length"
        else:
            framing, close = "close", True
        # a read-ahead limit is the body's, not the connection's; a connection sized for a
        # cap starts each body at that size until the pacer sees it (at full read-ahead a
        # 100 kB/s body's first 37 kB landed at once, a third of a second early)
        p.high = _read_ahead_for(conn.sized, len(p.buf))
        body = _Body(self, conn, request, framing, length or 0, not close, timeout)
        return httpx.Response(
            status,
            headers=event.fields,
            stream=body,
            extensions={
                "http_version": b"HTTP/" + version,
                "reason_phrase": event.reason,
                "bitsnb_body": body,
                "bitsnb_socket": conn.transport.get_extra_info("socket"),  # for TCP_INFO
            },
        )

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        want = connect_buffer()
        while idle:
            conn = idle.pop()
            # a connection opened for another cap keeps that receive buffer (fixed, so the
            # kernel never grows it: an uncapped body crawled through a 200 kB/s one)
            if conn.usable() and conn.sized == want:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        conn.proto.high = len(conn.proto.buf)
        conn.proto.trim()
        if self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, [])
        now = time.monotonic()
        for old in [c for c in idle if now - c.idle_since >= _IDLE_EXPIRY]:
            idle.remove(old)
            old.close()
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        await self._fallback.aclose()


def _read_ahead_for(nbytes: int | None, buffer: int) -> int:
    """The read-ahead of a body held to about *nbytes* (a cap's window: at least
    ``MIN_READ_AHEAD``, at most the *buffer*), or the whole read buffer for None (no cap)."""
    return buffer if nbytes is None else max(MIN_READ_AHEAD, min(nbytes, buffer))


def _near_buffer(sock: socket.socket) -> int | None:
    """_NEAR_RCVBUF for a connection whose handshake round trip was at most _NEAR_RTT."""
    info = tcp_info(sock)
    if info is None or not info.rtt or info.rtt > _NEAR_RTT:
        return None
    return _NEAR_RCVBUF


def limit_read_ahead(response: httpx.Response, nbytes: int | None) -> bool:
    """Hold the unread body of a ``LeanTransport`` response to about *nbytes* (None: the read
    buffer): a capped transfer's bytes then wait in the kernel, whose window slows the sender,
    not in a megabyte of userspace buffer. False for another transport's response."""
    p = _lean_proto(response)
    if p is None:
        return False
    # lowered: reading pauses at the next arrival; raised: the next consume() resumes it
    p.high = _read_ahead_for(nbytes, len(p.buf))
    return True


def unread_bytes(response: httpx.Response) -> int:
    """Bytes a ``LeanTransport`` body has read ahead and not yet lent (0 for another's)."""
    p = _lean_proto(response)
    return 0 if p is None else max(0, p.available - p.held)


def read_ahead_limit(response: httpx.Response) -> int:
    """How far a ``LeanTransport`` body reads ahead of what the engine took before its reading
    pauses (``limit_read_ahead``); 0 for another transport's response."""
    p = _lean_proto(response)
    return 0 if p is None else p.high


def _lean_proto(response: httpx.Response) -> ReadAhead | None:
    """The receive side of a ``LeanTransport`` response's connection (None for another's)."""
    body = response.extensions.get("bitsnb_body")
    return body._conn.proto if isinstance(body, _Body) else None


def keep_view(response: httpx.Response) -> Callable[[], None]:
    """Keep the view of a ``body_views`` body lent last valid until the returned function is
    called (from any thread, once): its buffer is not reused meanwhile (``ReadAhead.keep``)."""
    body = response.extensions["bitsnb_body"]
    assert isinstance(body, _Body)
    return body._conn.proto.keep()


def body_views(response: httpx.Response) -> AsyncIterator[memoryview] | None:
    """The zero-copy body of a response from ``LeanTransport`` (None for any other)."""
    body = response.extensions.get("bitsnb_body")
    return body.views() if isinstance(body, _Body) else None


def body_buffered(response: httpx.Response) -> bool:
    """Whether the whole unread body of a ``LeanTransport`` response is in its buffer already
    (a small file arrives with its head): nothing of it is left on the wire."""
    body = response.extensions.get("bitsnb_body")
    if not isinstance(body, _Body) or body._framing != "length":
        return False
    return body._length - body.received <= body._conn.proto.available
