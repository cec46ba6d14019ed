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

Segments: a large file may be fetched over several connections at once (``Split``, in
``_segmented``; the rules in ``_segments``), each writing at its offsets of the one temporary
file, its table kept in the store so that a crash resumes every segment.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from typing import IO
from urllib.parse import urlsplit

import httpx

from . import _codes
from ._enums import ErrorContext
from ._failures import TransferFailure, local_failure, network_failure
from ._fetchctx import (
    FileContext,
    Restart,
    YieldSlice,
    invalid_response,
    response_retry_after,
    strong_etag,
    worth_yielding,
)
from ._filecheck import (
    Check,
    Partial,
    check_content,
    feeder,
    validation_failure,
    verify,
)
from ._files import open_private
from ._fsyncs import GroupSync, outlast
from ._http_clients import build_client, stream_get
from ._http_rules import (
    BadLength,
    is_transient_status,
    parse_content_length,
    parse_content_range,
)
from ._integrity import (
    Hasher,
    content_digest,
    digest_fields,
    digest_request_headers,
    known_digest,
    new_hasher,
    representation_digest,
    streaming_hasher,
)
from ._models import Policy
from ._ranged import fetch_ranges
from ._records import FileRecord
from ._segmented import Split
from ._segments import check_table, done_bytes
from ._slots import HostSlots
from ._tcpinfo import response_socket, tcp_info
from ._tempfile import create_temp, discard_file, hash_prefix, temp_size, truncate_temp
from ._transport import body_buffered, body_views, keep_view
from ._validate import redact_url
from ._validators import if_range_value, strong_date

__all__ = [
    "Engine",
    "FileContext",
    "TransferFailure",
    "YieldSlice",
    "discard_file",
    "is_transient_status",
    "validation_failure",
]

_MAX_PARTIALS = 256  # partial hashes kept for files that paused mid-way


class Engine:
    """Downloads files over one pool of httpx clients (one per proxy setting)."""

    def __init__(self, policy: Policy, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._policy = policy
        self._transport = transport
        self._clients: dict[tuple[str | None, bool], httpx.AsyncClient] = {}
        self._host_slots: dict[str, HostSlots] = {}
        self._shared_slots: Callable[[], None] | None = None  # set by ``share_hosts``
        self._host_rtts: dict[str, float] = {}  # by origin: the last connection's round trip
        self._rtt_due: dict[str, float] = {}  # by origin: when to measure it again
        self._partials: dict[str, Partial] = {}  # by temp name: files that paused mid-way
        self._hash_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.syncs = GroupSync()  # files that finish together: one thread hop for their fsyncs
        self.bytes_rehashed = 0  # bytes read back from temporary files to hash their prefix

    @property
    def policy(self) -> Policy:
        """The policy the engine was made with."""
        return self._policy

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
        """An httpx client with the policy's timeouts, TLS, redirect rules and headers
        (``build_client``)."""
        return build_client(self._policy, self._transport, proxy, trust_env, limits, lean=lean)

    def slot(self, url: str) -> HostSlots:
        """The connection slots of *url*'s host (``max_connections_per_host``, or this
        manager's share of the cluster's when ``share_hosts`` was called)."""
        host = _origin(url)
        sem = self._host_slots.get(host)
        if sem is None:
            shared = self._shared_slots
            limit = 0 if shared is not None else self._policy.max_connections_per_host
            sem = HostSlots(limit, on_starved=shared, on_drained=shared)
            self._host_slots[host] = sem
        return sem

    def share_hosts(self, refresh: Callable[[], None]) -> None:
        """Hosts' slots are shares of the cluster's (``_cluster_limits``): a host seen from now
        on starts with none, and *refresh* is called when a connection waits on none or when
        the slots held above a lowered share are down to it."""
        self._shared_slots = refresh

    def host_slots(self) -> dict[str, HostSlots]:
        """Each host's slots, by origin (what a cluster share is asked for and applied to)."""
        return dict(self._host_slots)

    def host_rtt(self, url: str) -> float | None:
        """The round trip (seconds) of the last connection a response from *url*'s host came
        on, from the kernel's ``TCP_INFO``; None until one did (or where it cannot be read)."""
        return self._host_rtts.get(_origin(url))

    def _note_rtt(self, url: str, resp: httpx.Response) -> None:
        origin = _origin(url)
        now = time.monotonic()
        if now < self._rtt_due.get(origin, 0.0):
            return  # measured less than a second ago
        sock = response_socket(resp)
        info = tcp_info(sock) if sock is not None else None
        rtt = info.min_rtt or info.best_rtt if info is not None else None
        if rtt is not None:
            self._host_rtts[origin] = rtt
            self._rtt_due[origin] = now + 1.0

    async def aclose(self) -> None:
        """Close every client (and their connections)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        pool, self._hash_pool = self._hash_pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        self.syncs.close()

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
                slot = contextlib.nullcontext() if ctx.foreground else self.slot(f.remote_name)
                async with slot:
                    if f.segments:
                        await self._fetch_segments(f, ctx)
                    elif f.ranges:
                        await self._fetch_ranges(f, ctx)
                    else:
                        await self._fetch(f, ctx)
                return
            except Restart:
                self._partials.pop(f.temp_name, None)
                truncate_temp(f)
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
        headers = self.digest_headers(f, ctx)
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if strong_etag(f.etag):
                headers["If-Range"] = f.etag  # type: ignore[assignment]
            elif f.last_modified:
                headers["If-Range"] = f.last_modified
        return headers

    def digest_headers(self, f: FileRecord, ctx: FileContext) -> dict[str, str]:
        """The job's headers, and those asking for digests when no known hash is given (the
        job's own headers win)."""
        if f.known_hash is not None:
            return dict(ctx.headers)
        headers = digest_request_headers(f.remote_name)
        mine = {k.lower() for k in ctx.headers}
        headers = {k: v for k, v in headers.items() if k.lower() not in mine}
        headers.update(ctx.headers)
        return headers

    def _check_for(self, f: FileRecord) -> Check:
        expected = known_digest(f.known_hash) if f.known_hash is not None else None
        return Check(expected, self._partials.pop(f.temp_name, None))

    def _keep_partial(self, f: FileRecord, check: Check) -> None:
        """Keep the hash of a file that stopped mid-way, for when it continues in this process."""
        if check.sound and check.whole is not None and check.whole.hashed > 0:
            while len(self._partials) >= _MAX_PARTIALS:  # bounded: one removed per pass
                del self._partials[next(iter(self._partials))]
            self._partials[f.temp_name] = check.whole

    async def _fetch(self, f: FileRecord, ctx: FileContext) -> None:
        offset = temp_size(f)
        if f.transferred and f.bytes_total is not None and offset == f.bytes_total:
            return
        check = self._check_for(f)
        try:
            await self._fetch_checked(f, ctx, offset, check)
        except BaseException:
            self._keep_partial(f, check)
            raise
        verify(f, check)

    async def _fetch_checked(
        self, f: FileRecord, ctx: FileContext, offset: int, check: Check
    ) -> None:
        if f.bytes_total is not None and offset > f.bytes_total:
            raise Restart
        if offset > 0 and f.etag is None and f.last_modified is None:
            # nothing to validate a resume against: start again
            raise Restart
        if ctx.dynamic_content and offset > 0:
            raise Restart  # dynamic content never resumes (spec §1.7)
        client = self.client(ctx.proxy, ctx.trust_env)
        if offset > 0 and f.bytes_total is not None and offset >= f.bytes_total:
            # every byte is on disk but the file was never marked done (stopped during its
            # final fsync): ask for the last byte, so a 206 confirms the file is unchanged
            offset -= 1
        headers = self._request_headers(f, ctx, offset)
        async with stream_get(client, f.remote_name, headers, ctx.auth) as resp:
            status = resp.status_code
            etag = resp.headers.get("etag")
            last_modified = resp.headers.get("last-modified")
            if status == 206 and offset > 0:
                content_range = resp.headers.get("content-range")
                span = parse_content_range(content_range)
                if span is None or span.first != offset:
                    raise invalid_response(f"bad Content-Range {content_range!r}", transient=True)
                if (
                    (span.total is not None and f.bytes_total not in (None, span.total))
                    or (etag and f.etag and etag != f.etag)
                    or (last_modified and f.last_modified and last_modified != f.last_modified)
                ):
                    raise Restart
            elif status == 200:
                try:
                    size = parse_content_length(resp.headers.get("content-length"))
                except BadLength as exc:
                    # refused before anything is stored (a length over 2^63-1 fits no file);
                    # retried, as BITS retries a response it found invalid
                    raise invalid_response(f"bad Content-Length: {exc}", transient=True) from None
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
                    truncate_temp(f)
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
                raise Restart
            else:
                raise TransferFailure(
                    _codes.http_error(status),
                    ErrorContext.REMOTE_FILE,
                    transient=is_transient_status(status),
                    message=f"HTTP {status} for {redact_url(str(resp.url))}",
                    retry_after=response_retry_after(resp),
                )
            ctx.on_connected()
            self._note_rtt(f.remote_name, resp)  # how many files in flight the host wants
            fields = digest_fields(resp.headers.raw)  # once a response, for every check below
            if check.expected is None:  # no known hash: the server's digest of the whole file
                check.expected = representation_digest(fields)
            if self._may_split(f, ctx, resp, offset, fields):
                assert f.bytes_total is not None
                run = Split(self, f, ctx, check, [(0, offset, f.bytes_total)], split=False)
                await run.run(resp)
            else:
                await self.write_body(f, ctx, resp, offset, check, fields)
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
        self,
        f: FileRecord,
        ctx: FileContext,
        resp: httpx.Response,
        offset: int,
        fields: Mapping[str, str],
    ) -> bool:
        """Whether this file may be fetched in segments: a known size, a strong validator for
        If-Range (a strong ETag, or no ETag and a Last-Modified the Date shows strong), no ranges of its own, no per-response digest to check, enough of it left."""
        p = self._policy
        return (
            p.max_connections_per_file > 1
            and not f.ranges
            and not ctx.dynamic_content
            and f.bytes_total is not None
            and (
                strong_etag(f.etag)
                or (not f.etag and strong_date(f.last_modified, resp.headers.get("date")))
            )
            and f.bytes_total - offset >= 2 * p.min_segment_bytes
            and content_digest(fields) is None
        )

    async def _fetch_segments(self, f: FileRecord, ctx: FileContext) -> None:
        """Resume a segmented file from its table: every segment left, with If-Range (its ETag,
        or its Last-Modified)."""
        total = f.bytes_total
        table = check_table(f.segments or (), total) if total is not None else None
        # a stored table means the validator was judged strong when the file was split
        if_range = if_range_value(f.etag, f.last_modified)
        if table is None or if_range is None or ctx.dynamic_content or f.ranges:
            raise Restart
        if all(d == e for _, d, e in table):
            # every byte is on disk but the file was never marked done: fetch its last byte
            # again, so that a 206 confirms the file is unchanged
            start, _, end = table[-1]
            table[-1] = (start, end - 1, end)
        f.bytes_transferred = done_bytes(table)
        check = self._check_for(f)
        try:
            await Split(self, f, ctx, check, table, split=True).run(None)
        except BaseException:
            self._keep_partial(f, check)
            raise
        verify(f, check)

    async def _fetch_ranges(self, f: FileRecord, ctx: FileContext) -> None:
        # a server's digest is of the whole remote file, not of these ranges: only a known
        # hash (of the ranges back to back) and each response's Content-Digest are checked
        check = self._check_for(f)
        try:
            await fetch_ranges(self, f, ctx, check)
        except BaseException:
            self._keep_partial(f, check)
            raise
        verify(f, check)

    async def begin_hashes(
        self, fh: IO[bytes], check: Check, headers: Mapping[str, str], offset: int
    ) -> None:
        """Ready the hashers for a body written from *offset*: the whole file's (its prefix
        on disk re-hashed, once, unless this process hashed it already) and the response's
        (*headers*: its digest fields, from ``digest_fields``)."""
        whole = _ready_hashers(check, headers, offset)
        if whole is not None and whole.hashed < offset:
            check.sound = False
            read = await asyncio.get_running_loop().run_in_executor(
                self.hash_pool(), hash_prefix, fh.fileno(), whole.hasher, whole.hashed, offset
            )
            self.bytes_rehashed += read
            whole.hashed = offset
            check.sound = True

    def hash_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._hash_pool is None:
            self._hash_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, self._policy.files_in_flight), thread_name_prefix="bitsnb-hash"
            )
        return self._hash_pool

    async def _write_whole(
        self,
        f: FileRecord,
        ctx: FileContext,
        resp: httpx.Response,
        check: Check | None,
        fields: Mapping[str, str],
    ) -> None:
        """A body that came whole with its head (a small file): nothing of it left on the wire
        to pace or checkpoint. Hashed on the loop, then created, written, fsynced and closed
        by one job of the sync thread, in one batch with the files that finished beside it."""
        f.bytes_transferred = 0
        data = bytearray()
        hashers: list[Hasher] = []
        if check is not None:
            _ready_hashers(check, fields, 0)
            hashers = check.hashers()
        views = body_views(resp)
        assert views is not None  # body_buffered: a lean response
        async for view in views:
            data += view
            for h in hashers:
                h.update(view)
        if check is not None and check.whole is not None:
            check.whole.hashed += len(data)
        f.bytes_transferred = len(data)
        if ctx.throttle is not None and ctx.throttle.limited:
            await ctx.throttle.take(len(data))  # the bytes count against the job's budgets
        ctx.on_progress(f)
        ctx.on_received()
        try:
            if check is not None:
                check.sound = True
                check_content(f, check)
            await self.syncs.write_whole(f.temp_name, bytes(data))
        except OSError as exc:
            raise local_failure(exc, f.temp_name) from exc

    async def write_body(
        self,
        f: FileRecord,
        ctx: FileContext,
        resp: httpx.Response,
        offset: int,
        check: Check | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        """Stream the body into the temporary file from *offset*, checkpointing as it goes.

        A checkpoint's fdatasync runs in a thread while the body keeps arriving (one at a
        time); the store records the byte count the sync covered once it is done, so the
        store never claims more than is on disk. The final fsync waits for everything.
        With *check*, each view is hashed once written, before the next one is taken; the
        response's Content-Digest is checked at its end. *fields*: the response's digest
        fields when the caller has read them already.
        """
        if fields is None:
            fields = digest_fields(resp.headers.raw)
        if offset == 0 and body_buffered(resp):
            await self._write_whole(f, ctx, resp, check, fields)
            return
        policy = self._policy
        try:
            if offset > 0:
                fh: IO[bytes] = open_private(f.temp_name)
                try:
                    fh.seek(offset)
                    fh.truncate()  # bytes past the offset were never recorded: drop them
                except OSError:
                    fh.close()
                    raise
            else:
                fh = await create_temp(f.temp_name)  # empty already: no seek, no truncate
        except OSError as exc:
            raise local_failure(exc, f.temp_name) from exc
        syncing: asyncio.Task[None] | None = None
        unwatch = ctx.watch(resp)  # the bandwidth loop samples its connection's round trip

        async def checkpoint(upto: int) -> None:
            await asyncio.to_thread(os.fdatasync, fh.fileno())
            ctx.on_checkpoint(f, upto)

        try:
            f.bytes_transferred = offset
            last_checkpoint_at = time.monotonic()
            last_checkpoint_bytes = offset
            hashers: list[Hasher] = []
            try:
                if check is not None:
                    await self.begin_hashes(fh, check, fields, offset)
                    hashers = check.hashers()
                # a lean response's body comes as views of its connection's buffer (no copy);
                # a hasher on its own thread is lent those views themselves (kept until hashed)
                lean = body_views(resp)
                chunks = lean or resp.aiter_raw()
                feed = feeder(hashers, None if lean is None else lambda: keep_view(resp))
                throttle = ctx.throttle
                async for chunk in chunks:
                    fh.write(chunk)
                    if hashers:
                        feed(memoryview(chunk))
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
                    if ctx.should_yield() and worth_yielding(f):
                        raise YieldSlice
                fh.flush()
                # the body is in: its connection is no longer paced, and the file's turn under
                # a cap ends before the syncs (a new connection's share counts those watched)
                unwatch()
                ctx.on_received()
                if check is not None:
                    check.sound = True
                    check_content(f, check)
                if syncing is not None:
                    await syncing
                    syncing = None
                await self.syncs.fsync(fh.fileno())
            except OSError as exc:
                raise local_failure(exc, f.temp_name) from exc
        finally:
            unwatch()
            try:
                if syncing is not None:
                    await outlast(syncing)  # the descriptor must stay open while it syncs
            finally:
                fh.close()


def _ready_hashers(check: Check, headers: Mapping[str, str], offset: int) -> Partial | None:
    """The response's hasher (its Content-Digest, unless a known hash rules) and the whole
    file's, which is returned (None without an expected hash); its prefix up to *offset* is
    the caller's to hash."""
    check.content = check.content_hasher = None
    if not (check.expected is not None and check.expected.source == "known hash"):
        check.content = content_digest(headers)  # the user's known hash wins
        if check.content is not None:
            check.content_hasher = new_hasher(check.content.algorithm)
    whole = check.whole
    if check.expected is None:
        check.whole = None
        return None
    alg = check.expected.algorithm
    if whole is None or whole.algorithm != alg or whole.hashed > offset:
        whole = check.whole = Partial(alg, streaming_hasher(alg), 0)
    return whole


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
