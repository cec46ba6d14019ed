"""The download engine: one file, resumable, through httpx — the package's one IO seam to the network.

``Engine.download`` streams a remote file into its temporary file, continuing from what is
already on disk with a Range request (validated with If-Range), and raises ``TransferFailure``
with the BITS code, context and transient/fatal verdict when something goes wrong. Plain GETs
go through ``LeanTransport`` under httpx, whose bodies are written from the connection's buffer.

Integrity: the bytes are hashed as they stream in, right after the loop writes each view to
the file, so that verifying a clean transfer reads nothing back; past its first 8 MiB a file's
hash runs on a thread of its own, fed in 4 MiB blocks (``streaming_hasher``: a thread hop per
view was measured slower, a block per hop overlaps). The whole file is checked
against the known hash or, without one, the strongest digest of the representation the server
sent; a response's own Content-Digest against that response's bytes. A resumed file's prefix is
hashed from disk once (the partial hash of a file that only paused in this process is kept). A
mismatch empties the temporary file and fails the file with BG_E_VALIDATION_FAILED.

Segments: a large file may be fetched over several connections at once (``_Split``: the rules
in ``_segments``), each writing at its offsets of the one temporary file, its table kept in the
store so that a crash resumes every segment.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from . import _codes
from ._buckets import Throttle
from ._enums import ErrorContext
from ._failures import TransferFailure, local_failure, network_failure
from ._files import create_private, open_private, private_size, truncate_private
from ._http_rules import (
    MAX_LENGTH,
    BadLength,
    is_transient_status,
    parse_content_length,
    parse_content_range,
    retry_after,
)
from ._integrity import (
    Digest,
    Hasher,
    content_digest,
    digest_request_headers,
    known_digest,
    new_hasher,
    representation_digest,
    streaming_hasher,
)
from ._models import Policy
from ._records import FileRecord
from ._segments import (
    check_table,
    contiguous_end,
    done_bytes,
    gained,
    may_add,
    split_point,
    takeover_point,
)
from ._transport import LeanTransport, body_views, fallback_transport
from ._validate import redact_url

__all__ = [
    "Engine",
    "FileContext",
    "TransferFailure",
    "YieldSlice",
    "discard_file",
    "is_transient_status",
    "validation_failure",
]

USER_AGENT = "bitsnb/0.1 (Microsoft BITS compatible)"

YIELD_MID_FILE_BYTES = 16 * 1024 * 1024
_PREFIX_BLOCK = 1024 * 1024  # a resumed file's prefix is re-hashed in blocks of this size
_MAX_PARTIALS = 256  # partial hashes kept for files that paused mid-way


class YieldSlice(Exception):
    """The scheduler asked the running job to give up its slot (time slice or pre-emption)."""


class _Restart(Exception):
    """The remote file changed or cannot be resumed: start the file again from zero."""


@dataclass
class FileContext:
    """What the engine needs from the job for one file, and how it reports back."""

    headers: dict[str, str] = field(default_factory=dict)
    auth: httpx.Auth | None = None
    proxy: str | None = None
    trust_env: bool = True
    dynamic_content: bool = False
    on_connected: Callable[[], None] = lambda: None
    on_progress: Callable[[FileRecord], None] = lambda f: None
    on_checkpoint: Callable[[FileRecord, int], None] = lambda f, durable: None
    on_restart: Callable[[FileRecord], None] = lambda f: None
    on_validators: Callable[[FileRecord], None] = lambda f: None
    # a segmented download's first table: True once the store holds it (False: not split)
    save_segments: Callable[[FileRecord], bool] = lambda f: False
    should_yield: Callable[[], bool] = lambda: False
    foreground: bool = False  # a FOREGROUND job: it does not wait for a per-host slot
    throttle: Throttle | None = None  # the bandwidth budgets the body's bytes are taken from
    # a body starts (the bandwidth loop samples its connection); returns the call for its end
    watch: Callable[[httpx.Response], Callable[[], None]] = lambda resp: _unwatched


def _unwatched() -> None:
    """Nothing was watched."""


def _ssl_context(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx 0.28 wants an SSLContext for a CA bundle path (a str is deprecated)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _retry_after(resp: httpx.Response) -> float | None:
    return retry_after(resp.headers.get("retry-after"), time.time())


def _invalid_response(message: str, *, transient: bool) -> TransferFailure:
    return TransferFailure(
        _codes.BG_E_INVALID_SERVER_RESPONSE,
        ErrorContext.REMOTE_FILE,
        transient=transient,
        message=message,
    )


def validation_failure(f: FileRecord, message: str) -> TransferFailure:
    """BG_E_VALIDATION_FAILED for *f* (fatal: the job goes to ERROR; resume() fetches it again)."""
    return TransferFailure(
        _codes.BG_E_VALIDATION_FAILED,
        ErrorContext.REMOTE_FILE,
        transient=False,
        message=f"{f.local_name}: {message}",
        protocol="http",
    )


def discard_file(f: FileRecord) -> None:
    """The file back to 0 bytes, its temporary file emptied (OSError as a TransferFailure)."""
    _truncate(f)


@dataclass
class _Partial:
    """A hash of a file's first *hashed* bytes, as they are on disk."""

    algorithm: str
    hasher: Hasher
    hashed: int


class _Check:
    """The hashes one file's transfer keeps: the whole file's and the current response's."""

    def __init__(self, expected: Digest | None, partial: _Partial | None) -> None:
        self.expected = expected  # the whole file's digest (a known hash or the server's)
        self.whole = partial  # the whole file's hash so far (None until a body starts)
        self.content: Digest | None = None  # the current response's Content-Digest
        self.content_hasher: Hasher | None = None
        self.sound = True  # False once a hasher may have missed bytes (not kept for later)

    def hashers(self) -> list[Hasher]:
        out = [self.whole.hasher] if self.whole is not None else []
        if self.content_hasher is not None:
            out.append(self.content_hasher)
        return out


def _update_all(hashers: list[Hasher], view: memoryview) -> None:
    for h in hashers:
        h.update(view)


def _hash_prefix(fd: int, hasher: Hasher, start: int, end: int) -> int:
    """Hash bytes [start, end) of *fd* (a worker thread's job); returns the bytes read."""
    buf = memoryview(bytearray(min(_PREFIX_BLOCK, max(1, end - start))))
    pos = start
    while pos < end:  # bounded: every pass reads ≥ 1 byte or raises
        n = os.preadv(fd, [buf[: min(len(buf), end - pos)]], pos)
        if n <= 0:
            raise OSError(5, "the temporary file is shorter than recorded")
        hasher.update(buf[:n])
        pos += n
    return pos - start


def _strong(etag: str | None) -> bool:
    return bool(etag) and not etag.startswith("W/")  # type: ignore[union-attr]


class _Client(httpx.AsyncClient):
    """An httpx client whose own transports, direct and proxied, come from *make_transport*.

    httpx builds them in these two hooks, the proxied ones for the ``proxy`` argument and, when
    the client is given no transport, for the environment's proxy settings (``trust_env``).
    """

    def __init__(
        self,
        make_transport: Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport],
        **kwargs: Any,
    ) -> None:
        self._make_transport = make_transport
        super().__init__(**kwargs)

    def _init_transport(
        self, *args: Any, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
    ) -> httpx.AsyncBaseTransport:
        return transport if transport is not None else self._make_transport(None)

    def _init_proxy_transport(
        self, proxy: httpx.Proxy, *args: Any, **kwargs: Any
    ) -> httpx.AsyncBaseTransport:
        return self._make_transport(proxy)


class Engine:
    """Downloads files over one pool of httpx clients (one per proxy setting)."""

    def __init__(self, policy: Policy, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._policy = policy
        self._transport = transport
        self._clients: dict[tuple[str | None, bool], httpx.AsyncClient] = {}
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._partials: dict[str, _Partial] = {}  # by temp name: files that paused mid-way
        self._hash_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.bytes_rehashed = 0  # bytes read back from temporary files to hash their prefix

    def client(self, proxy: str | None, trust_env: bool) -> httpx.AsyncClient:
        """The shared client for one proxy setting (made on first use, closed by ``aclose``)."""
        key = (proxy, trust_env)
        client = self._clients.get(key)
        if client is None:
            # idle connections are scanned on every request (httpcore's pool): keep no more
            # than the per-host limit lets us use
            keep = max(2, self._policy.max_connections_per_host)
            limits = httpx.Limits(max_keepalive_connections=keep)
            client = self.new_client(proxy, trust_env, limits, lean=self._policy.lean_transport)
            self._clients[key] = client
        return client

    def new_client(
        self, proxy: str | None, trust_env: bool, limits: httpx.Limits, *, lean: bool = False
    ) -> httpx.AsyncClient:
        """An httpx client with the policy's timeouts, TLS, redirect rules and headers.

        *lean*: plain GETs go through ``LeanTransport``; proxied requests, and what the lean
        transport does not serve, go through httpx's own transport with larger reads.
        """
        p = self._policy
        tls: ssl.SSLContext | None = None

        def make_transport(through: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
            nonlocal tls
            if tls is None:  # one TLS context (CA bundle loaded once) for all of them
                tls = httpx.create_ssl_context(verify=_ssl_context(p.verify), trust_env=trust_env)
            fallback = fallback_transport(
                p.read_size, verify=tls, limits=limits, trust_env=trust_env, proxy=through
            )
            if not lean or through is not None:
                return fallback
            return LeanTransport(
                fallback,
                ssl_context=tls,
                read_size=p.read_size,
                max_idle_per_host=limits.max_keepalive_connections or 1,
                receive_buffer=p.receive_buffer,
            )

        return _Client(
            make_transport,
            transport=self._transport,
            proxy=proxy,
            trust_env=trust_env,
            follow_redirects=True,
            max_redirects=p.max_redirects,
            timeout=httpx.Timeout(p.read_timeout, connect=p.connect_timeout, pool=None),
            limits=limits,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            event_hooks={"response": [self._check_redirect]},
        )

    async def _check_redirect(self, response: httpx.Response) -> None:
        """Refuse a redirect to another scheme (https → http only when the policy allows it)."""
        if not response.has_redirect_location:
            return
        try:
            target = response.request.url.join(response.headers["location"])
        except httpx.InvalidURL:
            return  # httpx itself refuses it
        src, dst = response.request.url.scheme, target.scheme
        if src == dst or (src == "http" and dst == "https"):
            return
        if src == "https" and dst == "http" and self._policy.allow_https_to_http:
            return
        raise TransferFailure(
            _codes.ERROR_WINHTTP_REDIRECT_FAILED,
            ErrorContext.REMOTE_FILE,
            transient=False,
            message=f"refused a redirect from {src} to {dst}",
        )

    def _slot(self, url: str) -> asyncio.Semaphore:
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.netloc}"
        sem = self._host_slots.get(host)
        if sem is None:
            sem = self._host_slots[host] = asyncio.Semaphore(self._policy.max_connections_per_host)
        return sem

    async def aclose(self) -> None:
        """Close every client (and their connections)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        pool, self._hash_pool = self._hash_pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    async def download(self, f: FileRecord, ctx: FileContext) -> None:
        """Bring *f*'s temporary file to the whole remote content, durably."""
        f.connections = 1
        try:
            await self._download(f, ctx)
        finally:
            f.connections = 0

    async def _download(self, f: FileRecord, ctx: FileContext) -> None:
        for _ in range(5):  # a file that keeps changing under us gives up after a few restarts
            try:
                slot = contextlib.nullcontext() if ctx.foreground else self._slot(f.remote_name)
                async with slot:
                    if f.segments:
                        await self._fetch_segments(f, ctx)
                    elif f.ranges:
                        await self._fetch_ranges(f, ctx)
                    else:
                        await self._fetch(f, ctx)
                return
            except _Restart:
                self._partials.pop(f.temp_name, None)
                _truncate(f)
                ctx.on_restart(f)
            except httpx.HTTPError as exc:
                raise network_failure(exc) from exc
        raise TransferFailure(
            _codes.BG_E_REMOTE_FILE_CHANGED,
            ErrorContext.REMOTE_FILE,
            transient=True,
            message="the remote file kept changing during the transfer",
        )

    def _request_headers(self, f: FileRecord, ctx: FileContext, offset: int) -> dict[str, str]:
        headers = self._digest_headers(f, ctx)
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if _strong(f.etag):
                headers["If-Range"] = f.etag  # type: ignore[assignment]
            elif f.last_modified:
                headers["If-Range"] = f.last_modified
        return headers

    def _digest_headers(self, f: FileRecord, ctx: FileContext) -> dict[str, str]:
        """The job's headers, and those asking for digests when no known hash is given (the
        job's own headers win)."""
        if f.known_hash is not None:
            return dict(ctx.headers)
        headers = digest_request_headers(f.remote_name)
        mine = {k.lower() for k in ctx.headers}
        headers = {k: v for k, v in headers.items() if k.lower() not in mine}
        headers.update(ctx.headers)
        return headers

    def _check_for(self, f: FileRecord) -> _Check:
        expected = known_digest(f.known_hash) if f.known_hash is not None else None
        return _Check(expected, self._partials.pop(f.temp_name, None))

    def _keep_partial(self, f: FileRecord, check: _Check) -> None:
        """Keep the hash of a file that stopped mid-way, for when it continues in this process."""
        if check.sound and check.whole is not None and check.whole.hashed > 0:
            while len(self._partials) >= _MAX_PARTIALS:  # bounded: one removed per pass
                del self._partials[next(iter(self._partials))]
            self._partials[f.temp_name] = check.whole

    def _verify(self, f: FileRecord, check: _Check) -> None:
        """Every byte is in: the whole file's hash against what it should be (a mismatch
        empties the temporary file and raises BG_E_VALIDATION_FAILED)."""
        whole, expected = check.whole, check.expected
        if whole is None or whole.hashed != f.bytes_transferred:
            if expected is not None and f.bytes_transferred == 0:
                whole = _Partial(expected.algorithm, new_hasher(expected.algorithm), 0)
            else:
                return  # nothing was asked for
        got = whole.hasher.digest()
        f.hash = f"{whole.algorithm}:{got.hex()}"
        if expected is not None and got != expected.value:
            _truncate(f)
            f.validation_state = False
            raise validation_failure(
                f,
                f"{expected.algorithm} mismatch: expected {expected.value.hex()} "
                f"({expected.source}), got {got.hex()}",
            )
        f.validation_state = True

    async def _fetch(self, f: FileRecord, ctx: FileContext) -> None:
        offset = _temp_size(f)
        if f.transferred and f.bytes_total is not None and offset == f.bytes_total:
            return
        check = self._check_for(f)
        try:
            await self._fetch_checked(f, ctx, offset, check)
        except BaseException:
            self._keep_partial(f, check)
            raise
        self._verify(f, check)

    async def _fetch_checked(
        self, f: FileRecord, ctx: FileContext, offset: int, check: _Check
    ) -> None:
        if f.bytes_total is not None and offset > f.bytes_total:
            raise _Restart
        if offset > 0 and f.etag is None and f.last_modified is None:
            # nothing to validate a resume against: start again
            raise _Restart
        if ctx.dynamic_content and offset > 0:
            raise _Restart  # dynamic content never resumes (spec §1.7)
        client = self.client(ctx.proxy, ctx.trust_env)
        if offset > 0 and f.bytes_total is not None and offset >= f.bytes_total:
            # every byte is on disk but the file was never marked done (stopped during its
            # final fsync): ask for the last byte, so a 206 confirms the file is unchanged
            offset -= 1
        headers = self._request_headers(f, ctx, offset)
        async with client.stream("GET", f.remote_name, headers=headers, auth=ctx.auth) as resp:
            status = resp.status_code
            etag = resp.headers.get("etag")
            last_modified = resp.headers.get("last-modified")
            if status == 206 and offset > 0:
                content_range = resp.headers.get("content-range")
                span = parse_content_range(content_range)
                if span is None or span.first != offset:
                    raise _invalid_response(f"bad Content-Range {content_range!r}", transient=True)
                if (
                    (span.total is not None and f.bytes_total not in (None, span.total))
                    or (etag and f.etag and etag != f.etag)
                    or (last_modified and f.last_modified and last_modified != f.last_modified)
                ):
                    raise _Restart
            elif status == 200:
                try:
                    size = parse_content_length(resp.headers.get("content-length"))
                except BadLength as exc:
                    # refused before anything is stored (a length over 2^63-1 fits no file);
                    # retried, as BITS retries a response it found invalid
                    raise _invalid_response(f"bad Content-Length: {exc}", transient=True) from None
                if offset > 0:
                    changed = (
                        (etag or None) != f.etag
                        or (last_modified or None) != f.last_modified
                        or (size is not None and size != f.bytes_total)
                    )
                    if not changed and not ctx.dynamic_content:
                        raise TransferFailure(
                            _codes.BG_E_INSUFFICIENT_RANGE_SUPPORT,
                            ErrorContext.REMOTE_FILE,
                            transient=False,
                            message="the server answered a Range request with the whole file",
                        )
                    _truncate(f)
                    ctx.on_restart(f)
                    offset = 0
                if size is None and not ctx.dynamic_content:
                    raise TransferFailure(
                        _codes.BG_E_MISSING_FILE_SIZE,
                        ErrorContext.REMOTE_FILE,
                        transient=False,
                        message="the server did not send Content-Length (set dynamic_content)",
                    )
                f.bytes_total = size
                f.etag = etag
                f.last_modified = last_modified
                ctx.on_validators(f)
            elif status == 416 and offset > 0:
                raise _Restart
            else:
                raise TransferFailure(
                    _codes.http_error(status),
                    ErrorContext.REMOTE_FILE,
                    transient=is_transient_status(status),
                    message=f"HTTP {status} for {redact_url(str(resp.url))}",
                    retry_after=_retry_after(resp),
                )
            ctx.on_connected()
            if check.expected is None:  # no known hash: the server's digest of the whole file
                check.expected = representation_digest(resp.headers)
            if self._may_split(f, ctx, resp, offset):
                assert f.bytes_total is not None
                run = _Split(self, f, ctx, check, [(0, offset, f.bytes_total)], split=False)
                await run.run(resp)
            else:
                await self._write_body(f, ctx, resp, offset, check)
        if f.bytes_total is None:
            f.bytes_total = f.bytes_transferred
        elif f.bytes_transferred != f.bytes_total:
            raise TransferFailure(
                _codes.ERROR_WINHTTP_CONNECTION_ERROR,
                ErrorContext.REMOTE_FILE,
                transient=True,
                message=f"the connection ended at byte {f.bytes_transferred} of {f.bytes_total}",
            )

    def _may_split(
        self, f: FileRecord, ctx: FileContext, resp: httpx.Response, offset: int
    ) -> bool:
        """Whether this file may be fetched in segments: a known size, a strong validator for
        If-Range, no ranges of its own, no per-response digest to check, enough of it left."""
        p = self._policy
        return (
            p.max_connections_per_file > 1
            and not f.ranges
            and not ctx.dynamic_content
            and f.bytes_total is not None
            and _strong(f.etag)
            and content_digest(resp.headers) is None
            and f.bytes_total - offset >= 2 * p.min_segment_bytes
        )

    async def _fetch_segments(self, f: FileRecord, ctx: FileContext) -> None:
        """Resume a segmented file from its table: every segment left, with If-Range."""
        total = f.bytes_total
        table = check_table(f.segments or (), total) if total is not None else None
        if table is None or not _strong(f.etag) or ctx.dynamic_content or f.ranges:
            raise _Restart
        if all(d == e for _, d, e in table):
            # every byte is on disk but the file was never marked done: fetch its last byte
            # again, so that a 206 confirms the file is unchanged
            start, _, end = table[-1]
            table[-1] = (start, end - 1, end)
        f.bytes_transferred = done_bytes(table)
        check = self._check_for(f)
        try:
            await _Split(self, f, ctx, check, table, split=True).run(None)
        except BaseException:
            self._keep_partial(f, check)
            raise
        self._verify(f, check)

    async def _fetch_ranges(self, f: FileRecord, ctx: FileContext) -> None:
        # a server's digest is of the whole remote file, not of these ranges: only a known
        # hash (of the ranges back to back) and each response's Content-Digest are checked
        check = self._check_for(f)
        try:
            await self._fetch_ranges_checked(f, ctx, check)
        except BaseException:
            self._keep_partial(f, check)
            raise
        self._verify(f, check)

    async def _fetch_ranges_checked(self, f: FileRecord, ctx: FileContext, check: _Check) -> None:
        assert f.ranges is not None
        offset = _temp_size(f)
        done_before = 0
        client = self.client(ctx.proxy, ctx.trust_env)
        for i, (start, length) in enumerate(f.ranges):
            if length is not None and offset >= done_before + length:
                done_before += length
                continue
            skip = offset - done_before
            first = start + skip
            last = "" if length is None else str(start + length - 1)
            headers = self._digest_headers(f, ctx)
            headers["Range"] = f"bytes={first}-{last}"
            async with client.stream("GET", f.remote_name, headers=headers, auth=ctx.auth) as resp:
                if resp.status_code == 200:
                    raise TransferFailure(
                        _codes.BG_E_INSUFFICIENT_RANGE_SUPPORT,
                        ErrorContext.REMOTE_FILE,
                        transient=False,
                        message="the server answered a Range request with the whole file",
                    )
                if resp.status_code == 416:
                    raise TransferFailure(
                        _codes.BG_E_INVALID_RANGE,
                        ErrorContext.REMOTE_FILE,
                        transient=False,
                        message=f"range {first}-{last} lies outside the remote file",
                    )
                if resp.status_code != 206:
                    raise TransferFailure(
                        _codes.http_error(resp.status_code),
                        ErrorContext.REMOTE_FILE,
                        transient=is_transient_status(resp.status_code),
                        message=f"HTTP {resp.status_code}",
                        retry_after=_retry_after(resp),
                    )
                span = parse_content_range(resp.headers.get("content-range"))
                if (
                    span is None
                    or span.first != first
                    or span.last is None
                    or (last and span.last != int(last))
                ):
                    # BITS documents a range error after Resume as fatal
                    raise _invalid_response(
                        "the server's Content-Range does not match the requested range",
                        transient=False,
                    )
                if length is None:
                    # to EOF: the range's length is now known
                    length = span.last - start + 1
                    if length + sum(n or 0 for _, n in f.ranges) > MAX_LENGTH:
                        raise _invalid_response(
                            "the ranges would add up to more than 2^63-1 bytes", transient=False
                        )
                    f.ranges[i] = (start, length)
                f.bytes_total = sum(n or 0 for _, n in f.ranges)
                ctx.on_connected()
                await self._write_body(f, ctx, resp, offset, check)
            offset = _temp_size(f)
            if offset < done_before + length:
                raise TransferFailure(
                    _codes.ERROR_WINHTTP_CONNECTION_ERROR,
                    ErrorContext.REMOTE_FILE,
                    transient=True,
                    message="the connection ended before the range was complete",
                )
            done_before += length

    async def _begin_hashes(
        self, fh: IO[bytes], check: _Check, headers: Mapping[str, str], offset: int
    ) -> None:
        """Ready the hashers for a body written from *offset*: the whole file's (its prefix
        on disk re-hashed, once, unless this process hashed it already) and the response's."""
        check.content = check.content_hasher = None
        if not (check.expected is not None and check.expected.source == "known hash"):
            check.content = content_digest(headers)  # the user's known hash wins
            if check.content is not None:
                check.content_hasher = new_hasher(check.content.algorithm)
        whole = check.whole
        if check.expected is None:
            check.whole = None
            return
        alg = check.expected.algorithm
        if whole is None or whole.algorithm != alg or whole.hashed > offset:
            whole = check.whole = _Partial(alg, streaming_hasher(alg), 0)
        if whole.hashed < offset:
            check.sound = False
            read = await asyncio.get_running_loop().run_in_executor(
                self._pool(), _hash_prefix, fh.fileno(), whole.hasher, whole.hashed, offset
            )
            self.bytes_rehashed += read
            whole.hashed = offset
            check.sound = True

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._hash_pool is None:
            self._hash_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, self._policy.files_in_flight), thread_name_prefix="bitsnb-hash"
            )
        return self._hash_pool

    async def _write_body(
        self,
        f: FileRecord,
        ctx: FileContext,
        resp: httpx.Response,
        offset: int,
        check: _Check | None = None,
    ) -> None:
        """Stream the body into the temporary file from *offset*, checkpointing as it goes.

        A checkpoint's fdatasync runs in a thread while the body keeps arriving (one at a
        time); the store records the byte count the sync covered once it is done, so the
        store never claims more than is on disk. The final fsync waits for everything.
        With *check*, each view is hashed once written, before the next one is taken; the
        response's Content-Digest is checked at its end.
        """
        policy = self._policy
        try:
            if offset > 0:
                fh: IO[bytes] = open_private(f.temp_name)
            else:
                fh = await _create(f.temp_name)
        except OSError as exc:
            raise local_failure(exc, f.temp_name) from exc
        syncing: asyncio.Task[None] | None = None
        unwatch = ctx.watch(resp)  # the bandwidth loop samples its connection's round trip

        async def checkpoint(upto: int) -> None:
            await asyncio.to_thread(os.fdatasync, fh.fileno())
            ctx.on_checkpoint(f, upto)

        try:
            fh.seek(offset)
            fh.truncate()
            f.bytes_transferred = offset
            last_checkpoint_at = time.monotonic()
            last_checkpoint_bytes = offset
            hashers: list[Hasher] = []
            try:
                if check is not None:
                    await self._begin_hashes(fh, check, resp.headers, offset)
                    hashers = check.hashers()
                # a lean response's body comes as views of its connection's buffer (no copy)
                chunks = body_views(resp) or resp.aiter_raw()
                throttle = ctx.throttle
                async for chunk in chunks:
                    fh.write(chunk)
                    if hashers:  # on the loop: measured faster than a thread hop per view
                        _update_all(hashers, memoryview(chunk))
                    if check is not None and check.whole is not None:
                        check.whole.hashed += len(chunk)
                    f.bytes_transferred += len(chunk)
                    if throttle is not None and throttle.limited:
                        await throttle.take(
                            len(chunk)
                        )  # before the next read: TCP slows the sender
                    ctx.on_progress(f)
                    if (syncing is None or syncing.done()) and (
                        f.bytes_transferred - last_checkpoint_bytes >= policy.checkpoint_bytes
                        or time.monotonic() - last_checkpoint_at >= policy.checkpoint_interval
                    ):
                        if syncing is not None:
                            syncing.result()  # a failed sync (disk full) surfaces here
                        fh.flush()
                        syncing = asyncio.create_task(checkpoint(f.bytes_transferred))
                        last_checkpoint_at = time.monotonic()
                        last_checkpoint_bytes = f.bytes_transferred
                    if ctx.should_yield() and _worth_yielding(f):
                        raise YieldSlice
                fh.flush()
                if check is not None:
                    check.sound = True
                    _check_content(f, check)
                if syncing is not None:
                    await syncing
                    syncing = None
                await asyncio.to_thread(os.fsync, fh.fileno())
            except OSError as exc:
                raise local_failure(exc, f.temp_name) from exc
        finally:
            unwatch()
            if syncing is not None and not syncing.done():
                # the descriptor must stay open while the thread syncs it
                await asyncio.wait([syncing])
            if syncing is not None and syncing.done() and not syncing.cancelled():
                syncing.exception()  # retrieved, so asyncio does not warn about it
            fh.close()


async def _create(path: str) -> IO[bytes]:
    """Create (or empty) *path* in a thread: that costs ~0.3 ms of kernel time on some file
    systems, and other transfers go on meanwhile. A cancelled caller still waits for the
    thread and closes the file, so nothing creates it after cancel() deleted the temps."""
    fut = asyncio.get_running_loop().run_in_executor(None, create_private, path)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        if not fut.cancelled() and fut.exception() is None:
            fut.result().close()
        raise


def _check_content(f: FileRecord, check: _Check) -> None:
    """A response's Content-Digest against the bytes it brought (a mismatch: the file again)."""
    expected, hasher = check.content, check.content_hasher
    check.content = check.content_hasher = None
    if expected is None or hasher is None:
        return
    got = hasher.digest()
    if got != expected.value:
        check.whole = None
        check.sound = False
        _truncate(f)
        f.validation_state = False
        raise validation_failure(
            f,
            f"{expected.algorithm} mismatch in this response's bytes: expected "
            f"{expected.value.hex()} ({expected.source}), got {got.hex()}",
        )


def _worth_yielding(f: FileRecord) -> bool:
    """Give up a slot mid-file only when much of the file is left; else finish it first."""
    if f.bytes_total is None:
        return True
    return f.bytes_total - f.bytes_transferred > YIELD_MID_FILE_BYTES


def _temp_size(f: FileRecord) -> int:
    try:
        return private_size(f.temp_name)
    except OSError as exc:
        raise local_failure(exc, f.temp_name) from exc


def _truncate(f: FileRecord) -> None:
    f.segments = None
    f.bytes_transferred = 0
    f.transferred = False
    f.hash = None
    f.etag = None
    f.last_modified = None
    if f.ranges is None:
        f.bytes_total = None
    try:
        truncate_private(f.temp_name)
    except OSError as exc:
        raise local_failure(exc, f.temp_name) from exc


# -- segmented downloads ------------------------------------------------------------------------
_MAX_REQUESTS = 1024  # requests one connection of a segmented download makes, at most
_JUDGE_SECONDS = 1.0  # a connection on trial is dropped for a small gain only after this long
_BUSY_LOOP = 0.8  # share of the time the loop's thread computes, above which none is added
_MAX_RESTARTS = 8  # times a segmented download starts a connection anew when none is left


class _NoRanges(Exception):
    """A second connection's Range was answered with the whole file: stay on the ones there."""


@dataclass(eq=False)
class _Conn:
    """One connection of a segmented download: the segment it fills and how fast."""

    slot: asyncio.Semaphore | None  # an extra connection's host slot (None: the download's own)
    seg: _Seg | None = None
    began: float | None = None  # when its current response's first body byte came
    bytes: int = 0  # body bytes of its current response
    rate: float = 0.0  # its rate over its last response
    retire: bool = False  # one connection too many: stop at the next chunk

    def now_rate(self, now: float) -> float:
        """Its rate over the current response (the last one's before a byte came)."""
        if self.began is None or now <= self.began:
            return self.rate
        return self.bytes / (now - self.began)


@dataclass(eq=False)
class _Seg:
    """Bytes [start, end) of the file, written up to *done*."""

    start: int
    done: int
    end: int
    owner: _Conn | None = None


def _preallocate(fd: int, size: int) -> None:
    """Reserve *size* bytes for the file (a full disk fails here, not mid-way); where the file
    system cannot, just set the size."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    while view:  # bounded: every pass writes ≥ 1 byte or raises
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


class _Split:
    """One file fetched over one or more connections, each writing its segment at its offset
    in one temporary file (``os.pwrite``: no part files, nothing copied after).

    It starts on one connection; every ``segment_window`` it measures the file's rate and, while
    the last connection added raised it by ``GAIN`` and two minimum segments are left, splits
    the largest remaining range for one more (within the per-file and per-host limits, never
    waiting for a host slot). A connection that ends its segment takes a segment nobody has,
    else half of the largest range left, else the tail of a straggler. The first split is saved
    in the store (``save_segments``) before the file is preallocated, so that a crash resumes
    every segment from the table and never takes the file's size for its progress; checkpoints
    save the table as far as an fdatasync covered it. The whole file's hash is fed in order:
    the connection writing at the hashed prefix's end hashes as it writes, and whatever other
    connections wrote is read back once the prefix reaches it.
    """

    def __init__(
        self,
        engine: Engine,
        f: FileRecord,
        ctx: FileContext,
        check: _Check,
        table: list[tuple[int, int, int]],
        *,
        split: bool,
    ) -> None:
        assert f.bytes_total is not None
        self.engine, self.f, self.ctx, self.check = engine, f, ctx, check
        self.policy = engine._policy
        self.total = f.bytes_total
        self.segs = [_Seg(a, b, c) for a, b, c in table]
        self.split = split  # the store holds a table: the file is (to be) preallocated
        self.fd = -1
        self.conns: dict[asyncio.Task[None], _Conn] = {}
        self.cap = max(1, self.policy.max_connections_per_file)
        self.ranges_ok = True  # False once a Range was answered with the whole file
        self.primary_free = True
        self.failure: BaseException | None = None
        self.restarts = 0
        self.hashing: asyncio.Task[None] | None = None
        self.syncing: asyncio.Task[None] | None = None
        self.cp_at = time.monotonic()
        self.cp_bytes = f.bytes_transferred
        self.base_rate = 0.0
        self.window: tuple[float, int] | None = None  # (time, bytes) the window began at
        self.trial: _Conn | None = None  # the connection last added, on trial
        self.cpu_from = 0.0  # the loop thread's CPU time when the window began
        self.samples: collections.deque[tuple[float, int]] = collections.deque()  # (time, bytes)
        self.adding = True

    # -- the run ------------------------------------------------------------------------------
    async def run(self, first: httpx.Response | None) -> None:
        """Fetch every segment (from *first*, the response already open, if given)."""
        fh = await self._open(first)
        try:
            self.fd = fh.fileno()
            if first is not None:
                await self.engine._begin_hashes(fh, self.check, first.headers, self.segs[0].done)
                self._start(self.segs[0], None, first)
            else:
                self._ready_hash()
                await self._start_pending()
            try:
                await self._loop()
                await self._finish()
            except BaseException:
                await self._stop()
                raise
        finally:
            self.f.connections = 0
            fh.close()

    async def _open(self, first: httpx.Response | None) -> IO[bytes]:
        f = self.f
        try:
            if first is None:
                try:
                    fh = open_private(f.temp_name)
                except FileNotFoundError:
                    raise _Restart from None
                size = os.fstat(fh.fileno()).st_size
                if any(d > size for s, d, _ in ((s.start, s.done, s.end) for s in self.segs)):
                    fh.close()
                    raise _Restart  # the table claims bytes the file does not hold
                try:
                    if size > self.total:  # nothing past the end may stay in the file
                        os.ftruncate(fh.fileno(), self.total)
                    await asyncio.to_thread(_preallocate, fh.fileno(), self.total)
                except BaseException:
                    fh.close()
                    raise
                return fh
            offset = self.segs[0].done
            if offset == 0:
                (await _create(f.temp_name)).close()
            fh = open_private(f.temp_name)  # read and write: hashes read segments back
            fh.truncate(offset)
            f.bytes_transferred = offset
            return fh
        except OSError as exc:
            raise local_failure(exc, f.temp_name) from exc

    def _ready_hash(self) -> None:
        """A resumed table: the whole file's hasher, from the prefix this process hashed."""
        check = self.check
        check.content = check.content_hasher = None
        if check.expected is None:
            check.whole = None
            return
        alg = check.expected.algorithm
        whole = check.whole
        if whole is None or whole.algorithm != alg or whole.hashed > contiguous_end(self._table()):
            check.whole = _Partial(alg, new_hasher(alg), 0)

    async def _loop(self) -> None:
        tick = max(0.02, min(0.1, self.policy.segment_window / 5))
        while True:  # bounded: ends when every segment is written, or raises
            self._reap()
            if all(s.done >= s.end for s in self.segs):
                return
            if not self.conns:
                self.restarts += 1
                if self.failure is not None or self.restarts > _MAX_RESTARTS:
                    raise self.failure or _connection_ended()
                await self._start_pending()
            self._checkpoint_due()
            self._hash_more()
            await self._maybe_add()
            if self.conns:
                await asyncio.wait(list(self.conns), timeout=tick)

    def _reap(self) -> None:
        for task in [t for t in self.conns if t.done()]:
            conn = self.conns.pop(task)
            self.f.connections = len(self.conns)
            if conn is self.trial:
                self.trial = None
            exc = None if task.cancelled() else task.exception()
            if exc is None:
                continue
            if isinstance(exc, _NoRanges):
                self.ranges_ok, self.adding, self.cap = False, False, 1
                continue
            transient = isinstance(exc, httpx.HTTPError) or (
                isinstance(exc, TransferFailure) and exc.transient
            )
            if transient and self.conns:
                # an extra connection the host refused or dropped: its segment goes back to
                # the others, and this file tries no more connections than it has
                self.adding = False
                self.cap = max(1, len(self.conns))
                continue
            if isinstance(exc, httpx.HTTPError):
                exc = network_failure(exc)
            raise exc

    def _start(
        self, seg: _Seg, slot: asyncio.Semaphore | None, resp: httpx.Response | None
    ) -> _Conn:
        conn = _Conn(slot, seg)
        seg.owner = conn
        if slot is None:
            self.primary_free = False
        task = asyncio.create_task(self._work(conn, resp))
        self.conns[task] = conn
        self.f.connections = len(self.conns)
        return conn

    async def _start_pending(self) -> None:
        """A connection for each segment nobody fills (the download's own slot first, then free
        host slots, within the per-file cap)."""
        for seg in self.segs:
            if seg.owner is not None or seg.done >= seg.end or len(self.conns) >= self.cap:
                continue
            if self.primary_free:
                self._start(seg, None, None)
                continue
            slot = await self._free_slot() if self.ranges_ok else None
            if slot is None:
                return
            self._start(seg, slot, None)

    async def _free_slot(self) -> asyncio.Semaphore | None:
        """A host slot taken at once, or None when the host has none free (or files wait)."""
        sem = self.engine._slot(self.f.remote_name)
        if sem.locked():
            return None
        await sem.acquire()  # free: it does not wait
        return sem

    def _table(self) -> list[tuple[int, int, int]]:
        return [(s.start, s.done, s.end) for s in self.segs]

    # -- one connection -------------------------------------------------------------------------
    async def _work(self, conn: _Conn, resp: httpx.Response | None) -> None:
        try:
            for _ in range(_MAX_REQUESTS):
                seg = conn.seg
                if seg is None or conn.retire:
                    return
                if seg.done >= seg.end:
                    seg.owner = None
                    conn.seg = self._next_for(conn)
                    continue
                if resp is not None:
                    first, resp = resp, None
                    try:
                        await self._stream(conn, first)
                    finally:
                        await first.aclose()
                else:
                    await self._request(conn, seg)
            raise _connection_ended()
        finally:
            if conn.seg is not None:
                self._give_back(conn.seg)
                conn.seg = None
            if conn.slot is None:
                self.primary_free = True
            else:
                conn.slot.release()

    def _give_back(self, seg: _Seg) -> None:
        """*seg* has no connection now: an untouched one joins the segment before it."""
        seg.owner = None
        i = self.segs.index(seg)
        if i > 0 and seg.done == seg.start:
            self.segs[i - 1].end = seg.end
            del self.segs[i]

    def _next_for(self, conn: _Conn) -> _Seg | None:
        """A free connection's next segment: one nobody fills, else half of the largest range
        left, else the tail of a straggler (None: nothing worth a request)."""
        for seg in self.segs:
            if seg.owner is None and seg.done < seg.end:
                seg.owner = conn
                return seg
        if not self.ranges_ok or conn.retire:
            return None
        now = time.monotonic()
        rates = {id(s): s.owner.now_rate(now) for s in self.segs if s.owner is not None}
        busy = [s for s in self.segs if id(s) in rates and s.done < s.end]
        if not busy:
            return None
        # the range that would end last: halved while large, else its tail taken so both end
        # together (most of a straggler's)
        last = max(busy, key=lambda s: (s.end - s.done) / max(1.0, rates[id(s)]))
        cut = split_point(last.done, last.end, self.policy.min_segment_bytes)
        if cut is None:
            cut = takeover_point(last.done, last.end, rates[id(last)], conn.rate)
        return self._cut(last, cut, conn) if cut is not None else None

    def _cut(self, seg: _Seg, cut: int, owner: _Conn | None) -> _Seg:
        new = _Seg(cut, cut, seg.end, owner)
        seg.end = cut
        self.segs.insert(self.segs.index(seg) + 1, new)
        return new

    async def _request(self, conn: _Conn, seg: _Seg) -> None:
        f, ctx = self.f, self.ctx
        client = self.engine.client(ctx.proxy, ctx.trust_env)
        headers = self.engine._digest_headers(f, ctx)
        headers["Range"] = f"bytes={seg.done}-{seg.end - 1}"
        headers["If-Range"] = f.etag or ""
        async with client.stream("GET", f.remote_name, headers=headers, auth=ctx.auth) as resp:
            if self._accept(resp, seg):
                ctx.on_connected()
                await self._stream(conn, resp)
                return
            # the whole file for a Range: fine for the one connection left, not for more
            if len(self.conns) > 1:
                raise _NoRanges
            self.ranges_ok, self.adding, self.cap = False, False, 1
            whole = _Seg(0, 0, self.total, conn)
            self.segs = [whole]
            conn.seg = whole
            f.bytes_transferred = 0
            ctx.on_connected()
            await self._stream(conn, resp)

    def _accept(self, resp: httpx.Response, seg: _Seg) -> bool:
        """True for a 206 of *seg*'s range, False for the same file whole; else raises."""
        status, etag = resp.status_code, resp.headers.get("etag")
        if status == 206:
            content_range = resp.headers.get("content-range")
            span = parse_content_range(content_range)
            if span is None or span.first != seg.done or span.last is None:
                raise _invalid_response(f"bad Content-Range {content_range!r}", transient=True)
            if (span.total is not None and span.total != self.total) or (
                etag and etag != self.f.etag
            ):
                raise _Restart
            return True
        if status == 200:
            try:
                size = parse_content_length(resp.headers.get("content-length"))
            except BadLength as exc:
                raise _invalid_response(f"bad Content-Length: {exc}", transient=True) from None
            if etag != self.f.etag or size != self.total:
                raise _Restart  # If-Range failed: the file changed
            return False
        if status == 416:
            raise _Restart
        raise TransferFailure(
            _codes.http_error(status),
            ErrorContext.REMOTE_FILE,
            transient=is_transient_status(status),
            message=f"HTTP {status} for {redact_url(str(resp.url))}",
            retry_after=_retry_after(resp),
        )

    async def _stream(self, conn: _Conn, resp: httpx.Response) -> None:
        """Write *resp*'s body at its segment's offsets until the segment (which may shrink
        or grow meanwhile) is full or the body ends."""
        seg = conn.seg
        assert seg is not None
        f, ctx, fd = self.f, self.ctx, self.fd
        whole = self.check.whole
        throttle = ctx.throttle
        conn.began, conn.bytes = None, 0
        chunks = body_views(resp) or resp.aiter_raw()
        # every segment's connection is paced like a single one: without it a segmented
        # background file neither yielded (4.2 of 12.5 MB/s beside a curl in the WAN
        # testbed) nor held a cap on the wire
        unwatch = ctx.watch(resp)
        try:
            async for chunk in chunks:
                if conn.began is None:
                    conn.began = time.monotonic()
                pos = seg.done
                n = min(len(chunk), seg.end - pos)
                view = memoryview(chunk)[:n]
                _pwrite_all(fd, view, pos)
                if whole is not None and pos == whole.hashed and self.hashing is None:
                    whole.hasher.update(view)
                    whole.hashed += n
                seg.done = pos + n
                conn.bytes += n
                f.bytes_transferred += n
                if throttle is not None and throttle.limited:
                    await throttle.take(n)
                ctx.on_progress(f)
                if ctx.should_yield() and _worth_yielding(f):
                    raise YieldSlice
                if seg.done >= seg.end or conn.retire:
                    break
        except OSError as exc:
            raise local_failure(exc, f.temp_name) from exc
        finally:
            unwatch()
        conn.rate = conn.now_rate(time.monotonic())

    # -- more connections -----------------------------------------------------------------------
    async def _maybe_add(self) -> None:
        """Measure the file's rate; keep the connection on trial if it paid, and try one more
        while the rules allow.

        Servers that cap each connection send in bursts (nginx's ``limit_rate`` by the
        second), and a loaded machine's rate wanders by more than 10 %: so the rate without the
        trial is measured over at least ``_JUDGE_SECONDS``; a trial is kept early when a window
        of ``segment_window`` shows half a connection's share more (capped connections add a
        whole share), else judged by ``GAIN`` once ``_JUDGE_SECONDS`` have passed.
        """
        now, got = time.monotonic(), self.f.bytes_transferred
        samples = self.samples
        samples.append((now, got))
        while len(samples) > 2 and now - samples[1][0] >= _JUDGE_SECONDS:
            samples.popleft()  # bounded: keeps the newest sample a second old, and later ones
        if not self.adding or any(c.began is None for c in self.conns.values()):
            return  # a connection not flowing yet: its rate would count for nothing
        if self.window is None:
            self.window, self.cpu_from = (now, got), time.thread_time()
            return
        began, before = self.window
        took = now - began
        if self.trial is None:
            if took >= _JUDGE_SECONDS:
                self.base_rate = (got - before) / took
                busy = (time.thread_time() - self.cpu_from) / took
                self.window, self.cpu_from = (now, got), time.thread_time()
                if busy < _BUSY_LOOP:  # a loop busy all the time goes no faster with more
                    await self._add()
            return
        if took < self.policy.segment_window:
            return
        rate = (got - before) / took
        early = took < _JUDGE_SECONDS
        if gained(self.base_rate, rate, len(self.conns) - 1 if early else None):
            # kept; the next one is measured against the last second (a little of it without
            # this one: never above what these connections give)
            self.trial = None
            then, had = samples[0]
            self.base_rate = (got - had) / (now - then) if now > then else 0.0
            self.window = (now, got)
            await self._add()
        elif not early:
            # one more did not make it faster: back to what it was, and no more tries
            self.trial.retire = True
            self.trial = None
            self.adding = False
            self.cap = max(1, len(self.conns) - 1)

    async def _add(self) -> None:
        left = [s for s in self.segs if s.done < s.end]
        if not left or not self.ranges_ok:
            return
        biggest = max(left, key=lambda s: s.end - s.done)
        min_seg = self.policy.min_segment_bytes
        if not may_add(biggest.end - biggest.done, min_seg, len(self.conns), self.cap):
            return
        if self.engine._slot(self.f.remote_name).locked():
            return  # the host's slots are taken: measure again, try later
        if not self.split:
            new = await self._first_split()
        else:
            cut = split_point(biggest.done, biggest.end, min_seg)
            new = self._cut(biggest, cut, None) if cut is not None else None
        if new is None or new.owner is not None or new.done >= new.end:
            return
        slot = await self._free_slot()
        if slot is None:
            return
        if new.owner is not None:  # taken while the slot was had
            slot.release()
            return
        self.trial = self._start(new, slot, None)
        self.window = None

    async def _first_split(self) -> _Seg | None:
        """Split the one segment in two: the table goes to the store (as far as an fdatasync
        covered the first), then the file is preallocated; None if the store did not take it."""
        if self.syncing is not None:
            await asyncio.wait([self.syncing])
        durable = self.segs[0].done
        try:
            await asyncio.to_thread(os.fdatasync, self.fd)
        except OSError as exc:
            raise local_failure(exc, self.f.temp_name) from exc
        seg = self.segs[0]
        cut = split_point(seg.done, seg.end, self.policy.min_segment_bytes)
        if cut is None or len(self.segs) != 1:
            return None
        table = [(0, durable, cut), (cut, cut, self.total)]
        self.f.segments = table
        if not self.ctx.save_segments(dataclasses.replace(self.f, bytes_transferred=durable)):
            self.f.segments = None
            self.adding = False
            return None
        self.split = True
        new = self._cut(seg, cut, None)
        try:
            await asyncio.to_thread(_preallocate, self.fd, self.total)
        except OSError as exc:
            raise local_failure(exc, self.f.temp_name) from exc
        return new

    # -- checkpoints, hashes, the end -----------------------------------------------------------
    def _checkpoint_due(self) -> None:
        if self.syncing is not None:
            if not self.syncing.done():
                return
            syncing, self.syncing = self.syncing, None
            syncing.result()  # a failed sync (disk full) surfaces here
        now, got = time.monotonic(), self.f.bytes_transferred
        p = self.policy
        if got - self.cp_bytes < p.checkpoint_bytes and now - self.cp_at < p.checkpoint_interval:
            return
        self.cp_at, self.cp_bytes = now, got
        self.syncing = asyncio.create_task(self._checkpoint(self._table()))

    async def _checkpoint(self, table: list[tuple[int, int, int]]) -> None:
        try:
            await asyncio.to_thread(os.fdatasync, self.fd)
        except OSError as exc:
            raise local_failure(exc, self.f.temp_name) from exc
        if self.split:
            self.f.segments = table
            self.ctx.on_checkpoint(dataclasses.replace(self.f, segments=table), done_bytes(table))
        else:
            self.ctx.on_checkpoint(self.f, table[0][1])

    def _hash_more(self) -> None:
        """Read back and hash what other connections wrote, once the prefix reaches it."""
        whole = self.check.whole
        if whole is None or self.hashing is not None:
            return
        start, target = whole.hashed, contiguous_end(self._table())
        if target > start:
            self.check.sound = False
            self.hashing = asyncio.create_task(self._hash_range(whole, start, target))

    async def _hash_range(self, whole: _Partial, start: int, target: int) -> None:
        try:
            read = await asyncio.get_running_loop().run_in_executor(
                self.engine._pool(), _hash_prefix, self.fd, whole.hasher, start, target
            )
        finally:
            self.hashing = None
        whole.hashed = target
        self.engine.bytes_rehashed += read
        self.check.sound = True

    async def _finish(self) -> None:
        """Every byte is written: hash the rest, sync, and the file needs no table."""
        try:
            whole = self.check.whole
            for _ in range(3):  # bounded: the second pass hashes to the end
                if self.hashing is not None:
                    await self.hashing
                if whole is None or whole.hashed >= self.total:
                    break
                self._hash_more()
            if whole is not None and whole.hashed < self.total:
                raise OSError(5, "could not read back the temporary file to hash it")
            if self.syncing is not None:
                await self.syncing
                self.syncing = None
            await asyncio.to_thread(os.fsync, self.fd)
        except OSError as exc:
            raise local_failure(exc, self.f.temp_name) from exc
        self.f.bytes_transferred = self.total
        self.f.segments = None

    async def _stop(self) -> None:
        """Stopped (a failure, a slice end, cancel): the connections end, and the table kept is
        what the disk holds."""
        for task in self.conns:
            task.cancel()
        if self.conns:
            await asyncio.gather(*self.conns, return_exceptions=True)
        self.conns.clear()
        waits: list[asyncio.Future[Any]] = [x for x in (self.hashing, self.syncing) if x]
        if waits:
            await asyncio.wait(waits)  # the descriptor stays open while a thread uses it
        if self.syncing is not None and not self.syncing.cancelled():
            self.syncing.exception()  # retrieved, so asyncio does not warn about it
        if not self.split:
            self.f.bytes_transferred = self.segs[0].done
            return
        table = self._table()
        try:
            await asyncio.to_thread(os.fdatasync, self.fd)
        except OSError:
            table = self.f.segments or table  # the last table a sync covered
        self.f.segments = table
        self.f.bytes_transferred = done_bytes(table)


def _connection_ended() -> TransferFailure:
    return TransferFailure(
        _codes.ERROR_WINHTTP_CONNECTION_ERROR,
        ErrorContext.REMOTE_FILE,
        transient=True,
        message="the connections ended before the file was complete",
    )
