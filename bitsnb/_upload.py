"""The upload engine: the client side of the BITS upload protocol [MC-BUP] (spec §6).

One file per job: Create-Session, Fragments from the server's ``BITS-Received-Content-Range``,
then (upload-reply) the reply download, then Close-Session. The session id lives in the job's
settings so an upload resumes after a drop or a restart of either side. Liberal in what it
accepts: packet types and header names in any case, error codes in hex or decimal.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from . import _codes
from ._buckets import Throttle
from ._engine import Engine, FileContext
from ._enums import ErrorContext
from ._failures import TransferFailure, local_failure, network_failure
from ._http_rules import (
    UPLOAD_PROTOCOL,
    BadLength,
    format_content_range,
    is_transient_status,
    parse_length,
    retry_after,
)
from ._records import FileRecord, JobSettings

__all__ = ["UPLOAD_PROTOCOL", "Uploader", "parse_hresult"]

_MIN_FRAGMENT = 5 * 1024
_MAX_STUCK_ACKS = 4  # then TRANSIENT_ERROR: the job retries after its retry delay
_READ = 1024 * 1024


def parse_hresult(text: str | None) -> int | None:
    """An HRESULT from a header: ``0x8020001F``, ``8020001f`` (8 hex digits) or decimal."""
    if not text or not text.strip():
        return None
    value = text.strip().split()[0]
    try:
        if value.lower().startswith("0x"):
            return int(value, 16) & 0xFFFFFFFF
        if len(value) == 8 and all(c in "0123456789abcdefABCDEF" for c in value):
            return int(value, 16)
        return int(value) & 0xFFFFFFFF
    except ValueError:
        return None


def source_stamp(path: str) -> tuple[str, int]:
    """(identity, size) of the local file: a change of either means the file changed."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise local_failure(exc, path) from exc
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}", st.st_size


@dataclass
class UploadContext:
    """What the upload needs from the job and how it reports back."""

    file_ctx: FileContext
    settings: JobSettings
    save: Callable[[], object] = lambda: None
    client: httpx.AsyncClient | None = None  # the session's own connection, while it runs


class Uploader:
    """Runs upload sessions over the engine's httpx clients."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextlib.asynccontextmanager
    async def session(self, uctx: UploadContext) -> AsyncIterator[None]:
        """One connection for the whole session, as the Windows client keeps (some servers
        hold session state per connection)."""
        ctx = uctx.file_ctx
        single = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with self._engine.new_client(ctx.proxy, ctx.trust_env, single) as client:
            uctx.client = client
            try:
                yield
            finally:
                uctx.client = None

    async def _post(
        self,
        uctx: UploadContext,
        url: str,
        packet: str,
        session: str | None = None,
        headers: dict[str, str] | None = None,
        content: AsyncIterator[bytes] | bytes = b"",
        length: int = 0,
    ) -> httpx.Response:
        ctx = uctx.file_ctx
        hdrs = dict(ctx.headers)
        hdrs["BITS-Packet-Type"] = packet
        hdrs["Content-Length"] = str(length)
        if session:
            hdrs["BITS-Session-Id"] = session
        if headers:
            hdrs.update(headers)
        client = uctx.client or self._engine.client(ctx.proxy, ctx.trust_env)
        try:
            return await client.request(
                "BITS_POST", url, headers=hdrs, content=content, auth=ctx.auth
            )
        except httpx.HTTPError as exc:
            raise network_failure(exc) from exc

    @staticmethod
    def _failure(resp: httpx.Response, what: str) -> TransferFailure:
        code = _error_code(resp)
        ctx_value = parse_hresult(resp.headers.get("bits-error-context"))
        context = ErrorContext.REMOTE_FILE
        if ctx_value is not None and ctx_value in ErrorContext._value2member_map_:
            context = ErrorContext(ctx_value)
        status = resp.status_code
        if code is None or code == 0:
            code = _codes.http_error(status)
        transient = is_transient_status(status) and code != _codes.BG_E_TOO_LARGE
        if context is ErrorContext.REMOTE_APPLICATION:
            transient = not (
                300 <= status <= 307 or (400 <= status < 500 and status not in (408, 409))
            )
        return TransferFailure(
            code,
            context,
            transient=transient,
            message=f"{what}: HTTP {status}",
            retry_after=retry_after(resp.headers.get("retry-after"), time.time()),
        )

    async def upload(self, f: FileRecord, uctx: UploadContext) -> None:
        """Send *f*'s local file to its URL; returns when the server holds all of it."""
        s = uctx.settings
        stamp, size = source_stamp(f.local_name)
        if s.upload_source_stamp is None:
            s.upload_source_stamp = stamp
        elif s.upload_source_stamp != stamp:
            raise _changed(f)
        f.bytes_total = size
        restarts = 0
        while True:
            if s.upload_session_id is None:
                await self._create_session(f, uctx)
                f.bytes_transferred = 0
            else:
                resp = await self._post(uctx, f.remote_name, "Ping")
                if resp.status_code >= 400:
                    raise self._failure(resp, "Ping")
            try:
                await self._send_fragments(f, uctx, size)
                break
            except _SessionLost:
                restarts += 1
                s.upload_session_id = None
                s.reply_url = None
                uctx.save()
                if restarts > 3:
                    raise TransferFailure(
                        _codes.BG_E_SESSION_NOT_FOUND,
                        ErrorContext.REMOTE_FILE,
                        transient=True,
                        message="the server keeps losing the upload session",
                    ) from None

    async def _create_session(self, f: FileRecord, uctx: UploadContext) -> None:
        resp = await self._post(
            uctx,
            f.remote_name,
            "Create-Session",
            headers={"BITS-Supported-Protocols": UPLOAD_PROTOCOL},
        )
        if resp.status_code not in (200, 201):
            raise self._failure(resp, "Create-Session")
        session = resp.headers.get("bits-session-id")
        if not session:
            raise TransferFailure(
                _codes.BG_E_INVALID_SERVER_RESPONSE,
                ErrorContext.REMOTE_FILE,
                transient=True,
                message="the server created a session without a BITS-Session-Id",
            )
        uctx.settings.upload_session_id = session.strip()
        uctx.save()

    async def _send_fragments(self, f: FileRecord, uctx: UploadContext, size: int) -> None:
        s = uctx.settings
        ctx = uctx.file_ctx
        session = s.upload_session_id
        offset = min(f.bytes_transferred, size)
        fragment = max(_MIN_FRAGMENT, s.upload_fragment_size)
        name = os.path.basename(f.local_name)
        stuck = 0  # Acks in a row that moved nothing: a server that never takes the data
        while offset < size or size == 0:
            last = min(size, offset + fragment) - 1
            length = last - offset + 1 if size else 0
            headers = {
                "Content-Range": format_content_range(offset, last, size) if size else "bytes */0",
                "Content-Name": name,
            }
            resp = await self._post(
                uctx,
                f.remote_name,
                "Fragment",
                session,
                headers,
                _read_range(f, offset, length, s.upload_source_stamp, ctx.throttle),
                length,
            )
            too_large = _error_code(resp) == _codes.BG_E_TOO_LARGE
            if resp.status_code == 413 and fragment > _MIN_FRAGMENT and not too_large:
                # the fragment, not the file, is too big for the server: send smaller ones
                fragment = max(_MIN_FRAGMENT, fragment // 2)
                s.upload_fragment_size = fragment
                continue
            if resp.status_code in (200, 201, 416):
                got = _received(resp.headers.get("bits-received-content-range"))
                if got is None:
                    raise TransferFailure(
                        _codes.BG_E_INVALID_SERVER_RESPONSE,
                        ErrorContext.REMOTE_FILE,
                        transient=True,
                        message="a fragment Ack without BITS-Received-Content-Range",
                    )
                if min(got, size) <= offset and size:
                    stuck += 1
                    if stuck >= _MAX_STUCK_ACKS:
                        raise TransferFailure(
                            _codes.BG_E_INVALID_SERVER_RESPONSE,
                            ErrorContext.REMOTE_FILE,
                            transient=True,
                            message=f"the server acknowledged {stuck} fragments in a row "
                            f"without taking any data (stuck at byte {offset})",
                        )
                else:
                    stuck = 0
                offset = min(got, size)
                f.bytes_transferred = offset
                reply = resp.headers.get("bits-reply-url")
                if reply:
                    s.reply_url = reply.strip()
                ctx.on_progress(f)
                if offset >= size:
                    break
                continue
            failure = self._failure(resp, "Fragment")
            if failure.code == _codes.BG_E_SESSION_NOT_FOUND:
                raise _SessionLost
            raise failure
        uctx.save()

    async def close(self, f: FileRecord, uctx: UploadContext) -> None:
        """Close-Session: the server moves the upload into place."""
        session = uctx.settings.upload_session_id
        if session is None:
            return
        resp = await self._post(uctx, f.remote_name, "Close-Session", session)
        if resp.status_code >= 400:
            failure = self._failure(resp, "Close-Session")
            if failure.code != _codes.BG_E_SESSION_NOT_FOUND:
                raise failure

    async def cancel(self, f: FileRecord, uctx: UploadContext) -> None:
        """Cancel-Session (best effort: an unreachable server keeps its data until it expires)."""
        session = uctx.settings.upload_session_id
        if session is None:
            return
        try:
            await self._post(uctx, f.remote_name, "Cancel-Session", session)
        except TransferFailure:
            pass


def _error_code(resp: httpx.Response) -> int | None:
    """The HRESULT of an error Ack: ``BITS-Error-Code`` (SDK) or ``BITS-Error`` (MC-BUP)."""
    return parse_hresult(resp.headers.get("bits-error-code")) or parse_hresult(
        resp.headers.get("bits-error")
    )


class _SessionLost(Exception):
    """The server no longer knows the session: start a new one from byte 0."""


def _changed(f: FileRecord) -> TransferFailure:
    return TransferFailure(
        _codes.BG_E_LOCAL_FILE_CHANGED,
        ErrorContext.LOCAL_FILE,
        transient=False,
        message=f"{f.local_name} changed during the upload",
        protocol=None,
    )


def _received(text: str | None) -> int | None:
    """``BITS-Received-Content-Range``: the bytes the server holds (None when unusable)."""
    if text is None:
        return None
    value = text.strip()
    try:
        if "-" in value:  # some servers answer a range "0-1234": one past its last byte
            return parse_length(value.partition("-")[2]) + 1
        return parse_length(value)
    except BadLength:
        return None


async def _read_range(
    f: FileRecord, offset: int, length: int, stamp: str | None, throttle: Throttle | None = None
) -> AsyncIterator[bytes]:
    """Stream *length* bytes of the local file from *offset*, checking it did not change.

    Under a *throttle* (a cap, the yield rate) each piece is taken from the bandwidth budgets
    before it goes to the socket, in pieces no larger than the smallest burst, so what the
    kernel sends follows the rate instead of a megabyte at a time."""
    try:
        fh = open(f.local_name, "rb")
    except OSError as exc:
        raise local_failure(exc, f.local_name) from exc
    with fh:
        if stamp is not None and source_stamp(f.local_name)[0] != stamp:
            raise _changed(f)
        fh.seek(offset)
        left = length
        while left > 0:
            limited = throttle is not None and throttle.limited
            piece = (throttle.piece if throttle is not None and limited else None) or _READ
            chunk = fh.read(min(_READ, piece, left))
            if not chunk:
                raise _changed(f)
            left -= len(chunk)
            if throttle is not None and limited:
                await throttle.take(len(chunk))
            yield chunk
    if stamp is not None and source_stamp(f.local_name)[0] != stamp:
        raise _changed(f)
