"""A file of chosen byte ranges (AddFileWithRanges): each range fetched with its own Range
request and written back to back into the one temporary file; resumed from what is on disk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import httpx

from . import _codes
from ._enums import ErrorContext
from ._failures import TransferFailure
from ._fetchctx import FileContext, invalid_response, response_retry_after
from ._filecheck import Check
from ._http_rules import MAX_LENGTH, is_transient_status, parse_content_range
from ._records import FileRecord
from ._tempfile import temp_size

__all__ = ["RangesHost", "fetch_ranges"]


class RangesHost(Protocol):
    """What a ranged fetch needs of the engine."""

    def client(self, proxy: str | None, trust_env: bool) -> httpx.AsyncClient: ...

    def digest_headers(self, f: FileRecord, ctx: FileContext) -> dict[str, str]: ...

    async def write_body(
        self,
        f: FileRecord,
        ctx: FileContext,
        resp: httpx.Response,
        offset: int,
        check: Check | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None: ...


async def fetch_ranges(host: RangesHost, f: FileRecord, ctx: FileContext, check: Check) -> None:
    """Fetch each range not yet on disk in turn, its bytes written after the ranges before it;
    a 206 whose Content-Range is not the one asked for, or a 200, ends the file (BITS treats a
    range error after Resume as fatal)."""
    assert f.ranges is not None
    offset = temp_size(f)
    done_before = 0
    client = host.client(ctx.proxy, ctx.trust_env)
    for i, (start, length) in enumerate(f.ranges):
        if length is not None and offset >= done_before + length:
            done_before += length
            continue
        skip = offset - done_before
        first = start + skip
        last = "" if length is None else str(start + length - 1)
        headers = host.digest_headers(f, ctx)
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
                    retry_after=response_retry_after(resp),
                )
            span = parse_content_range(resp.headers.get("content-range"))
            if (
                span is None
                or span.first != first
                or span.last is None
                or (last and span.last != int(last))
            ):
                # BITS documents a range error after Resume as fatal
                raise invalid_response(
                    "the server's Content-Range does not match the requested range",
                    transient=False,
                )
            if length is None:
                # to EOF: the range's length is now known
                length = span.last - start + 1
                if length + sum(n or 0 for _, n in f.ranges) > MAX_LENGTH:
                    raise invalid_response(
                        "the ranges would add up to more than 2^63-1 bytes", transient=False
                    )
                f.ranges[i] = (start, length)
            f.bytes_total = sum(n or 0 for _, n in f.ranges)
            ctx.on_connected()
            await host.write_body(f, ctx, resp, offset, check)
        offset = temp_size(f)
        if offset < done_before + length:
            raise TransferFailure(
                _codes.ERROR_WINHTTP_CONNECTION_ERROR,
                ErrorContext.REMOTE_FILE,
                transient=True,
                message="the connection ended before the range was complete",
            )
        done_before += length
