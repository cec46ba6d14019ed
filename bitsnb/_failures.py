"""How a failure becomes what BITS records: (code, context, transient), looked up by type.

The IO layer's one translation point, as httpx's ``HTTPCORE_EXC_MAP`` is for httpcore. The
download engine and the upload client raise ``network_failure(exc)`` for any httpx error and
``local_failure(exc, path)`` for an ``OSError`` on a local file. Nothing here reads an
exception's message: a network error's chain of causes (``__cause__``, else ``__context__``) is
searched by type, row by row of ``NETWORK_FAILURES`` (the first row that matches any link
wins, so a DNS or TLS cause beats the httpx class wrapped around it); a local error's errno goes
through ``_codes.hresult_from_errno``.

::

    TransferFailure          what the manager turns into TRANSIENT_ERROR or ERROR
      network_failure(exc)   httpx.HTTPError (and its causes) -> WinHTTP code
      local_failure(exc)     OSError on a local file -> Win32 code by errno, LOCAL_FILE
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import httpx

from . import _codes
from ._enums import ErrorContext
from ._records import FileRecord

__all__ = ["NETWORK_FAILURES", "TransferFailure", "local_failure", "network_failure"]


class TransferFailure(Exception):
    """A transfer failed; the manager turns this into TRANSIENT_ERROR or ERROR."""

    def __init__(
        self,
        code: int,
        context: ErrorContext,
        *,
        transient: bool,
        message: str = "",
        retry_after: float | None = None,
        protocol: str | None = "http",
    ) -> None:
        super().__init__(message or f"0x{code:08X}")
        self.code = code
        self.context = context
        self.transient = transient
        self.message = message
        self.retry_after = retry_after
        self.protocol = protocol
        self.file: FileRecord | None = None  # the file that failed, set by the manager


_TRANSPORT = ErrorContext.GENERAL_TRANSPORT
_REMOTE = ErrorContext.REMOTE_FILE

# (exception type, HRESULT, context, transient), most telling first: a row matches when any
# exception in the chain is an instance of its type. Causes from below httpx (the resolver,
# the TLS layer) come before httpx's own classes, which both transports raise.
NETWORK_FAILURES: tuple[tuple[type[BaseException], int, ErrorContext, bool], ...] = (
    # getaddrinfo failed: no such name (EAI_NONAME) or no answer (EAI_AGAIN); retried, as
    # BITS retries ERROR_WINHTTP_NAME_NOT_RESOLVED
    (socket.gaierror, _codes.ERROR_WINHTTP_NAME_NOT_RESOLVED, _TRANSPORT, True),
    # a TLS connection cut without close_notify is a broken connection, not a bad certificate
    (ssl.SSLEOFError, _codes.ERROR_WINHTTP_CONNECTION_ERROR, _REMOTE, True),
    (ssl.SSLZeroReturnError, _codes.ERROR_WINHTTP_CONNECTION_ERROR, _REMOTE, True),
    # certificate not trusted, name mismatch, no common protocol: retrying cannot help
    (ssl.SSLError, _codes.ERROR_WINHTTP_SECURE_FAILURE, _TRANSPORT, False),
    (httpx.TooManyRedirects, _codes.ERROR_WINHTTP_REDIRECT_FAILED, _REMOTE, False),
    # a redirect to a scheme httpx does not speak (ftp:, file:, ...)
    (httpx.UnsupportedProtocol, _codes.ERROR_WINHTTP_REDIRECT_FAILED, _REMOTE, False),
    # connect, read, write and pool timeouts; a response head over its time budget too
    (httpx.TimeoutException, _codes.ERROR_WINHTTP_TIMEOUT, _TRANSPORT, True),
    (httpx.ConnectError, _codes.ERROR_WINHTTP_CANNOT_CONNECT, _TRANSPORT, True),
    # a malformed response, or a connection closed before the response or body was complete
    (httpx.RemoteProtocolError, _codes.ERROR_WINHTTP_CONNECTION_ERROR, _REMOTE, True),
    (httpx.NetworkError, _codes.ERROR_WINHTTP_CONNECTION_ERROR, _REMOTE, True),
    (httpx.HTTPError, _codes.ERROR_WINHTTP_CONNECTION_ERROR, _REMOTE, True),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and its causes, outermost first (each once, so a cycle ends)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def network_failure(exc: httpx.HTTPError) -> TransferFailure:
    """The BITS failure for an httpx error, by the types in its chain (``NETWORK_FAILURES``)."""
    chain = list(_chain(exc))
    for kind, code, context, transient in NETWORK_FAILURES:
        for link in chain:
            if isinstance(link, kind):
                return TransferFailure(
                    code,
                    context,
                    transient=transient,
                    message=str(link) or type(link).__name__,
                )
    raise AssertionError("unreachable: the last row matches every httpx error") from exc


def local_failure(exc: OSError, path: str) -> TransferFailure:
    """The BITS failure for an ``OSError`` on a local file: the Win32 code of its errno
    (``_codes.hresult_from_errno``: E_FAIL for an errno without a counterpart), fatal."""
    return TransferFailure(
        _codes.hresult_from_errno(exc.errno),
        ErrorContext.LOCAL_FILE,
        transient=False,
        message=f"{exc.strerror or exc} ({path})",
        protocol=None,
    )
