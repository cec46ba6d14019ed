"""HTTP rules bitsnb follows, written once: ranges, lengths, Retry-After, retryable statuses.

No IO and no HTTP library here: the download engine, the upload client, the upload server and
the test servers all parse and format with these functions, so they agree on every edge
(RFC 9110 §14 for ranges, §10.2.3 for Retry-After, [MC-BUP] for the upload protocol).
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

__all__ = [
    "MAX_LENGTH",
    "UPLOAD_PROTOCOL",
    "BadLength",
    "ContentRange",
    "RangeNotSatisfiable",
    "format_content_range",
    "is_transient_status",
    "parse_content_length",
    "parse_content_range",
    "parse_length",
    "parse_range",
    "retry_after",
]

# The largest length or offset bitsnb accepts (a signed 64-bit integer, what SQLite, PostgreSQL
# and the OS store). A server that announces more is refused as an invalid response.
MAX_LENGTH = 2**63 - 1

# "BITS 1.5 Upload Protocol", the only upload-protocol GUID defined ([MC-BUP] §1.9).
UPLOAD_PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


class BadLength(ValueError):
    """A length or offset that is not plain ASCII digits, or is over ``MAX_LENGTH``."""


class RangeNotSatisfiable(ValueError):
    """A well-formed ``Range`` that lies outside the representation (answer 416)."""


def is_transient_status(status: int) -> bool:
    """The spec's default table: 408/409/425/429 and 5xx except 501/505 are retried."""
    if status in _TRANSIENT_STATUS:
        return True
    return 500 <= status <= 599 and status not in (501, 505)


def _number(text: str) -> int:
    text = text.strip(" \t")
    if not text or not text.isascii() or not text.isdigit():
        raise BadLength(f"{text[:30]!r} is not a number")
    if len(text) > 19 or int(text) > MAX_LENGTH:
        raise BadLength(f"{text[:30]} is over 2^63-1")
    return int(text)


def parse_length(value: str) -> int:
    """A byte count or offset: ASCII digits (blanks around them allowed), at most 2^63−1;
    anything else raises ``BadLength``."""
    return _number(value)


def parse_content_length(value: str | None) -> int | None:
    """A Content-Length value: None when absent; a repeated identical list ("5, 5") is one
    value (RFC 9110 §8.6); differing values, non-digits or a value over 2^63−1 raise."""
    if value is None:
        return None
    values = {_number(v) for v in value.split(",")}
    if len(values) != 1:
        raise BadLength(f"conflicting Content-Length values {value[:60]!r}")
    return values.pop()


@dataclass(frozen=True, slots=True)
class ContentRange:
    """``bytes first-last/total`` (inclusive); ``first``/``last`` None for ``bytes */total``,
    ``total`` None for ``bytes first-last/*``. An empty upload is ``0, -1, 0``."""

    first: int | None
    last: int | None
    total: int | None

    @property
    def length(self) -> int:
        """Bytes the range covers (0 for ``*/total``)."""
        if self.first is None or self.last is None:
            return 0
        return self.last - self.first + 1


_CONTENT_RANGE = re.compile(
    r"\s*bytes(?:\s+|\s*=\s*)(?:(\d+)\s*-\s*(\d+|-1)|(\*))\s*/\s*(\d+|\*)\s*", re.I | re.ASCII
)


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a Content-Range; None when absent, malformed or inconsistent.

    Takes ``bytes a-b/n``, ``bytes a-b/*`` and ``bytes */n`` (any case; BITS clients also
    write ``bytes=``), and ``bytes 0--1/0`` for an empty upload. Numbers over 2^63−1 are
    malformed.
    """
    if value is None:
        return None
    m = _CONTENT_RANGE.fullmatch(value)
    if m is None:
        return None
    first_text, last_text, star, total_text = m.groups()
    try:
        total = None if total_text == "*" else _number(total_text)
        if star:
            return None if total is None else ContentRange(None, None, total)
        first = _number(first_text)
        if last_text == "-1":
            return ContentRange(0, -1, 0) if first == 0 and total == 0 else None
        last = _number(last_text)
    except BadLength:
        return None
    if first > last or (total is not None and last >= total):
        return None
    return ContentRange(first, last, total)


def format_content_range(first: int, last: int, total: int | None) -> str:
    """``bytes first-last/total`` (``*`` for an unknown total)."""
    return f"bytes {first}-{last}/{'*' if total is None else total}"


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A request's single ``bytes=`` range against *size* bytes, as (start, length).

    None means "ignore it and send the whole representation" (absent, another unit, several
    ranges, malformed: RFC 9110 §14.2 lets a server ignore Range); ``RangeNotSatisfiable``
    means answer 416.
    """
    if not value:
        return None
    unit, sep, spec = value.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.partition("-"))
    if not dash:
        return None
    try:
        if not first:
            suffix = _number(last)
            if suffix == 0 or size == 0:
                raise RangeNotSatisfiable(value)
            suffix = min(suffix, size)
            return size - suffix, suffix
        start = _number(first)
        end = _number(last) if last else size - 1
    except BadLength:
        return None
    if last and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(value)
    end = min(end, size - 1)
    return start, end - start + 1


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP-date) at *now*;
    None when absent, unparsable or not ASCII (the header is then ignored)."""
    if not value or not value.isascii():
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), MAX_LENGTH))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
