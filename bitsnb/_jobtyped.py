"""AsyncJob's calls that only some jobs have: downloads (dynamic content, high performance),
uploads (fragment size, the reply) and the BITS calls that exist only on Windows.

A base class of ``AsyncJob`` (``_job.py``), which supplies the record and ``_update``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from . import _codes
from ._enums import JobState, JobType
from ._errors import BitsError, InvalidStateError
from ._records import JobRecord
from ._validate import check_local_name

__all__ = ["TypedJobCalls"]


class TypedJobCalls:
    """The calls of one job type (or of Windows only); ``AsyncJob`` gives them its record."""

    _rec: JobRecord

    def _update(self, apply: Callable[[JobRecord], object]) -> Awaitable[object]:
        """Apply *apply* to the record through the job's host (``AsyncJob`` does)."""
        raise NotImplementedError

    # -- download jobs -------------------------------------------------------------------------
    async def set_dynamic_content(self, enable: bool) -> None:
        """BITS_JOB_PROPERTY_DYNAMIC_CONTENT: downloads only, before the first resume()."""
        self._download_only("dynamic content")
        if self._rec.resumed_once:
            raise BitsError(
                _codes.BG_E_READ_ONLY_PROPERTY_AFTER_RESUME, "set dynamic_content before resume()"
            )
        await self._update(lambda r: setattr(r.settings, "dynamic_content", bool(enable)))

    async def set_high_performance(self, enable: bool) -> None:
        """BITS_JOB_PROPERTY_HIGH_PERFORMANCE: downloads only, before any file is added."""
        self._download_only("high performance")
        if self._rec.files:
            raise BitsError(
                _codes.BG_E_READ_ONLY_PROPERTY_AFTER_ADDFILE,
                "set high_performance before add_file()",
            )
        await self._update(lambda r: setattr(r.settings, "high_performance", bool(enable)))

    def _download_only(self, what: str) -> None:
        if self._rec.type is not JobType.DOWNLOAD:
            raise BitsError(
                _codes.BG_E_PROPERTY_SUPPORTED_FOR_DOWNLOAD_JOBS_ONLY, f"{what} is for downloads"
            )

    # -- upload jobs ---------------------------------------------------------------------------
    @property
    def upload_fragment_size(self) -> int:
        """Bytes per upload Fragment packet (default 8 MiB; a server's 413 halves it)."""
        return self._rec.settings.upload_fragment_size

    async def set_upload_fragment_size(self, size: int) -> None:
        """Set the Fragment size of an upload job (5 KiB to 1 GiB, as Windows clients bound it)."""
        if self._rec.type is JobType.DOWNLOAD:
            raise BitsError(_codes.E_NOTIMPL, "fragments belong to upload jobs")
        if isinstance(size, bool) or not isinstance(size, int) or not 5120 <= size <= 1 << 30:
            raise BitsError(_codes.E_INVALIDARG, f"fragment size {size!r} is not 5 KiB..1 GiB")
        await self._update(lambda r: setattr(r.settings, "upload_fragment_size", size))

    @property
    def reply_file_name(self) -> str | None:
        """Where an upload-reply job puts the server's reply (after complete())."""
        return self._rec.settings.reply_file_name

    @property
    def reply_progress(self) -> tuple[int | None, int]:
        """GetReplyProgress: (bytes total or None before the reply starts, bytes transferred)."""
        if self._rec.type is not JobType.UPLOAD_REPLY:
            raise BitsError(_codes.E_NOTIMPL, "only upload-reply jobs have a reply")
        s = self._rec.settings
        return s.reply_bytes_total, s.reply_bytes_transferred

    def get_reply_data(self) -> bytes:
        """GetReplyData: the reply in memory (TRANSFERRED or later; BG_E_TOO_LARGE over 1 MB)."""
        if self._rec.type is not JobType.UPLOAD_REPLY:
            raise BitsError(_codes.E_NOTIMPL, "only upload-reply jobs have a reply")
        s = self._rec.settings
        if self._rec.state not in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED) or not s.reply_done:
            raise InvalidStateError(
                f"the reply is not there yet (the job is {self._rec.state.name})"
            )
        path = s.reply_file_name if self._rec.state is JobState.ACKNOWLEDGED else s.reply_temp_name
        if path is None:
            return b""
        size = os.path.getsize(path)
        if size > 1_000_000:
            raise BitsError(_codes.BG_E_TOO_LARGE, f"the reply is {size} bytes; read {path}")
        with open(path, "rb") as fh:
            return fh.read()

    async def set_reply_file_name(self, path: str | os.PathLike[str]) -> None:
        """SetReplyFileName: upload-reply jobs, before the reply download starts."""
        if self._rec.type is not JobType.UPLOAD_REPLY:
            raise BitsError(_codes.E_NOTIMPL, "only upload-reply jobs have a reply file")
        name = check_local_name(path)
        s = self._rec.settings
        if s.reply_temp_name is not None or s.reply_done:
            raise InvalidStateError("the reply download has started; its name is fixed")
        await self._update(lambda r: setattr(r.settings, "reply_file_name", name))

    # -- BITS calls that have no meaning off Windows -------------------------------------------
    def _windows_only(self, call: str) -> BitsError:
        return BitsError(_codes.E_NOTIMPL, f"{call} is Windows-only and has no bitsnb equivalent")

    async def set_peer_caching_flags(self, flags: int) -> None:
        """SetPeerCachingFlags: peer caching/BranchCache are Windows-only (E_NOTIMPL)."""
        raise self._windows_only("set_peer_caching_flags")

    async def set_file_acl_flags(self, flags: int) -> None:
        """SetFileACLFlags: SMB ACL copying is Windows-only (E_NOTIMPL)."""
        raise self._windows_only("set_file_acl_flags")

    async def set_client_certificate(self, *args: object) -> None:
        """SetClientCertificateByID/ByName: Windows certificate stores (E_NOTIMPL)."""
        raise self._windows_only("set_client_certificate")

    async def set_helper_token(self, *args: object) -> None:
        """IBitsTokenOptions: helper tokens are Windows-only (E_NOTIMPL)."""
        raise self._windows_only("set_helper_token")

    async def get_owner_integrity_level(self) -> int:
        """GetOwnerIntegrityLevel: Windows integrity levels (E_NOTIMPL)."""
        raise self._windows_only("get_owner_integrity_level")
