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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
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
    should_yield: Callable[[], bool] = lambda: False
    foreground: bool = False  # a FOREGROUND job: it does not wait for a per-host slot
    throttle: Throttle | None = None  # the bandwidth budgets the body's bytes are taken from


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
        for _ in range(5):  # a file that keeps changing under us gives up after a few restarts
            try:
                slot = contextlib.nullcontext() if ctx.foreground else self._slot(f.remote_name)
                async with slot:
                    if f.ranges:
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
