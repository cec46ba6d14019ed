"""The lean transport and httpx's own transport, fed the same raw responses, must agree.

Every case is the exact bytes (or a timed script) a raw-socket server on 127.0.0.1 answers
with; each goes to a client on ``LeanTransport`` and to one on ``httpx.AsyncHTTPTransport``
(httpcore + h11), and both must agree on accepting or refusing it, on the status, headers and
body bytes, and on a second request over the same client afterwards (so neither reads the next
response out of step). Where they must differ, the case says why in ``differ``, and the test
checks that they still do.

The cases come from small tables: status lines, header fields, Content-Length values,
Transfer-Encoding values, chunked bodies and trailers, interim responses, odd framing, line
endings and slow senders. Slow cases have short timeouts, and all cases of one transport run
at once, so the whole test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from _support.raw_http import Script, ScriptServer, drip, raw, reply, stall

from bitsnb._transport import LeanTransport

SLOW = 0.5  # the read timeout of the slow cases (the others get FAST)
FAST = 5.0
TLS = httpx.create_ssl_context()  # unused (plain http), but loading CAs per client costs 30 ms
OK = b"HTTP/1.1 200 OK\r\n"
OUT_OF_RANGE = "lean refuses a status outside 100–599 (RFC 9110 §15); h11 takes any 3 digits"
NOT_HTTP_1 = "lean refuses a major version other than 1 (RFC 9110 §2.5); h11 takes any d.d"
INTERIM_CAP = "lean allows 10 interim (1xx) responses, so a server stuck in 100 Continue fails; httpcore has no cap"
HEAD_BUDGET = "lean gives a whole head (and trailer section) the read timeout as its budget; httpcore's timeout is per read"
HEAD_SIZE = "lean refuses a head, chunk line or trailer section over 64 KiB; httpcore refuses one only once over 100 KiB unfinished"
LEFTOVER = "httpcore keeps bytes that follow a response and reads them as the next one; lean retires the connection"


@dataclass(frozen=True)
class Case:
    name: str
    wire: bytes | Script  # the response bytes (then the connection stays open), or a script
    differ: str = ""  # why the two transports must not agree
    timeout: float = FAST
    httpx_next: str = ""  # why httpx's next request over the same client fails


def _script(case: Case) -> Script:
    return case.wire if callable(case.wire) else raw(case.wire, keep=True)


def _with_length(body: bytes = b"hello", *fields: bytes, status: bytes = OK) -> bytes:
    head = status + b"Content-Length: %d\r\n" % len(body) + b"".join(f + b"\r\n" for f in fields)
    return head + b"\r\n" + body


def _chunked(body: bytes, *fields: bytes, status: bytes = OK) -> bytes:
    head = status + b"Transfer-Encoding: chunked\r\n" + b"".join(f + b"\r\n" for f in fields)
    return head + b"\r\n" + body


STATUS_LINES: list[tuple[bytes, str]] = [
    (b"HTTP/1.1 200 OK", ""),
    (b"HTTP/1.1 200", ""),
    (b"HTTP/1.1 200 ", ""),
    (b"HTTP/1.1 201 Created", ""),
    (b"HTTP/1.1 404 Not Found", ""),
    (b"HTTP/1.1 503 Service Unavailable", ""),
    (b"HTTP/1.1 599 Odd", ""),
    (b"HTTP/1.0 200 OK", ""),
    (b"HTTP/1.2 200 OK", ""),
    (b"HTTP/1.1 200 \xe9t\xe9", ""),
    (b"HTTP/1.1 200 OK\x00", ""),
    (b"HTTP/1.1 200 O\rK", ""),
    (b"HTTP/1.1 200\tOK", ""),
    (b"HTTP/1.1 200 OK ", ""),
    (b"HTTP/1.1 099 Low", ""),
    (b"HTTP/1.1 000 Zero", ""),
    (b"HTTP/1.1 600 High", OUT_OF_RANGE),
    (b"HTTP/1.1 999 High", OUT_OF_RANGE),
    (b"HTTP/1.1 2000 OK", ""),
    (b"HTTP/1.1 20 OK", ""),
    (b"HTTP/1.1 abc OK", ""),
    (b"HTTP/1.1  200 OK", ""),
    (b" HTTP/1.1 200 OK", ""),
    (b"http/1.1 200 OK", ""),
    (b"HTTX/1.1 200 OK", ""),
    (b"HTTP/11 200 OK", ""),
    (b"HTTP/2.0 200 OK", NOT_HTTP_1),
    (b"HTTP/0.9 200 OK", NOT_HTTP_1),
]

FIELDS: list[bytes] = [
    b"X-A: b",
    b"X-A:b",
    b"X-A:   b   ",
    b"X-A:\tb\t",
    b"X-A: ",
    b"X-A:",
    b"X-A: a  b",
    b"X-A: \xb2",
    b"X-A: caf\xc3\xa9",
    b"X-A: a\x01b",
    b"X-A: a\x7fb",
    b"X-A: a\x00b",
    b"X-A: a\rb",
    b"X-A: a\x0bb",
    b"X A: b",
    b"X-A : b",
    b"X-A\t: b",
    b" X-A: b",
    b"\tX-A: b",
    b"X-\x00A: b",
    b"X\rA: b",
    b"X-\xe9: b",
    b"X(A): b",
    b"X/A: b",
    b": b",
    b"X-A",
    b"X-A: b\r\n c",
    b"X-A: b\r\n\tc",
    b"X-A: b\r\n   ",
    b"X-A: b\r\nX-A: c",
    b"x-a: b\r\nX-A: c",
    b"X-A: " + b"v" * 8000,
    b"\r\n".join(b"X-%d: %d" % (i, i) for i in range(100)),
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: Upgrade",
    b"Connection: close, x",
]

LENGTHS: list[tuple[bytes, bytes]] = [
    (b"Content-Length: 5", b"hello"),
    (b"Content-Length: 5, 5", b"hello"),
    (b"Content-Length: 5,5", b"hello"),
    (b"Content-Length: 5\r\nContent-Length: 5", b"hello"),
    (b"Content-Length: 5, 6", b"hello!"),
    (b"Content-Length: 5\r\nContent-Length: 6", b"hello!"),
    (b"Content-Length: +5", b"hello"),
    (b"Content-Length: -5", b"hello"),
    (b"Content-Length: 5.0", b"hello"),
    (b"Content-Length: 0x5", b"hello"),
    (b"Content-Length: five", b"hello"),
    (b"Content-Length: ", b"hello"),
    (b"Content-Length:  5 ", b"hello"),
    (b"Content-Length: 05", b"hello"),
    (b"Content-Length: 5 5", b"hello"),
    (b"Content-Length: 0", b""),
    (b"Content-Length: 100000000000000000000", b"hello"),
    (b"CONTENT-LENGTH: 5", b"hello"),
]

TRANSFER_CODINGS: list[bytes] = [
    b"chunked",
    b"Chunked",
    b"CHUNKED",
    b"chunked ",
    b"gzip, chunked",
    b"chunked, gzip",
    b"gzip",
    b"identity",
    b"chunked, chunked",
    b"chunked\r\nTransfer-Encoding: chunked",
    b"chunked;q=1",
    b"",
    b"chunked\r\nContent-Length: 3",
]

CHUNKED_BODIES: list[tuple[bytes, str]] = [
    (b"5\r\nhello\r\n0\r\n\r\n", ""),
    (b"5;ext=1\r\nhello\r\n0\r\n\r\n", ""),
    (b'5;name="a b"\r\nhello\r\n0\r\n\r\n', ""),
    (b"5;\r\nhello\r\n0\r\n\r\n", ""),
    (b"5 \r\nhello\r\n0\r\n\r\n", ""),
    (
        b"5 ;x\r\nhello\r\n0\r\n\r\n",
        "lean takes the BWS RFC 9112 §7.1.1 allows before a chunk extension; h11 does not",
    ),
    (b"05\r\nhello\r\n0\r\n\r\n", ""),
    (b"0005\r\nhello\r\n000\r\n\r\n", ""),
    (b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n", ""),
    (b"%x\r\n%s\r\n0\r\n\r\n" % (70_000, b"z" * 70_000), ""),
    (b"0x5\r\nhello\r\n0\r\n\r\n", ""),
    (b"+5\r\nhello\r\n0\r\n\r\n", ""),
    (b"-5\r\nhello\r\n0\r\n\r\n", ""),
    (b" 5\r\nhello\r\n0\r\n\r\n", ""),
    (b"\r\nhello\r\n0\r\n\r\n", ""),
    (b"g\r\nhello\r\n0\r\n\r\n", ""),
    (b"5\r\nhelloXX0\r\n\r\n", ""),
    (b"5\r\nhello0\r\n\r\n", ""),
    (b"5\r\nhello\n0\r\n\r\n", ""),
    (b"5;" + b"e" * 70_000 + b"\r\nhello\r\n0\r\n\r\n", HEAD_SIZE),
    (b"5;" + b"e" * 200_000 + b"\r\nhello\r\n0\r\n\r\n", ""),
    (b"0\r\nX-T: 1\r\n\r\n", ""),
    (b"5\r\nhello\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n", ""),
    (b"5\r\nhello\r\n0\r\nX-T: 1\n\n", ""),
    (b"5\r\nhello\r\n0\r\nX-T: 1\r\n fold\r\n\r\n", ""),
    (b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n", ""),
    (b"5\r\nhello\r\n0\r\nX T: 1\r\n\r\n", ""),
    (b"5\r\nhello\r\n0\r\nNo-Colon\r\n\r\n", ""),
    (b"5\r\nhello\r\n0\r\nContent-Length: abc\r\n\r\n", ""),
    (b"5\r\nhello\r\n0\r\nTransfer-Encoding: gzip\r\n\r\n", ""),
]

# (bytes, then the server closes): truncated and close-delimited messages
CLOSED: list[bytes] = [
    b"",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\n\r\nhello until close",
    b"HTTP/1.0 200 OK\r\n\r\nhello until close",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
    _chunked(b"5\r\nhello\r\n"),
    _chunked(b"5\r\nhel"),
    _chunked(b"5\nhello\n0\n\n"),
    _chunked(b"5\r\nhello\r\n0\r\n"),
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"hello world\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nhello" % 2**63,
    _chunked(b"1" + b"0" * 16 + b"\r\nhello"),  # a chunk of 2^64 bytes
]

FINAL = _with_length(b"hello")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
INTERIM: list[tuple[bytes, str]] = [
    (CONTINUE + FINAL, ""),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + FINAL, ""),
    (b"HTTP/1.1 199 Odd\r\n\r\n" + FINAL, ""),
    (CONTINUE * 10 + FINAL, ""),
    (CONTINUE * 11 + FINAL, INTERIM_CAP),
    (CONTINUE * 50 + FINAL, INTERIM_CAP),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n", ""),
    (b"HTTP/1.1 100 Continue\r\nX-A: a\x00b\r\n\r\n" + FINAL, ""),
    (b"HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\n" + FINAL, ""),
]

OTHER: list[tuple[str, bytes]] = [
    ("204-empty", b"HTTP/1.1 204 No Content\r\n\r\n"),
    ("304-with-length", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
    ("lf-head", b"HTTP/1.1 200 OK\nX-A: b\nContent-Length: 5\n\nhello"),
    ("mixed-line-ends", b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 5\r\n\nhello"),
    ("cr-cr-lf", b"HTTP/1.1 200 OK\r\r\nContent-Length: 5\r\n\r\nhello"),
    ("lf-cr-lf-end", b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\nhello"),
    ("big-body", _with_length(b"b" * 3_000_000)),
    (
        "utf8-value-and-reason",
        _with_length(b"hello", b"X-A: \xe2\x82\xac", status=b"HTTP/1.1 200 \xe2\x9c\x93\r\n"),
    ),
]


def _slow_cases(stop: threading.Event) -> list[Case]:
    """Scripts with timing: slow heads and bodies, stalls, heads in pieces."""
    head = OK + b"X-Pad: " + b"p" * 20 + b"\r\nContent-Length: 5\r\n\r\n"
    chunked_head = OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"

    def pieces(conn: socket.socket, _head: bytes) -> bool:
        for part in (head[:7], head[7:30], head[30:], b"hel", b"lo"):
            conn.sendall(part)
            if stop.wait(0.01):
                return False
        return True

    return [
        Case("head-in-pieces", pieces),
        # 47 bytes a byte every 30 ms: no single read waits 0.5 s, the whole head takes 1.4 s
        Case("head-dripped", drip(head, 0.03, stop, after=b"hello"), HEAD_BUDGET, SLOW),
        Case(
            "trailer-dripped",
            drip(b"X-T: " + b"t" * 40 + b"\r\n\r\n", 0.03, stop, before=chunked_head),
            HEAD_BUDGET,
            SLOW,
        ),
        Case("body-dripped", drip(b"hello", 0.05, stop, before=head), "", SLOW),
        Case("head-stalled", stall(head[:20], stop, 1.5), "", SLOW),
    ]


def cases(stop: threading.Event) -> list[Case]:
    out: list[Case] = []
    for i, (line, why) in enumerate(STATUS_LINES):
        out.append(Case(f"status-{i}", _with_length(b"hello", status=line + b"\r\n"), why))
    for i, field in enumerate(FIELDS):
        out.append(Case(f"field-{i}", _with_length(b"hello", field)))
    for i, (fields, body) in enumerate(LENGTHS):
        out.append(Case(f"length-{i}", OK + fields + b"\r\n\r\n" + body))
    for i, te in enumerate(TRANSFER_CODINGS):
        wire = OK + b"Transfer-Encoding: " + te + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        out.append(Case(f"te-{i}", wire))
    out.append(
        Case("te-http-1.0", _chunked(b"5\r\nhello\r\n0\r\n\r\n", status=b"HTTP/1.0 200 OK\r\n"))
    )
    for i, (body, why) in enumerate(CHUNKED_BODIES):
        out.append(Case(f"chunked-{i}", _chunked(body), why))
    for i, wire in enumerate(CLOSED):
        out.append(Case(f"closed-{i}", raw(wire, keep=False)))
    for i, (wire, why) in enumerate(INTERIM):
        out.append(Case(f"interim-{i}", wire, why))
    out += [Case(name, wire) for name, wire in OTHER]
    out += [
        Case("field-70k", _with_length(b"hello", b"X-A: " + b"v" * 70_000), HEAD_SIZE),
        Case("field-200k", _with_length(b"hello", b"X-A: " + b"v" * 200_000)),
        Case("length-short", OK + b"Content-Length: 3\r\n\r\nhello", httpx_next=LEFTOVER),
        Case("extra-after-body", _with_length(b"hello") + b"GARBAGE", httpx_next=LEFTOVER),
        Case(
            "204-with-body",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
            httpx_next=LEFTOVER,
        ),
    ]
    return _slow_cases(stop) + out  # the slow ones first, to overlap the rest


Outcome = tuple[object, ...]
Outcomes = dict[str, tuple[Outcome, Outcome]]  # case name -> (its outcome, the next request's)
Results = tuple[list[Case], Outcomes, Outcomes]  # the cases, lean's outcomes, httpx's


async def _outcome(c: httpx.AsyncClient, url: str, timeout: float | None = None) -> Outcome:
    try:
        r = await c.get(url) if timeout is None else await c.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return ("refused", type(exc).__name__)
    return ("accepted", r.status_code, tuple(r.headers.multi_items()), r.content)


async def _run_all(srv: ScriptServer, all_cases: list[Case], lean: bool) -> Outcomes:
    """Each case, then a plain request over the same client (a few dozen cases at a time)."""
    slots = asyncio.Semaphore(24)

    async def one(case: Case) -> tuple[str, tuple[Outcome, Outcome]]:
        async with slots:
            inner = httpx.AsyncHTTPTransport(verify=TLS)
            transport = LeanTransport(inner) if lean else inner
            # the case's timeout is for reading; connecting gets FAST (a loaded machine's
            # accept thread is slow to answer 48 clients at once: not what a case is about)
            timeout = httpx.Timeout(case.timeout, connect=FAST)
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as c:
                first = await _outcome(c, f"{srv.base}/{case.name}")
                # the follow-up gets the ordinary timeout: a slow case's short one would make
                # a loaded machine's late "ok" look like a desynchronised connection
                then = await _outcome(c, f"{srv.base}/ok", FAST)
            return case.name, (first, then)

    return dict(await asyncio.gather(*(one(case) for case in all_cases)))


@pytest.fixture(scope="module")
def srv() -> Iterator[ScriptServer]:
    s = ScriptServer()
    s.scripts["/ok"] = reply(b"ok")
    yield s
    s.close()


@pytest.fixture(scope="module")
def results(srv: ScriptServer) -> Results:
    all_cases = cases(srv.stopping)
    for case in all_cases:
        srv.scripts[f"/{case.name}"] = _script(case)

    async def both() -> tuple[Outcomes, Outcomes]:
        return await asyncio.gather(_run_all(srv, all_cases, True), _run_all(srv, all_cases, False))

    lean, default = asyncio.run(asyncio.wait_for(both(), 60))
    return all_cases, lean, default


def _verdict(outcome: Outcome) -> Outcome:
    """What must agree: refused (whatever the exception), or status, headers and body."""
    return outcome[:1] if outcome[0] == "refused" else outcome


def test_there_are_more_than_a_hundred_cases(results: Results) -> None:
    all_cases = results[0]
    assert len(all_cases) > 100
    assert len({c.name for c in all_cases}) == len(all_cases)


def test_both_transports_agree(results: Results) -> None:
    all_cases, lean, default = results
    disagree = [
        (c.name, lean[c.name][0], default[c.name][0])
        for c in all_cases
        if not c.differ and _verdict(lean[c.name][0]) != _verdict(default[c.name][0])
    ]
    assert disagree == []


def test_where_they_differ_they_still_do(results: Results) -> None:
    """Each written reason still holds: the transports do not agree on its case."""
    all_cases, lean, default = results
    same = [
        (c.name, lean[c.name][0])
        for c in all_cases
        if c.differ and _verdict(lean[c.name][0]) == _verdict(default[c.name][0])
    ]
    assert same == []


def test_the_next_request_is_never_out_of_step(results: Results) -> None:
    """After any case, lean's next request over the same client gets its own response; httpx's
    fails exactly where a case says why."""
    all_cases, lean, default = results
    lean_wrong = [(c.name, lean[c.name][1]) for c in all_cases if not _is_ok(lean[c.name][1])]
    assert lean_wrong == []
    httpx_wrong = {c.name for c in all_cases if not _is_ok(default[c.name][1])}
    assert httpx_wrong == {c.name for c in all_cases if c.httpx_next}


def _is_ok(outcome: Outcome) -> bool:
    return outcome[0] == "accepted" and outcome[-1] == b"ok"
