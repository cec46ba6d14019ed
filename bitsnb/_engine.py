"""The download engine: one file, resumable, through httpx — the package's one IO seam to the network.

``Engine.download`` streams a remote file into its temporary file, continuing from what is
already on disk with a Range request (validated with If-Range), and raises ``TransferFailure``
with the BITS code, context and transient/fatal verdict when something goes wrong. Plain GETs
go through ``LeanTransport`` under httpx, whose bodies are written from the connection's buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Callable
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
from ._models import Policy
from ._records import FileRecord
from ._transport import LeanTransport, body_views, fallback_transport
from ._validate import redact_url

__all__ = ["Engine", "FileContext", "TransferFailure", "YieldSlice", "is_transient_status"]

USER_AGENT = "bitsnb/0.1 (Microsoft BITS compatible)"

YIELD_MID_FILE_BYTES = 16 * 1024 * 1024


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
        headers = dict(ctx.headers)
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if _strong(f.etag):
                headers["If-Range"] = f.etag  # type: ignore[assignment]
            elif f.last_modified:
                headers["If-Range"] = f.last_modified
        return headers

    async def _fetch(self, f: FileRecord, ctx: FileContext) -> None:
        offset = _temp_size(f)
        if f.transferred and f.bytes_total is not None and offset == f.bytes_total:
            return
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
            await self._write_body(f, ctx, resp, offset)
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
            headers = dict(ctx.headers)
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
                await self._write_body(f, ctx, resp, offset)
            offset = _temp_size(f)
            if offset < done_before + length:
                raise TransferFailure(
                    _codes.ERROR_WINHTTP_CONNECTION_ERROR,
                    ErrorContext.REMOTE_FILE,
                    transient=True,
                    message="the connection ended before the range was complete",
                )
            done_before += length

    async def _write_body(
        self, f: FileRecord, ctx: FileContext, resp: httpx.Response, offset: int
    ) -> None:
        """Stream the body into the temporary file from *offset*, checkpointing as it goes.

        A checkpoint's fdatasync runs in a thread while the body keeps arriving (one at a
        time); the store records the byte count the sync covered once it is done, so the
        store never claims more than is on disk. The final fsync waits for everything.
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
            try:
                # a lean response's body comes as views of its connection's buffer (no copy)
                chunks = body_views(resp) or resp.aiter_raw()
                throttle = ctx.throttle
                async for chunk in chunks:
                    fh.write(chunk)
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
    f.etag = None
    f.last_modified = None
    if f.ranges is None:
        f.bytes_total = None
    try:
        truncate_private(f.temp_name)
    except OSError as exc:
        raise local_failure(exc, f.temp_name) from exc
