"""The BITS upload server (bitsnb.server): protocol, persistence, path safety, faults and the CLI.

Everything runs against a real ``UploadServer`` (uvicorn in a thread) on 127.0.0.1, driven by the
small reference client in ``tests/_support/bits_upload_client.py`` or by raw sockets where httpx
would normalise the URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from _support.bits_upload_client import BitsUploadClient, error_code, received

from bitsnb.server import STATE_DIR, UPLOAD_PROTOCOL, create_app
from bitsnb.testing import Fault, UploadServer

TIMEOUT = 10.0  # bound on every network wait in this file
E_ACCESSDENIED = 0x80070005
E_INVALIDARG = 0x80070057
BG_E_SESSION_NOT_FOUND = 0x8020001F
BG_E_TOO_LARGE = 0x80200020
HEX_CODE = re.compile(r"0x[0-9A-F]{8}")
HEX_CONTEXT = re.compile(r"0x[0-9A-F]+")


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def srv(root: Path) -> Iterator[UploadServer]:
    with UploadServer(root) as server:
        yield server


@pytest.fixture
def plain_srv(root: Path) -> Iterator[UploadServer]:
    with UploadServer(root, reply=False) as server:
        yield server


def client(server: UploadServer, name: str) -> BitsUploadClient:
    return BitsUploadClient(server.url(name), timeout=TIMEOUT)


def sessions(server: UploadServer) -> list[str]:
    folder = server.state_dir
    return sorted(os.listdir(folder)) if folder.exists() else []


def assert_error(resp: httpx.Response, status: int, code: int, context: int = 0x5) -> None:
    """An error Ack: status, both error headers in hex, the context in hex."""
    assert resp.status_code == status, resp.headers
    assert resp.headers["bits-packet-type"].lower() == "ack"
    assert HEX_CODE.fullmatch(resp.headers["bits-error-code"])
    assert resp.headers["bits-error"] == resp.headers["bits-error-code"]
    assert HEX_CONTEXT.fullmatch(resp.headers["bits-error-context"])
    assert error_code(resp) == code
    assert int(resp.headers["bits-error-context"], 16) == context
    assert resp.headers["content-length"] == "0"


def raw_request(
    port: int, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str]]:
    """One request over a plain socket (the target is sent exactly as given)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + ["Connection: close"]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = (line.split(":", 1) for line in head[1:] if ":" in line)
    return int(head[0].split()[1]), {k.strip().lower(): v.strip() for k, v in fields}


# -- basic packets ---------------------------------------------------------------------------


def test_ping_is_acked(srv: UploadServer) -> None:
    with client(srv, "any.bin") as c:
        resp = c.ping()
    assert resp.status_code == 200
    assert resp.headers["bits-packet-type"] == "Ack"
    assert resp.headers["content-length"] == "0"
    assert "bits-error-code" not in resp.headers


def test_create_session_negotiates_the_protocol(srv: UploadServer) -> None:
    with client(srv, "f.bin") as c:
        offer = "{00000000-1111-2222-3333-444444444444}, 7DF0354D-249B-430F-820D-3D2A9BEF4931"
        resp = c.post("Create-Session", headers={"BITS-Supported-Protocols": offer})
        assert resp.status_code == 200
        assert resp.headers["bits-protocol"] == UPLOAD_PROTOCOL
        assert resp.headers["accept-encoding"] == "identity"
        assert re.fullmatch(r"\{[0-9A-F-]{36}\}", resp.headers["bits-session-id"])
        bad = c.post("Create-Session", headers={"BITS-Supported-Protocols": "{1-2-3}"})
        assert_error(bad, 400, E_INVALIDARG)
        missing = c.post("Create-Session")
        assert_error(missing, 400, E_INVALIDARG)
    assert len(sessions(srv)) == 1


def test_plain_upload_is_byte_exact_and_leaves_no_temp(plain_srv: UploadServer) -> None:
    data = payload(300_001)
    with client(plain_srv, "sub/dir/file.bin") as c:
        result = c.upload(data, fragment_size=64 * 1024)
    assert plain_srv.path("sub/dir/file.bin").read_bytes() == data
    assert result.reply_url is None
    assert received(result.last_ack) == len(data)
    assert sessions(plain_srv) == []  # state, data and reply all gone after Close-Session
    assert os.listdir(plain_srv.root / "sub" / "dir") == ["file.bin"]


def test_empty_file_upload(plain_srv: UploadServer) -> None:
    with client(plain_srv, "empty.txt") as c:
        c.create_session()
        resp = c.fragment(b"", 0, 0)  # Content-Range: bytes */0
        assert resp.status_code == 200
        assert received(resp) == 0
        assert c.close_session().status_code == 200
    assert plain_srv.path("empty.txt").read_bytes() == b""


def test_upload_replaces_an_existing_file(plain_srv: UploadServer) -> None:
    plain_srv.path("f.bin").write_bytes(b"old content that is longer")
    with client(plain_srv, "f.bin") as c:
        c.upload(b"new")
    assert plain_srv.path("f.bin").read_bytes() == b"new"


# -- upload-reply ----------------------------------------------------------------------------


def test_upload_reply_serves_the_default_json(srv: UploadServer) -> None:
    data = payload(150_000, seed=2)
    with client(srv, "reports/r.csv") as c:
        session = c.create_session()
        c.fragment(data[:100_000], 0, len(data))
        last = c.fragment(data[100_000:], 100_000, len(data))
        reply_url = last.headers["bits-reply-url"]
        assert received(last) == len(data)
        assert srv.path("reports/r.csv").read_bytes() == data  # in place at the last byte

        got = httpx.get(reply_url, timeout=TIMEOUT)
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/json"
        assert got.json() == {
            "name": "r.csv",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "session_id": session,
        }
        part = httpx.get(reply_url, headers={"Range": "bytes=0-9"}, timeout=TIMEOUT)
        assert part.status_code == 206
        assert part.content == got.content[:10]
        assert part.headers["content-range"] == f"bytes 0-9/{len(got.content)}"
        head = httpx.head(reply_url, timeout=TIMEOUT)
        assert head.headers["content-length"] == str(len(got.content))

        again = c.fragment(data[100_000:], 100_000, len(data))  # a resend of the final fragment
        assert again.status_code == 200
        assert again.headers["bits-reply-url"] == reply_url

        closed = c.close_session()
        assert closed.status_code == 200
        assert closed.headers["bits-reply-url"] == reply_url
    assert httpx.get(reply_url, timeout=TIMEOUT).content == got.content  # kept until expiry
    folder = srv.state_dir / sessions(srv)[0]
    assert sorted(os.listdir(folder)) == ["reply", "state.json"]  # the data file is gone


@pytest.mark.parametrize(
    ("range_header", "if_range", "status", "content_range", "body"),
    [
        ("bytes=-4", None, 206, "bytes {tail}-{last}/{size}", slice(-4, None)),
        ("bytes=5-", None, 206, "bytes 5-{last}/{size}", slice(5, None)),
        ("bytes=0-999999", None, 206, "bytes 0-{last}/{size}", slice(None)),
        ("bytes=999999-", None, 416, "bytes */{size}", slice(0)),
        ("bytes=-0", None, 416, "bytes */{size}", slice(0)),
        ("bytes=0-1,4-5", None, 200, None, slice(None)),  # several ranges: ignored
        ("items=0-1", None, 200, None, slice(None)),  # another unit: ignored
        ("bytes=3-1", None, 200, None, slice(None)),  # last before first: ignored
        ("bytes=999999-5", None, 200, None, slice(None)),  # invalid, even past the end
        ("bytes=0-99999999999999999999", None, 200, None, slice(None)),  # over 2^63-1: ignored
        ("bytes=0-9", '"an-old-etag"', 200, None, slice(None)),  # If-Range differs: all of it
        ("bytes=0-9", "etag", 206, "bytes 0-9/{size}", slice(0, 10)),  # If-Range matches
    ],
)
def test_reply_ranges_follow_the_shared_range_rule(
    srv: UploadServer,
    range_header: str,
    if_range: str | None,
    status: int,
    content_range: str | None,
    body: slice,
) -> None:
    """The reply GET reads Range with ``bitsnb._http_rules.parse_range`` (the client's and the
    test server's rule): one ``bytes=`` range or a suffix; anything else is ignored (RFC 9110
    §14.2); a start past the end is 416."""
    data = payload(20_000, seed=3)
    with client(srv, "ranges.bin") as c:
        c.create_session()
        reply_url = c.fragment(data, 0, len(data)).headers["bits-reply-url"]
    whole = httpx.get(reply_url, timeout=TIMEOUT)
    size = len(whole.content)
    headers = {"Range": range_header}
    if if_range is not None:
        headers["If-Range"] = whole.headers["etag"] if if_range == "etag" else if_range
    got = httpx.get(reply_url, headers=headers, timeout=TIMEOUT)
    assert got.status_code == status
    expected = None
    if content_range is not None:
        expected = content_range.format(tail=size - 4, last=size - 1, size=size)
    assert got.headers.get("content-range") == expected
    assert got.content == whole.content[body]
    assert httpx.get(srv.url(".bits-sessions/nope/reply"), timeout=TIMEOUT).status_code == 404


def test_custom_reply_function_and_its_failure(root: Path) -> None:
    calls: list[tuple[Path, str]] = []

    def reply(path: Path, session_id: str) -> bytes:
        calls.append((path, session_id))
        if len(calls) == 1:
            raise RuntimeError("the back-end application failed")
        return f"{path.name}:{path.stat().st_size}".encode()

    with UploadServer(root, reply=reply) as server, client(server, "in/x.dat") as c:
        c.create_session()
        failed = c.fragment(b"abcdef", 0, 6)
        assert_error(failed, 500, 0x801901F4, context=0x7)  # REMOTE_APPLICATION
        assert received(failed) == 6
        retried = c.fragment(b"abcdef", 0, 6)  # the client resends; the reply is retried
        assert retried.status_code == 200
        body = httpx.get(retried.headers["bits-reply-url"], timeout=TIMEOUT)
        assert body.content == b"x.dat:6"
        assert body.headers["content-type"] == "application/octet-stream"
    assert calls[-1] == (root.resolve() / "in" / "x.dat", c.session_id)


# -- fragments -------------------------------------------------------------------------------


def test_overlapping_resend_keeps_the_bytes_already_held(plain_srv: UploadServer) -> None:
    data = payload(300, seed=3)
    with client(plain_srv, "o.bin") as c:
        c.create_session()
        assert received(c.fragment(data[:100], 0, 300)) == 100
        forged = b"X" * 50 + data[100:200]  # bytes 50..99 differ from what the server holds
        assert received(c.fragment(forged, 50, 300)) == 200
        again = c.fragment(data[:200], 0, 300)  # entirely held already
        assert again.status_code == 200 and received(again) == 200
        assert received(c.fragment(data[200:], 200, 300)) == 300
        c.close_session()
    assert plain_srv.path("o.bin").read_bytes() == data


def test_gap_is_refused_with_416_and_the_received_range(plain_srv: UploadServer) -> None:
    data = payload(300, seed=4)
    with client(plain_srv, "g.bin") as c:
        session = c.create_session()
        c.fragment(data[:100], 0, 300)
        gap = c.fragment(data[150:200], 150, 300)
        assert gap.status_code == 416
        assert received(gap) == 100
        assert gap.headers["bits-packet-type"] == "Ack"
        assert gap.headers["bits-session-id"] == session
        data_file = plain_srv.state_dir / sessions(plain_srv)[0] / "data"
        assert data_file.stat().st_size == 100  # nothing of the refused fragment was written
        c.send_from(data, received(gap) or 0, 100)
        c.close_session()
    assert plain_srv.path("g.bin").read_bytes() == data


def test_bad_fragments_are_refused(plain_srv: UploadServer) -> None:
    with client(plain_srv, "b.bin") as c:
        c.create_session()
        c.fragment(b"0123456789", 0, 100)
        for bad_range in ("bytes 5-2/100", "bytes 0-100/100", "items 0-9/100", "nonsense"):
            resp = c.post("Fragment", headers={"Content-Range": bad_range}, content=b"0123")
            assert_error(resp, 400, E_INVALIDARG)
            assert received(resp) == 10
        changed = c.fragment(b"abc", 10, 200)  # total differs from the first fragment
        assert_error(changed, 400, E_INVALIDARG)
        no_range = c.post("Fragment", content=b"abc")
        assert_error(no_range, 400, E_INVALIDARG)
        gzip = c.post(
            "Fragment",
            headers={"Content-Range": "bytes 10-12/100", "Content-Encoding": "gzip"},
            content=b"abc",
        )
        assert_error(gzip, 400, E_INVALIDARG)
        unknown = c.post("Rename-Session")
        assert_error(unknown, 400, E_INVALIDARG)
        assert received(c.fragment(b"abc", 10, 100)) == 13  # the session is still usable


def test_packet_types_and_header_names_in_any_case(plain_srv: UploadServer) -> None:
    with httpx.Client(timeout=TIMEOUT) as http:
        url = plain_srv.url("case.bin")
        created = http.request(
            "BITS_POST",
            url,
            headers={
                "bits-packet-type": "CREATE-SESSION",
                "BITS-SUPPORTED-PROTOCOLS": UPLOAD_PROTOCOL.upper(),
            },
        )
        session = created.headers["BITS-Session-Id"]
        frag = http.request(
            "BITS_POST",
            url,
            headers={
                "Bits-Packet-Type": "FRAgmENT",
                "bits-session-id": session.lower().strip("{}"),  # braces and case don't matter
                "content-range": "BYTES 0-2/3",
                "X-Unknown-Header": "ignored",
                "Content-Name": "case.bin",
            },
            content=b"abc",
        )
        assert frag.status_code == 200 and received(frag) == 3
        closed = http.request(
            "BITS_POST",
            url,
            headers={"BITS-PACKET-TYPE": "close-session", "BITS-SESSION-ID": session},
        )
        assert closed.status_code == 200
    assert plain_srv.path("case.bin").read_bytes() == b"abc"


# -- drops, restarts, cancel, close ----------------------------------------------------------


def test_drop_mid_fragment_then_resume_from_the_received_range(plain_srv: UploadServer) -> None:
    data = payload(50_000, seed=5)
    with client(plain_srv, "drop.bin") as c:
        c.create_session()
        plain_srv.inject("*", Fault.drop_after(10_000))
        with pytest.raises(httpx.TransportError):
            c.fragment(data, 0, len(data))
        dropped = plain_srv.packets[-1]
        assert (dropped.fault, dropped.status, dropped.body_bytes) == ("drop_after", 0, 10_000)
        probe = c.fragment(data[40_000:], 40_000, len(data))  # ask where the server stands
        assert probe.status_code == 416
        assert received(probe) == 10_000  # the bytes that made it before the cut were kept
        last = c.send_from(data, 10_000, 16_384)
        assert received(last) == len(data)
        c.close_session()
    assert plain_srv.path("drop.bin").read_bytes() == data


def test_lost_final_ack_then_resend_and_close(plain_srv: UploadServer) -> None:
    with client(plain_srv, "lost.bin") as c:
        c.create_session()
        plain_srv.inject(
            "*", Fault.drop_after(1_000)
        )  # the whole body arrives, only the Ack is lost
        with pytest.raises(httpx.TransportError):
            c.fragment(b"z" * 1_000, 0, 1_000)
        assert plain_srv.path("lost.bin").read_bytes() == b"z" * 1_000
        resent = c.fragment(b"z" * 1_000, 0, 1_000)
        assert resent.status_code == 200 and received(resent) == 1_000
        assert c.close_session().status_code == 200
        # Without a reply nothing is kept after Close: a repeat finds no session (clients
        # should take BG_E_SESSION_NOT_FOUND on Close as "already closed").
        assert_error(c.close_session(), 500, BG_E_SESSION_NOT_FOUND)
    assert plain_srv.path("lost.bin").read_bytes() == b"z" * 1_000


def test_server_restart_keeps_the_session(root: Path) -> None:
    data = payload(200_000, seed=6)
    server = UploadServer(root, reply=False).start()
    try:
        port = server.port
        with client(server, "restart.bin") as c:
            c.create_session()
            c.fragment(data[:60_000], 0, len(data))
            c.fragment(data[60_000:120_000], 60_000, len(data))
        server.stop()
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url("x"), timeout=TIMEOUT)
        server.start()
        assert server.port == port
        with client(server, "restart.bin") as c2:
            c2.session_id = c.session_id
            assert c2.ping().status_code == 200
            probe = c2.fragment(data[190_000:], 190_000, len(data))
            assert probe.status_code == 416 and received(probe) == 120_000
            c2.send_from(data, 120_000, 60_000)
            assert c2.close_session().status_code == 200
        assert server.path("restart.bin").read_bytes() == data
    finally:
        server.stop()


def test_cancel_removes_the_data(plain_srv: UploadServer) -> None:
    with client(plain_srv, "c.bin") as c:
        session = c.create_session()
        c.fragment(b"a" * 1000, 0, 5000)
        assert sessions(plain_srv) == [str(uuid.UUID(session.strip("{}")))]
        resp = c.cancel_session()
        assert resp.status_code == 200
        assert resp.headers["bits-session-id"] == session
        assert sessions(plain_srv) == []
        assert not plain_srv.path("c.bin").exists()
        after = c.fragment(b"a" * 1000, 1000, 5000)
        assert_error(after, 500, BG_E_SESSION_NOT_FOUND)


def test_close_before_the_last_byte_discards_the_partial_upload(plain_srv: UploadServer) -> None:
    with client(plain_srv, "partial.bin") as c:
        c.create_session()
        c.fragment(b"a" * 1000, 0, 5000)
        assert c.close_session().status_code == 200
    assert sessions(plain_srv) == []
    assert not plain_srv.path("partial.bin").exists()


def test_unknown_sessions_are_refused(srv: UploadServer) -> None:
    with client(srv, "u.bin") as c:
        stranger = "{" + str(uuid.uuid4()).upper() + "}"
        for packet in ("Fragment", "Close-Session", "Cancel-Session"):
            resp = c.post(
                packet, session=stranger, headers={"Content-Range": "bytes 0-2/3"}, content=b"abc"
            )
            assert_error(resp, 500, BG_E_SESSION_NOT_FOUND)
            assert resp.headers["bits-session-id"] == stranger  # echoed
        not_a_guid = c.post(
            "Fragment", session="abc", headers={"Content-Range": "bytes 0-2/3"}, content=b"abc"
        )
        assert_error(not_a_guid, 500, BG_E_SESSION_NOT_FOUND)
        missing = c.post("Close-Session")
        assert_error(missing, 400, E_INVALIDARG)
        session = c.create_session()
    with client(srv, "other.bin") as other:  # a session belongs to its own URL
        resp = other.post(
            "Fragment", session=session, headers={"Content-Range": "bytes 0-2/3"}, content=b"abc"
        )
        assert_error(resp, 500, BG_E_SESSION_NOT_FOUND)
    assert not srv.path("other.bin").exists()


def test_expired_sessions_are_cleaned_up(root: Path) -> None:
    with UploadServer(root, session_timeout=0.3, reply=False) as server:
        with client(server, "old.bin") as c:
            c.create_session()
            c.fragment(b"a" * 100, 0, 1000)
            assert len(sessions(server)) == 1
            deadline = time.monotonic() + TIMEOUT
            while sessions(server):  # removed lazily: a later request sweeps
                assert time.monotonic() < deadline, "the expired session was never removed"
                time.sleep(0.1)
                c.ping()
            resp = c.fragment(b"a" * 100, 100, 1000)
            assert_error(resp, 500, BG_E_SESSION_NOT_FOUND)


# -- limits and path safety ------------------------------------------------------------------


def test_oversize_is_refused_with_413_too_large(root: Path) -> None:
    with (
        UploadServer(root, max_upload_size=1000, reply=False) as server,
        client(server, "big.bin") as c,
    ):
        c.create_session()
        resp = c.fragment(b"a" * 100, 0, 2000)
        assert_error(resp, 413, BG_E_TOO_LARGE)
        assert received(resp) == 0
        data_file = server.state_dir / sessions(server)[0] / "data"
        assert data_file.stat().st_size == 0
        c.upload(b"b" * 1000, fragment_size=400)  # exactly at the limit is fine
    assert server.path("big.bin").read_bytes() == b"b" * 1000


TRAVERSALS = [
    "/../outside/evil.bin",
    "/sub/../../outside/evil.bin",
    "/%2e%2e/outside/evil.bin",
    "/%2E%2E%2Foutside%2Fevil.bin",
    "/sub/%2e%2e%2f%2e%2e%2foutside/evil.bin",
    "/..%5coutside%5cevil.bin",
    "/sub%00/evil.bin",
    "/./evil.bin",
    "//outside/evil.bin",
    "/.bits-sessions/evil.bin",
    "/link/evil.bin",
    "/sub/",
    "/",
]


@pytest.fixture(scope="module")
def jail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UploadServer, Path]]:
    """One server for all traversal attempts: root/sub, root/link -> ../outside (a sibling)."""
    base = tmp_path_factory.mktemp("jail")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with UploadServer(root) as server:
        yield server, outside


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_is_refused(jail: tuple[UploadServer, Path], target: str) -> None:
    server, outside = jail
    create = {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": UPLOAD_PROTOCOL}
    status, headers = raw_request(server.port, "BITS_POST", target, create)
    assert status in (400, 403), (status, headers)
    assert HEX_CODE.fullmatch(headers["bits-error-code"])
    assert headers["bits-error"] == headers["bits-error-code"]
    assert int(headers["bits-error-code"], 16) in (E_ACCESSDENIED, E_INVALIDARG)
    assert "bits-session-id" not in headers
    assert sessions(server) == []

    # A fragment with a real session id cannot be redirected through such a path either.
    with client(server, "sub/ok.bin") as c:
        session = c.create_session()
        frag = {
            "BITS-Packet-Type": "Fragment",
            "BITS-Session-Id": session,
            "Content-Range": "bytes 0-2/3",
        }
        status, headers = raw_request(server.port, "BITS_POST", target, frag, b"abc")
        assert status in (400, 403, 500), (status, headers)
        assert "bits-error-code" in headers
        assert c.cancel_session().status_code == 200
    assert os.listdir(outside) == []
    assert sorted(os.listdir(server.root)) == [STATE_DIR, "link", "sub"]
    assert os.listdir(server.root / "sub") == []
    assert sessions(server) == []


# -- faults ----------------------------------------------------------------------------------


def test_fault_busy_answers_503_without_processing(plain_srv: UploadServer) -> None:
    with client(plain_srv, "busy.bin") as c:
        c.create_session()
        plain_srv.inject("*", Fault.status(503, retry_after=3))
        busy = c.fragment(b"abc", 0, 6)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "3"
        assert received(c.fragment(b"def", 3, 6)) is not None
        assert c.fragment(b"def", 3, 6).status_code == 416  # the busy fragment was not stored


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("hex", "0x8020001F"),
        ("bare", "8020001f"),
        ("decimal", "2149580831"),
        ("signed", "-2145386465"),
    ],
)
def test_fault_error_codes_in_any_format(plain_srv: UploadServer, fmt: Any, text: str) -> None:
    with client(plain_srv, "err.bin") as c:
        plain_srv.inject(
            "err.bin",
            Fault.bits_error(BG_E_SESSION_NOT_FOUND, fmt=fmt, status=500),
            packet="create-session",
        )
        resp = c.post("Create-Session", headers={"BITS-Supported-Protocols": UPLOAD_PROTOCOL})
        assert resp.status_code == 500
        assert resp.headers["bits-error-code"] == text == resp.headers["bits-error"]
        assert resp.headers["bits-error-context"] == "0x5"
        assert c.create_session()  # spent after one packet
    assert plain_srv.packets[0].fault == "bits_error"


def test_fault_extra_headers_and_times(plain_srv: UploadServer) -> None:
    with client(plain_srv, "extra.bin") as c:
        plain_srv.inject(
            "*", Fault.extra_headers({"X-Odd": "1", "BITS-Odd": "2"}, times=2), packet=None
        )
        first = c.ping()
        c.create_session()
        frag = c.fragment(b"abc", 0, 3)
        assert first.headers["x-odd"] == "1" and first.headers["bits-odd"] == "2"
        assert "x-odd" not in frag.headers  # two packets only
        assert frag.status_code == 200 and received(frag) == 3
    assert [p.fault for p in plain_srv.packets] == ["extra_headers", "extra_headers", None]


# -- memory, ASGI, CLI -----------------------------------------------------------------------


def test_memory_stays_flat_for_a_large_fragment(plain_srv: UploadServer) -> None:
    size, piece = 16 << 20, b"\xab" * (64 << 10)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    with client(plain_srv, "large.bin") as c:
        c.create_session()
        tracemalloc.start()
        try:
            resp = c.client.request(
                "BITS_POST",
                c.url,
                headers={
                    "BITS-Packet-Type": "Fragment",
                    "BITS-Session-Id": c.session_id or "",
                    "Content-Range": f"bytes 0-{size - 1}/{size}",
                    "Content-Length": str(size),
                },
                content=body(),
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert resp.status_code == 200 and received(resp) == size
    assert plain_srv.path("large.bin").stat().st_size == size
    assert peak < 4 << 20, f"peak traced memory {peak} bytes for a {size}-byte fragment"


def test_create_app_is_a_plain_asgi_app(root: Path) -> None:
    app = create_app(root)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "BITS_POST",
        "path": "/x",
        "raw_path": b"/x",
        "headers": [(b"bits-packet-type", b"Ping")],
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert (b"bits-packet-type", b"Ack") in sent[0]["headers"]


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def test_cli_serves_and_prints_the_url(root: Path) -> None:
    command = [sys.executable, "-m", "bitsnb.server", "--root", str(root), "--max-size", "10"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            url = _read_line(proc, TIMEOUT).strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            with BitsUploadClient(url + "/cli.bin", timeout=TIMEOUT) as c:
                c.upload(b"0123456789")
                c.create_session()
                assert_error(c.fragment(b"x", 0, 11), 413, BG_E_TOO_LARGE)
            assert (root / "cli.bin").read_bytes() == b"0123456789"
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean shutdown
            proc.wait(TIMEOUT)
    assert proc.returncode == 0


def test_cli_refuses_remote_hosts_and_explains_a_missing_uvicorn(root: Path) -> None:
    remote = subprocess.run(
        [sys.executable, "-m", "bitsnb.server", "--root", str(root), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert remote.returncode == 2
    assert "--allow-remote" in remote.stderr
    code = (
        "import sys, runpy; sys.modules['uvicorn'] = None; "
        f"sys.argv = ['x', '--root', {str(root)!r}]; "
        "runpy.run_module('bitsnb.server', run_name='__main__')"
    )
    missing = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert missing.returncode == 1
    assert "pip install 'bitsnb[server]'" in missing.stderr
