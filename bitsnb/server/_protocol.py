"""The BITS upload protocol [MC-BUP] as pure functions: constants, header parsing, URL-path safety.

No IO here: the ASGI app (``_app.py``) and the session store (``_sessions.py``) build on these.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from dataclasses import dataclass

from bitsnb._codes import (
    BG_E_HTTP_ERROR_500,
    BG_E_HTTP_ERROR_503,
    BG_E_SESSION_NOT_FOUND,
    BG_E_TOO_LARGE,
    E_ACCESSDENIED,
    E_INVALIDARG,
    ERROR_DISK_FULL,
)
from bitsnb._http_rules import UPLOAD_PROTOCOL, parse_content_range

__all__ = [
    "BG_E_HTTP_ERROR_500",
    "BG_E_HTTP_ERROR_503",
    "BG_E_SESSION_NOT_FOUND",
    "BG_E_TOO_LARGE",
    "CONTEXT_REMOTE_APPLICATION",
    "CONTEXT_REMOTE_FILE",
    "ERROR_DISK_FULL",
    "E_ACCESSDENIED",
    "E_INVALIDARG",
    "STATE_DIR",
    "UPLOAD_PROTOCOL",
    "FragmentRange",
    "Refused",
    "format_context",
    "format_hresult",
    "format_session_id",
    "fragment_range",
    "parse_session_id",
    "pick_protocol",
    "upload_segments",
]

STATE_DIR = ".bits-sessions"  # hidden folder under root with one sub-folder per session

CONTEXT_REMOTE_FILE = 0x5
CONTEXT_REMOTE_APPLICATION = 0x7

_MAX_SEGMENT = 255  # bytes per path segment once decoded (a common file-name limit)


class Refused(Exception):
    """A request the server answers with an error Ack: HTTP status, HRESULT and a short reason."""

    def __init__(
        self,
        status: int,
        code: int,
        reason: str,
        context: int = CONTEXT_REMOTE_FILE,
        *,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.context = context
        self.headers = headers  # extra answer headers, e.g. Retry-After on a 503


def format_hresult(code: int) -> str:
    """``0x8020001F``: the form both error headers carry."""
    return f"0x{code & 0xFFFFFFFF:08X}"


def format_context(context: int) -> str:
    """``0x5``: the form ``BITS-Error-Context`` carries."""
    return f"0x{context:X}"


def format_session_id(session_id: uuid.UUID) -> str:
    """``{GUID}`` in upper case, as Windows servers send it."""
    return "{" + str(session_id).upper() + "}"


def parse_session_id(text: str | None) -> uuid.UUID | None:
    """A session id with or without braces, any case; None when it is not a GUID."""
    if text is None:
        return None
    value = text.strip()
    if value.startswith("{") and value.endswith("}"):
        value = value[1:-1]
    if len(value) != 36:  # only the canonical 8-4-4-4-12 form
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def pick_protocol(header: str | None) -> str | None:
    """The protocol GUID to use from ``BITS-Supported-Protocols`` (space/comma separated)."""
    if not header:
        return None
    wanted = UPLOAD_PROTOCOL.strip("{}").lower()
    for token in re.split(r"[\s,]+", header.strip()):
        if token.strip("{}").lower() == wanted:
            return UPLOAD_PROTOCOL
    return None


@dataclass(frozen=True, slots=True)
class FragmentRange:
    """A fragment's ``bytes first-last/total`` (inclusive); an empty file is ``0, -1, 0``."""

    first: int
    last: int
    total: int

    @property
    def length(self) -> int:
        """Number of body bytes the fragment carries."""
        return self.last - self.first + 1


def fragment_range(header: str | None) -> FragmentRange | None:
    """A fragment's Content-Range, parsed by ``bitsnb._http_rules``; None when missing or
    invalid. A fragment must name the file's total (``/*`` is refused); ``bytes */0`` and
    ``bytes 0--1/0`` are the empty file, any other ``*/n`` is refused."""
    crange = parse_content_range(header)
    if crange is None or crange.total is None:
        return None
    if crange.first is None or crange.last is None:
        return FragmentRange(0, -1, 0) if crange.total == 0 else None
    return FragmentRange(crange.first, crange.last, crange.total)


def upload_segments(raw_path: bytes) -> tuple[str, ...]:
    """The destination under root named by a request's raw (still percent-encoded) URL path.

    Refuses (``Refused``) anything that could leave root or hit the state folder: ``.``/``..``
    segments (plain or percent-encoded), encoded separators (``%2F``, ``%5C``), backslashes, NUL,
    empty segments (``//``), a trailing ``/`` (a folder), and the hidden ``.bits-sessions`` folder.
    Symbolic links are checked later against the real file system (``_sessions.resolve_destination``).
    """
    if b"\x00" in raw_path:
        raise Refused(400, E_INVALIDARG, "NUL in the URL path")
    if not raw_path.startswith(b"/"):
        raise Refused(400, E_INVALIDARG, "the URL path must start with /")
    parts = raw_path[1:].split(b"/")
    if parts == [b""]:
        raise Refused(400, E_INVALIDARG, "the URL names the root folder, not a file")
    segments: list[str] = []
    for i, part in enumerate(parts):
        if part == b"":
            if i == len(parts) - 1:
                raise Refused(400, E_INVALIDARG, "the URL names a folder, not a file")
            raise Refused(400, E_INVALIDARG, "empty path segment")
        try:
            name = urllib.parse.unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, E_INVALIDARG, "the URL path is not UTF-8") from None
        if "\x00" in name:
            raise Refused(400, E_INVALIDARG, "NUL in the URL path")
        if name in (".", "..") or "/" in name or "\\" in name:
            raise Refused(403, E_ACCESSDENIED, "path traversal refused")
        if any(ord(c) < 0x20 for c in name):
            raise Refused(400, E_INVALIDARG, "control character in the URL path")
        if len(name.encode("utf-8")) > _MAX_SEGMENT:
            raise Refused(400, E_INVALIDARG, "path segment too long")
        segments.append(name)
    if segments[0] == STATE_DIR:
        raise Refused(403, E_ACCESSDENIED, "the server's state folder is not writable")
    return tuple(segments)
