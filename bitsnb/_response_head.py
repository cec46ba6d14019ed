"""One HTTP/1.x response head parsed by a vetted parser: llhttp first, h11 when llhttp refuses.

llhttp (through httptools: the parser of Node.js and uvicorn) reads a head in ~10 µs where h11
takes ~100 µs here (``bench/head_parse.py``); a download of many small files pays that once per
file. llhttp is the stricter of the two, so it decides alone only what both accept: whatever it
refuses, or accepts but h11 would not (a Transfer-Encoding other than ``chunked``, a status
below 100), goes to h11, whose verdict is the one the transport has always given — a repeated
identical Content-Length and obs-fold are accepted there (RFC 9110 §8.6, RFC 9112 §5.2), CR, LF
and NUL in a field refused. Where httptools is not installed, h11 parses every head.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

_httptools: ModuleType | None
try:
    import httptools as _httptools
except ImportError:  # pragma: no cover - httptools is a dependency; h11 alone still works
    _httptools = None

__all__ = ["MAX_HEAD", "HeadError", "ResponseHead", "parse_head", "parse_head_h11"]

MAX_HEAD = 64 * 1024  # a response head, trailer section or chunk line larger is refused
_OWS = b" \t"
# reason-phrase = *( HTAB / SP / VCHAR / obs-text ) (RFC 9112 §4): every byte but CTLs and DEL
_REASON_OK = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])


class HeadError(ValueError):
    """The head is malformed; the message says how."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed head: status, version (``b"1.1"``), reason, fields (names as sent)."""

    status: int
    version: bytes
    reason: bytes
    fields: list[tuple[bytes, bytes]]


class _Collect:
    """httptools' callbacks: the reason phrase and the fields, in order."""

    __slots__ = ("fields", "reason")

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value.strip(_OWS)))


def _llhttp(llhttp: ModuleType, head: bytes) -> ResponseHead | None:
    """The head as llhttp reads it, or None where h11 must decide (see the module's note)."""
    if not head.startswith(b"HTTP/"):
        return None  # llhttp skips empty lines before a status line; h11 does not
    out = _Collect()
    parser = llhttp.HttpResponseParser(out)
    try:
        parser.feed_data(head)
    except (llhttp.HttpParserError, llhttp.HttpParserUpgrade):  # an upgrade: h11's to judge
        return None
    status: int = parser.get_status_code()
    if status < 100 or out.reason.translate(None, _REASON_OK):
        return None  # llhttp lets control bytes into a reason phrase; h11 does not
    coded = False
    for i, (name, value) in enumerate(out.fields):
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            if coded or value.lower() != b"chunked":
                return None
            coded = True
            out.fields[i] = (name, b"chunked")  # as h11 gives it
    version = parser.get_http_version().encode("ascii")
    return ResponseHead(status, version, out.reason, out.fields)


def parse_head_h11(head: bytes) -> ResponseHead:
    """The head as h11 reads it (its rules are the transport's); ``HeadError`` if refused.
    h11 is imported here, when llhttp first refuses a head: 15 ms of ``import bitsnb``."""
    import h11

    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    # the request h11 is told was sent, so that it parses the response head that follows
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "bitsnb")]))
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HeadError(str(exc)) from None
    if not isinstance(event, h11.InformationalResponse | h11.Response):
        raise HeadError(f"unparsable head {head[:60]!r}")
    return ResponseHead(
        event.status_code, event.http_version, event.reason, list(event.headers.raw_items())
    )


def parse_head(head: bytes) -> ResponseHead:
    """One whole head (status line, field lines, blank line); ``HeadError`` if malformed."""
    if _httptools is not None:
        parsed = _llhttp(_httptools, head)
        if parsed is not None:
            return parsed
    return parse_head_h11(head)
