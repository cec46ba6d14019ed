"""Benchmark: parse realistic HTTP/1.1 response heads with h11, httptools and the old hand parser.

Run: ``.venv/bin/python bench/head_parse.py [N] [ROUNDS]`` (default 20,000 heads, 7 rounds).
Each round times every parser on the same N heads (nginx 200 and 206, an application server's
chunked 200, a 304), in an order that rotates from round to round; the table gives µs per head,
median and best over the rounds.

- ``h11 (bitsnb)``: what ``LeanTransport`` does per response: a fresh ``h11.Connection`` that
  has "sent" a GET, fed the whole head (``bitsnb._transport._parser`` and ``_next_event``).
- ``httptools``: llhttp through httptools' callback parser, collecting the fields the same way
  (skipped when httptools is not installed).
- ``hand (before)``: the split-and-partition parser the lean transport had before, for scale.

Only parsing is timed; the checks each does differ (h11 unfolds obs-folds, merges repeated
Content-Lengths and refuses any Transfer-Encoding but chunked; llhttp refuses repeated
Content-Lengths and obs-folds; the hand parser checked little), which is why bitsnb uses h11.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import h11
import httpx

from bitsnb._transport import _next_event, _parser

HEADS = [
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 08:11:11 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 16384\r\n"
    b"Last-Modified: Tue, 01 Dec 2026 08:10:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "692d4f28-4000"\r\nAccept-Ranges: bytes\r\n\r\n',
    b"HTTP/1.1 206 Partial Content\r\nServer: nginx/1.22.1\r\n"
    b"Date: Tue, 01 Dec 2026 08:11:11 GMT\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 134217728\r\nLast-Modified: Tue, 01 Dec 2026 08:10:00 GMT\r\n"
    b'Connection: keep-alive\r\nETag: "692d4f28-10000000"\r\n'
    b"Content-Range: bytes 134217728-268435455/268435456\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 08:11:11 GMT\r\nserver: uvicorn\r\n"
    b"content-type: application/json\r\ntransfer-encoding: chunked\r\n"
    b"cache-control: no-store\r\nx-request-id: 5f0c6a1e-7d2b-4c1a-9a57-2b8f3e0d9c41\r\n"
    b"strict-transport-security: max-age=63072000\r\nvary: Accept-Encoding\r\n"
    b"x-content-type-options: nosniff\r\nset-cookie: session=abc123; Path=/; HttpOnly\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nServer: nginx/1.22.1\r\n"
    b'Date: Tue, 01 Dec 2026 08:11:11 GMT\r\nETag: "692d4f28-4000"\r\n\r\n',
]
_REQUEST = httpx.Request("GET", "http://bench.invalid/")

Parsed = tuple[int, int]  # (status, number of fields)


def parse_h11(head: bytes) -> Parsed:
    event = _next_event(_parser(), head, _REQUEST)
    assert isinstance(event, h11.Response)
    return event.status_code, len(event.headers)


def _httptools() -> Callable[[bytes], Parsed] | None:
    try:
        import httptools  # type: ignore[import-untyped]
    except ImportError:
        return None

    class Fields:
        __slots__ = ("fields",)

        def __init__(self) -> None:
            self.fields: list[tuple[bytes, bytes]] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.fields.append((name, value))

    def parse_httptools(head: bytes) -> Parsed:
        fields = Fields()
        parser = httptools.HttpResponseParser(fields)
        parser.feed_data(head)
        return parser.get_status_code(), len(fields.fields)

    return parse_httptools


def parse_hand(head: bytes) -> Parsed:
    """The lean transport's parser before h11 (bitsnb 7dbad2e), without its IO."""
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, _reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ValueError("bad status line")
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
            raise ValueError("bad header line")
        fields.append((name, value.strip(b" \t")))
    return int(code), len(fields)


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 20_000
    rounds = int(argv[2]) if len(argv) > 2 else 7
    parsers: dict[str, Callable[[bytes], Parsed]] = {"h11 (bitsnb)": parse_h11}
    ht = _httptools()
    if ht is not None:
        parsers["httptools"] = ht
    else:
        print("httptools is not installed: skipped (pip install httptools)")
    parsers["hand (before)"] = parse_hand
    for head in HEADS:  # every parser reads every head the same way
        results = {name: parse(head) for name, parse in parsers.items()}
        assert len(set(results.values())) == 1, results
    heads = [HEADS[i % len(HEADS)] for i in range(n)]
    times: dict[str, list[float]] = {name: [] for name in parsers}
    names = list(parsers)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            parse = parsers[name]
            start = time.perf_counter()
            for head in heads:
                parse(head)
            times[name].append((time.perf_counter() - start) / n * 1e6)
    print(f"{n} heads x {rounds} interleaved rounds, µs per head")
    print(f"{'parser':<15} {'median':>8} {'best':>8}")
    for name in names:
        print(f"{name:<15} {statistics.median(times[name]):8.2f} {min(times[name]):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
