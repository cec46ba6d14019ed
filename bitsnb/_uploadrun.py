"""Running an upload job: its session's packets on one connection, the reply of an upload-reply
job (fetched before Close-Session), and Cancel-Session.

The upload protocol itself ([MC-BUP]) is ``_upload.Uploader``'s; this part records what the
session did in the store and tells listeners, as the runner does for downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from urllib.parse import SplitResult, urljoin, urlsplit

from . import _codes
from ._completion import default_reply_name, temp_name
from ._engine import Engine, FileContext, TransferFailure
from ._enums import ErrorContext, JobType
from ._events import Events
from ._files import create_private
from ._models import Policy
from ._persist import Records
from ._records import SECRET_HEADERS, FileRecord, JobRecord
from ._upload import UploadContext, Uploader
from ._validate import redact_url

__all__ = ["UploadRun"]


class UploadRun:
    """Upload sessions of the jobs the runner runs."""

    def __init__(
        self,
        policy: Policy,
        records: Records,
        events: Events,
        engine: Engine,
        file_context: Callable[[JobRecord], FileContext],
    ) -> None:
        self._policy = policy
        self._records = records
        self._events = events
        self._engine = engine
        self._uploader = Uploader(engine)
        self._file_context = file_context

    def upload_context(self, rec: JobRecord, ctx: FileContext | None = None) -> UploadContext:
        """The upload engine's view of the job's one file (its saves go to the store)."""
        f = rec.files[0]
        return UploadContext(
            ctx or self._file_context(rec),
            rec.settings,
            save=lambda: self._records.save(rec, [f]),
        )

    async def cancel(self, rec: JobRecord) -> None:
        """Cancel-Session on the server, bounded: an unreachable server just expires it."""
        with contextlib.suppress(TimeoutError, TransferFailure):
            uctx = self.upload_context(rec)
            async with asyncio.timeout(self._policy.connect_timeout):
                await self._uploader.cancel(rec.files[0], uctx)
        rec.settings.upload_session_id = None

    async def transfer(self, rec: JobRecord, ctx: FileContext) -> None:
        """Upload the job's one file, fetch the reply (upload-reply), close the session."""
        f = rec.files[0]
        uctx = self.upload_context(rec, ctx)
        try:
            async with self._uploader.session(uctx):
                await self._upload_session(rec, f, uctx, ctx)
        except TransferFailure as failure:
            failure.file = f
            self._records.try_save(rec, [f])
            raise

    async def _upload_session(
        self, rec: JobRecord, f: FileRecord, uctx: UploadContext, ctx: FileContext
    ) -> None:
        """The session's packets, on the session's own connection."""
        s = rec.settings
        if not f.transferred:
            await self._uploader.upload(f, uctx)

            def mark() -> None:
                f.transferred = True
                rec.touch()

            await self._records.change_patiently(rec, mark, [f])
            self._events.emit(rec, "progress")
        if rec.type is JobType.UPLOAD_REPLY and not s.reply_done:
            await self._fetch_reply(rec, ctx)  # before Close-Session, or the reply is gone
        if s.upload_session_id is not None:
            await self._uploader.close(f, uctx)

            def closed() -> None:
                s.upload_session_id = None

            await self._records.change_patiently(rec, closed)

    def _reply_context(self, rec: JobRecord, reply_url: str, ctx: FileContext) -> FileContext:
        """The reply's request options: a reply URL on another host gets no credentials or
        secret headers, and one that leaves https for http is refused (the redirect rules)."""
        upload, reply = urlsplit(rec.files[0].remote_name), urlsplit(reply_url)
        if upload.scheme == "https" and reply.scheme != "https":
            if not self._policy.allow_https_to_http:
                raise TransferFailure(
                    _codes.BG_E_INVALID_SERVER_RESPONSE,
                    ErrorContext.REMOTE_FILE,
                    transient=False,
                    message=f"the server sent a reply URL that leaves https: {redact_url(reply_url)}",
                )
        if _origin(upload) == _origin(reply):
            return ctx
        public = {k: v for k, v in ctx.headers.items() if k.lower() not in SECRET_HEADERS}
        return dataclasses.replace(ctx, headers=public, auth=None)

    async def _fetch_reply(self, rec: JobRecord, ctx: FileContext) -> None:
        """Download the server's reply (BITS-Reply-URL) to the reply file's temporary name."""
        s = rec.settings
        reply_name = s.reply_file_name or default_reply_name(rec)
        s.reply_file_name = reply_name
        if s.reply_temp_name is None:
            s.reply_temp_name = temp_name(reply_name)
        if not s.reply_url:
            create_private(s.reply_temp_name).close()  # the server sent no reply: an empty file
            total = 0
        else:
            reply = FileRecord(
                index=0,
                remote_name=urljoin(rec.files[0].remote_name, s.reply_url),
                local_name=reply_name,
                temp_name=s.reply_temp_name,
                bytes_total=s.reply_bytes_total,
                bytes_transferred=s.reply_bytes_transferred,
            )

            def on_progress(f: FileRecord) -> None:
                s.reply_bytes_total = f.bytes_total
                s.reply_bytes_transferred = f.bytes_transferred
                ctx.on_progress(rec.files[0])

            reply_ctx = dataclasses.replace(
                self._reply_context(rec, reply.remote_name, ctx),
                dynamic_content=True,
                on_progress=on_progress,
                on_validators=lambda f: None,
            )
            await self._engine.download(reply, reply_ctx)
            total = reply.bytes_transferred

        def done() -> None:
            s.reply_bytes_total = total
            s.reply_bytes_transferred = total
            s.reply_done = True
            rec.touch()

        await self._records.change_patiently(rec, done)
        self._events.notify_file(rec, rec.files[0])


def _origin(parts: SplitResult) -> tuple[str, str | None, int]:
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, parts.port or default
