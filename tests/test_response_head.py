"""Response heads: llhttp's fast reading and h11's agree on every head of the differential corpus."""

from __future__ import annotations

import re
import threading

import pytest
from test_transport_differential import cases

from bitsnb._response_head import HeadError, ResponseHead, parse_head, parse_head_h11

Verdict = tuple[object, ...]

EXTRA = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",  # repeated, identical
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 5\r\n\r\n",  # obs-fold: unfolded
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\n",  # bare LF
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1 200 O\x00K\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: v  \r\n\r\n",
    b'HTTP/1.1 200 OK\r\nETag: "a\x80b"\r\n\r\n',
    b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
]


def _heads() -> list[bytes]:
    out = list(EXTRA)
    for case in cases(threading.Event()):
        wire = case.wire
        if not isinstance(wire, bytes):
            continue
        end = re.search(rb"\n\r?\n", wire)
        if end is not None:
            out.append(wire[: end.end()])
    return out


def _verdict(parse: object, head: bytes) -> Verdict:
    assert callable(parse)
    try:
        got: ResponseHead = parse(head)
    except HeadError:
        return ("refused",)
    return ("ok", got.status, got.version, [(n.lower(), v) for n, v in got.fields])


HEADS = _heads()


def test_the_corpus_is_large() -> None:
    assert len(HEADS) > 100


@pytest.mark.parametrize("head", HEADS, ids=[f"h{i}" for i in range(len(HEADS))])
def test_fast_reading_agrees_with_h11(head: bytes) -> None:
    assert _verdict(parse_head, head) == _verdict(parse_head_h11, head)


def test_what_h11_settles() -> None:
    # accepted: a repeated identical Content-Length (RFC 9110 §8.6), obs-fold unfolded
    assert _verdict(parse_head, EXTRA[0])[3] == [(b"content-length", b"5")]
    assert parse_head(EXTRA[1]).fields[0] == (b"X", b"a b")
    # refused: a coding besides chunked, a status below 100, a control byte in the reason
    for head in (EXTRA[3], EXTRA[6], EXTRA[7]):
        with pytest.raises(HeadError):
            parse_head(head)


def test_httptools_is_installed() -> None:
    """The fast reading needs httptools (a dependency); without it h11 reads every head."""
    import httptools  # noqa: F401
