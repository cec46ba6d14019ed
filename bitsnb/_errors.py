"""The error table, ``BitsError`` and ``get_error_description``.

Exception tree::

    BitsError                  every failure a BITS call reports; .code is the HRESULT
      JobNotFoundError         (also LookupError) BG_E_NOT_FOUND
      InvalidStateError        BG_E_INVALID_STATE
      StoreBusyError           E_ACCESSDENIED: another process holds the store's write lock
"""

from __future__ import annotations

import csv
import functools
import http
import importlib.resources
from dataclasses import dataclass

from . import _codes
from ._enums import ErrorContext, JobType

__all__ = [
    "BitsError",
    "ErrorDescription",
    "InvalidStateError",
    "JobNotFoundError",
    "StoreBusyError",
    "error_name",
    "get_error_description",
    "lookup_error",
]


_UPLOAD_TYPES = frozenset({JobType.UPLOAD, JobType.UPLOAD_REPLY})


@dataclass(frozen=True)
class ErrorDescription:
    """One row of the error table.

    ``description`` is the general reading (what a download job means by the code);
    ``upload_description`` is the reading for upload jobs where it differs (an HTTP 404 from an
    upload server means "no upload endpoint there", not "no such file"), else None.
    """

    name: str
    code: int
    description: str
    upload_description: str | None = None

    def for_job(self, job_type: JobType | int | None) -> str:
        """The sentence for a job of *job_type* (None: the general reading)."""
        if job_type is not None and self.upload_description and _is_upload(job_type):
            return self.upload_description
        return self.description


def _is_upload(job_type: JobType | int) -> bool:
    try:
        return JobType(int(job_type)) in _UPLOAD_TYPES
    except ValueError:
        return False


@functools.cache
def _table() -> dict[int, ErrorDescription]:
    """errors.csv: ``name,hresult,description,upload_description`` (the last may be empty)."""
    text = importlib.resources.files("bitsnb").joinpath("errors.csv").read_text("utf-8")
    rows = csv.DictReader(text.splitlines())
    table: dict[int, ErrorDescription] = {}
    for row in rows:
        code = int(row["hresult"], 16)
        upload = (row.get("upload_description") or "").strip() or None
        table.setdefault(code, ErrorDescription(row["name"], code, row["description"], upload))
    return table


def all_errors() -> list[ErrorDescription]:
    """Every known code, in table order."""
    return list(_table().values())


_CONTEXT_TEXT = {
    ErrorContext.NONE: "No error occurred.",
    ErrorContext.UNKNOWN: "The error happened in an unknown place.",
    ErrorContext.GENERAL_QUEUE_MANAGER: "The error was raised by the queue manager.",
    ErrorContext.QUEUE_MANAGER_NOTIFICATION: "The error happened while notifying the application.",
    ErrorContext.LOCAL_FILE: "The error happened while handling the local file.",
    ErrorContext.REMOTE_FILE: "The error happened while handling the remote file.",
    ErrorContext.GENERAL_TRANSPORT: "The error happened in the transport layer (connecting, TLS, proxy).",
    ErrorContext.REMOTE_APPLICATION: "The server application that received the upload failed.",
    ErrorContext.SERVER_CERTIFICATE_CALLBACK: "The server-certificate callback rejected the server.",
}


def context_description(context: ErrorContext | int) -> str:
    """A sentence for an error context."""
    try:
        return _CONTEXT_TEXT[ErrorContext(context)]
    except ValueError:
        return f"Unknown error context {int(context)}."


def _normalise(code: int) -> int:
    return code & 0xFFFFFFFF


def lookup_error(code: int) -> ErrorDescription:
    """The table row for *code*, or a generated one (HTTP codes, unknown codes); never raises."""
    code = _normalise(int(code))
    row = _table().get(code)
    if row is not None:
        return row
    if code & 0xFFFF0000 == _codes.HTTP_ERROR_BASE:
        status = code & 0xFFFF
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "non-standard status"
        return ErrorDescription(
            f"BG_E_HTTP_ERROR_{status}", code, f"The server answered HTTP {status} ({phrase})."
        )
    if code & 0xFFFF0000 == 0x80070000:
        return ErrorDescription(
            f"HRESULT_FROM_WIN32({code & 0xFFFF})",
            code,
            f"The system reported error {code & 0xFFFF}.",
        )
    kind = "failure" if code & 0x80000000 else "status"
    return ErrorDescription(
        f"0x{code:08X}",
        code,
        f"Unknown {kind} code 0x{code:08X}: bitsnb has no description for it.",
    )


def error_name(code: int) -> str:
    """The symbolic name for *code* (``BG_E_NOT_FOUND``), or its hex text."""
    return lookup_error(code).name


_ENGLISH = {"", "en", "en-us", "en_us", "en-gb", "english"}


def get_error_description(
    code: int, language: str | int | None = "en", *, job_type: JobType | int | None = None
) -> str:
    """Turn an HRESULT into a sentence, as ``IBackgroundCopyManager::GetErrorDescription``.

    Only English texts exist; another *language* raises ``BitsError(ERROR_RESOURCE_LANG_NOT_FOUND)``.
    *language* may be a tag (``"en"``, ``"en-US"``) or a Windows LANGID (0, 0x0409 and other English ones).
    *job_type*: the type of the job the error belongs to. Some codes read differently for uploads
    (HTTP 404 from an upload server means "no upload endpoint there"); without it, the general
    (download) reading is given, as BITS's own call does.
    """
    if isinstance(language, int):
        english = language == 0 or (language & 0x3FF) == 0x09
    else:
        english = (language or "").strip().lower() in _ENGLISH
    if not english:
        raise BitsError(
            _codes.ERROR_RESOURCE_LANG_NOT_FOUND,
            f"no error texts in language {language!r}; only English is available",
        )
    return lookup_error(code).for_job(job_type)


class BitsError(Exception):
    """A BITS call failed: ``.code`` is the unsigned HRESULT, ``.name`` its symbolic name."""

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        context: ErrorContext = ErrorContext.GENERAL_QUEUE_MANAGER,
    ) -> None:
        self.code = _normalise(int(code))
        self.context = context
        self.message = message
        super().__init__(self.code, message)

    @property
    def name(self) -> str:
        """The symbolic name, e.g. ``BG_E_NOT_FOUND``."""
        return error_name(self.code)

    @property
    def description(self) -> str:
        """The table's sentence for the code."""
        return lookup_error(self.code).description

    def __str__(self) -> str:
        head = f"{self.name} (0x{self.code:08X})"
        if self.message:
            return f"{head}: {self.message}"
        return f"{head}: {self.description}"

    def __repr__(self) -> str:
        return f"BitsError({self.name}, 0x{self.code:08X}, {self.message!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.code, self.message, int(self.context)))


def _rebuild(cls: type[BitsError], code: int, message: str | None, context: int) -> BitsError:
    err = cls.__new__(cls)
    BitsError.__init__(err, code, message, context=ErrorContext(context))
    return err


class JobNotFoundError(BitsError, LookupError):
    """No job with that id in the queue (``BG_E_NOT_FOUND``)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(_codes.BG_E_NOT_FOUND, message)


class InvalidStateError(BitsError):
    """The call is not allowed in the job's current state (``BG_E_INVALID_STATE``)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(_codes.BG_E_INVALID_STATE, message)


class StoreBusyError(BitsError):
    """Another process holds the store's write lock (``E_ACCESSDENIED``); nothing was written.

    The store gives up after a few milliseconds so that the event loop never waits on another
    process; the caller retries (off the loop, or after an ``await``) for as long as
    ``Policy.store_busy_timeout`` allows.
    """

    def __init__(self, message: str | None = None) -> None:
        super().__init__(_codes.E_ACCESSDENIED, message)
