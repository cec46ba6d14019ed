"""Which validator a Range request may name in If-Range: a strong ETag, or a Last-Modified date
that RFC 9110 lets a client treat as strong.

RFC 9110 §13.1.5: a client sends If-Range with an HTTP-date only when it has no entity tag for
the representation and the date is strong in the sense of §8.8.2.2. For a client that rule is:
the response that carried the Last-Modified has a ``Date`` at least 60 seconds later (two
responses sent within one second with one Last-Modified would have a Date equal to it; the
margin guards against the two values coming from different clocks). One second is the rule for
an origin server comparing against its own clock, which a client is not.
"""

from __future__ import annotations

import datetime as _dt
import email.utils

__all__ = ["STRONG_DATE_MARGIN", "if_range_value", "strong_date", "strong_etag"]

STRONG_DATE_MARGIN = 60.0
"""Seconds a Last-Modified must lie before the response's Date to be a strong validator."""


def strong_etag(etag: str | None) -> bool:
    """True for an entity tag that is not weak (``W/``)."""
    return bool(etag) and not etag.startswith("W/")  # type: ignore[union-attr]


def _when(value: str) -> _dt.datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)


def strong_date(last_modified: str | None, date: str | None) -> bool:
    """True when *last_modified* is a strong validator: both parse as HTTP-dates and the
    response's *date* is at least ``STRONG_DATE_MARGIN`` seconds later."""
    if not last_modified or not date:
        return False
    modified, sent = _when(last_modified), _when(date)
    if modified is None or sent is None:
        return False
    return (sent - modified).total_seconds() >= STRONG_DATE_MARGIN


def if_range_value(etag: str | None, last_modified: str | None) -> str | None:
    """The If-Range of a file whose validators were judged strong: its ETag when strong, else
    (no ETag at all) its Last-Modified; None when neither may be used."""
    if strong_etag(etag):
        return etag
    if not etag and last_modified:
        return last_modified
    return None
