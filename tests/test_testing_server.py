"""Tests for bitsnb.testing.FileServer: HTTP semantics, fault injection, accounting and the CLI."""

from __future__ import annotations

import email.utils
import http.client
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bitsnb.testing import Fault, FileServer

TIMEOUT = 10.0  # bound on every network wait in this file
DATA = bytes(range(256)) * 4  # 1024 bytes with recognisable offsets


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[FileServer]:
    with FileServer(tmp_path / "root") as server:
        server.add_file("data.bin", DATA)
        yield server


def conn(srv: FileServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)


def fetch(
    srv: FileServer,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[http.client.HTTPResponse, bytes]:
    c = conn(srv)
    try:
        c.request(method, path, headers=headers or {})
        resp = c.getresponse()
        return resp, resp.read()
    finally:
        c.close()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds (bounded wait)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# -- plain HTTP ------------------------------------------------------------------------------


def test_get_body_and_headers(srv: FileServer) -> None:
    resp, body = fetch(srv, "/data.bin")
    assert resp.status == 200
    assert body == DATA
    assert resp.getheader("Content-Length") == str(len(DATA))
    assert resp.getheader("Accept-Ranges") == "bytes"
    assert resp.getheader("Content-Type") == "application/octet-stream"
    etag = resp.getheader("ETag")
    assert etag is not None and re.fullmatch(r'"[^"]+"', etag), etag
    last_modified = resp.getheader("Last-Modified")
    assert last_modified is not None
    assert email.utils.parsedate_to_datetime(last_modified).tzinfo is not None


def test_keep_alive_reuses_connection(srv: FileServer) -> None:
    c = conn(srv)
    try:
        c.request("GET", "/data.bin")
        assert c.getresponse().read() == DATA
        first = c.sock
        c.request("GET", "/data.bin", headers={"Range": "bytes=0-9"})
        resp = c.getresponse()
        assert resp.read() == DATA[:10]
        assert c.sock is first is not None
    finally:
        c.close()


def test_url_quotes_and_subfolders(srv: FileServer) -> None:
    url = srv.add_file("sub dir/a+b.txt", b"hello")
    assert url == srv.base_url + "/sub%20dir/a%2Bb.txt"
    assert (srv.root / "sub dir" / "a+b.txt").read_bytes() == b"hello"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
        assert resp.read() == b"hello"


def test_head(srv: FileServer) -> None:
    resp, body = fetch(srv, "/data.bin", method="HEAD")
    assert resp.status == 200
    assert body == b""
    assert resp.getheader("Content-Length") == str(len(DATA))
    assert resp.getheader("ETag")
    assert srv.wait_requests(1)[0].body_bytes_sent == 0


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=1000-", 1000, 1023),
        ("bytes=-24", 1000, 1023),
        ("bytes=1020-5000", 1020, 1023),
        ("bytes=-5000", 0, 1023),
        ("bytes=0-0", 0, 0),
    ],
)
def test_range_forms(srv: FileServer, header: str, start: int, end: int) -> None:
    resp, body = fetch(srv, "/data.bin", {"Range": header})
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes {start}-{end}/{len(DATA)}"
    assert resp.getheader("Content-Length") == str(end - start + 1)
    assert body == DATA[start : end + 1]


def test_multiple_ranges_answered_whole(srv: FileServer) -> None:
    resp, body = fetch(srv, "/data.bin", {"Range": "bytes=0-1,5-6"})
    assert resp.status == 200
    assert body == DATA


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
def test_range_not_satisfiable(srv: FileServer, header: str) -> None:
    resp, body = fetch(srv, "/data.bin", {"Range": header})
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{len(DATA)}"
    assert body == b""


def test_if_range(srv: FileServer) -> None:
    head, _ = fetch(srv, "/data.bin", method="HEAD")
    etag, last_modified = head.getheader("ETag"), head.getheader("Last-Modified")
    assert etag and last_modified
    for validator in (etag, last_modified):
        resp, body = fetch(srv, "/data.bin", {"Range": "bytes=4-7", "If-Range": validator})
        assert (resp.status, body) == (206, DATA[4:8])
    for stale in ('"nope"', "W/" + etag, "Mon, 01 Jan 2001 00:00:00 GMT"):
        resp, body = fetch(srv, "/data.bin", {"Range": "bytes=4-7", "If-Range": stale})
        assert (resp.status, body) == (200, DATA)


def test_change_file_changes_validators_within_a_second(srv: FileServer) -> None:
    srv.add_random_file("r.bin", 5000, seed=3)
    before, old = fetch(srv, "/r.bin")
    srv.change_file("r.bin")
    after, new = fetch(srv, "/r.bin")
    assert len(new) == len(old) == 5000 and new != old
    assert after.getheader("ETag") != before.getheader("ETag")
    lm_before, lm_after = before.getheader("Last-Modified"), after.getheader("Last-Modified")
    assert lm_before and lm_after and lm_before != lm_after
    srv.change_file("r.bin", b"explicit")
    third, body = fetch(srv, "/r.bin")
    assert body == b"explicit"
    assert third.getheader("ETag") not in (before.getheader("ETag"), after.getheader("ETag"))
    assert third.getheader("Last-Modified") not in (lm_before, lm_after)
    # The old validator no longer satisfies If-Range.
    old_etag = after.getheader("ETag")
    assert old_etag
    resp, _ = fetch(srv, "/r.bin", {"Range": "bytes=0-1", "If-Range": old_etag})
    assert resp.status == 200


def test_random_file_is_deterministic_and_multiblock(tmp_path: Path) -> None:
    size = (1 << 20) + 12345
    with FileServer(tmp_path / "a") as a, FileServer(tmp_path / "b") as b:
        a.add_random_file("x", size, seed=7)
        b.add_random_file("x", size, seed=7)
        b.add_random_file("y", size, seed=8)
        x_a = (a.root / "x").read_bytes()
        assert len(x_a) == size
        assert x_a == (b.root / "x").read_bytes()
        assert x_a != (b.root / "y").read_bytes()
        resp, body = fetch(a, "/x")
        assert resp.status == 200 and body == x_a


def test_httpx_client_range(srv: FileServer) -> None:
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url("data.bin"), headers={"Range": "bytes=100-"})
        assert resp.status_code == 206
        assert resp.content == DATA[100:]


# -- errors and traversal --------------------------------------------------------------------


def test_missing_and_method_not_allowed(srv: FileServer) -> None:
    resp, _ = fetch(srv, "/nope.bin")
    assert resp.status == 404
    resp, _ = fetch(srv, "/data.bin", method="POST")
    assert resp.status == 405
    assert resp.getheader("Allow") == "GET, HEAD"
    resp, _ = fetch(srv, "/data.bin", method="DELETE")
    assert resp.status == 405
    assert (srv.root / "data.bin").exists()


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/sub/../../secret.txt",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/",
        "/sub",
    ],
)
def test_traversal_refused(srv: FileServer, path: str) -> None:
    (srv.root.parent / "secret.txt").write_bytes(b"secret")
    srv.add_file("sub/inner.txt", b"x")
    resp, body = fetch(srv, path)
    assert resp.status == 404
    assert b"secret" not in body


def test_add_file_refuses_escaping_names(srv: FileServer) -> None:
    for bad in ("../x", "/abs", "a/../../x", ""):
        with pytest.raises(ValueError):
            srv.add_file(bad, b"x")


# -- faults ----------------------------------------------------------------------------------


def test_drop_after_gives_incomplete_body(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.drop_after(100))
    c = conn(srv)
    try:
        c.request("GET", "/data.bin")
        resp = c.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(len(DATA))
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial == DATA[:100]
    finally:
        c.close()
    [rec] = srv.wait_requests(1)
    assert rec.fault == "drop_after" and rec.body_bytes_sent == 100
    # Used up: the next request is normal.
    assert fetch(srv, "/data.bin")[1] == DATA


def test_drop_after_applies_to_ranges(srv: FileServer) -> None:
    srv.inject("*.bin", Fault.drop_after(10))
    with httpx.Client(timeout=TIMEOUT) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(srv.url("data.bin"), headers={"Range": "bytes=500-"})
        resp = client.get(srv.url("data.bin"), headers={"Range": "bytes=500-"})
        assert resp.status_code == 206 and resp.content == DATA[500:]
    srv.wait_requests(2)
    assert srv.bytes_sent("data.bin") == 10 + len(DATA) - 500


def test_status_with_retry_after_and_times(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.status(503, retry_after=1.2, times=2))
    for _ in range(2):
        resp, body = fetch(srv, "/data.bin")
        assert resp.status == 503
        assert resp.getheader("Retry-After") == "2"
        assert b"503" in body
    resp, body = fetch(srv, "/data.bin")
    assert resp.status == 200 and body == DATA
    srv.inject("data.bin", Fault.status(404))
    resp, _ = fetch(srv, "/data.bin")
    assert resp.status == 404 and resp.getheader("Retry-After") is None
    recs = srv.wait_requests(4)
    assert [r.status for r in recs] == [503, 503, 200, 404]
    assert [r.fault for r in recs] == ["status", "status", None, "status"]


def test_fault_forever_and_clear(srv: FileServer) -> None:
    srv.inject("data.*", Fault.status(500, times=-1))
    for _ in range(4):
        assert fetch(srv, "/data.bin")[0].status == 500
    srv.clear_faults()
    assert fetch(srv, "/data.bin")[0].status == 200


def test_faults_apply_in_injection_order(srv: FileServer) -> None:
    srv.add_file("other.bin", b"other")
    srv.inject("data.bin", Fault.status(502))
    srv.inject("*", Fault.status(503))
    srv.inject("data.bin", Fault.status(504))
    assert fetch(srv, "/other.bin")[0].status == 503  # only the "*" fault matches
    assert [fetch(srv, "/data.bin")[0].status for _ in range(3)] == [502, 504, 200]


def test_ignore_range(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.ignore_range())
    resp, body = fetch(srv, "/data.bin", {"Range": "bytes=10-19"})
    assert resp.status == 200 and body == DATA
    assert resp.getheader("Content-Range") is None


def test_stall_delays_answer(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.stall(0.5))
    t0 = time.monotonic()
    resp, body = fetch(srv, "/data.bin")
    assert time.monotonic() - t0 >= 0.4  # generous lower bound only
    assert resp.status == 200 and body == DATA


def test_stall_after_sends_part_then_closes(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.stall_after(64, 0.3))
    t0 = time.monotonic()
    c = conn(srv)
    try:
        c.request("GET", "/data.bin")
        resp = c.getresponse()
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial == DATA[:64]
    finally:
        c.close()
    assert time.monotonic() - t0 >= 0.2
    assert srv.wait_requests(1)[0].body_bytes_sent == 64


def test_close_before_headers(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.close_before_headers())
    c = conn(srv)
    try:
        c.request("GET", "/data.bin")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            c.getresponse()
    finally:
        c.close()
    [rec] = srv.wait_requests(1)
    assert rec.status == 0 and rec.fault == "close_before_headers"
    assert fetch(srv, "/data.bin")[1] == DATA


def test_wrong_length_too_long(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.wrong_length(10))
    c = conn(srv)
    try:
        c.request("GET", "/data.bin")
        resp = c.getresponse()
        assert resp.getheader("Content-Length") == str(len(DATA) + 10)
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial == DATA
    finally:
        c.close()


def test_wrong_length_too_short(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.wrong_length(-10))
    resp, body = fetch(srv, "/data.bin")
    assert resp.getheader("Content-Length") == str(len(DATA) - 10)
    assert resp.getheader("Connection") == "close"
    assert body == DATA[:-10]


def test_no_length_chunked(srv: FileServer) -> None:
    srv.add_random_file("big.bin", (1 << 20) * 2 + 3)
    expected = (srv.root / "big.bin").read_bytes()
    srv.inject("big.bin", Fault.no_length(times=2))
    resp, body = fetch(srv, "/big.bin")
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Length") is None
    assert body == expected
    resp, body = fetch(srv, "/big.bin", {"Range": "bytes=100-"})
    assert resp.status == 206 and body == expected[100:]
    assert resp.getheader("Transfer-Encoding") == "chunked"


def test_change_before(srv: FileServer) -> None:
    first, _ = fetch(srv, "/data.bin")
    srv.inject("data.bin", Fault.change_before())
    second, body = fetch(srv, "/data.bin")
    assert second.getheader("ETag") != first.getheader("ETag")
    assert second.getheader("Last-Modified") != first.getheader("Last-Modified")
    assert len(body) == len(DATA) and body != DATA
    assert body == (srv.root / "data.bin").read_bytes()


def test_weak_etag_and_no_validators(srv: FileServer) -> None:
    srv.inject("data.bin", Fault.weak_etag())
    srv.inject("data.bin", Fault.no_validators())
    resp, _ = fetch(srv, "/data.bin")
    etag = resp.getheader("ETag")
    assert etag is not None and etag.startswith('W/"')
    resp, body = fetch(srv, "/data.bin")
    assert resp.getheader("ETag") is None and resp.getheader("Last-Modified") is None
    assert body == DATA


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault.status(42)
    with pytest.raises(ValueError):
        Fault.drop_after(10, times=0)
    assert Fault.stall(1).with_times(-1).times == -1


# -- accounting ------------------------------------------------------------------------------


def test_requests_and_bytes_sent(srv: FileServer) -> None:
    srv.add_file("dir/a.txt", b"abc")
    fetch(srv, "/data.bin")
    fetch(srv, "/data.bin", {"Range": "bytes=0-99", "If-Range": '"x"'})
    fetch(srv, "/dir/a.txt", {"Range": "bytes=1-"})
    fetch(srv, "/missing")
    recs = srv.wait_requests(4)
    assert [(r.method, r.path, r.status) for r in recs] == [
        ("GET", "data.bin", 200),
        ("GET", "data.bin", 200),
        ("GET", "dir/a.txt", 206),
        ("GET", "missing", 404),
    ]
    assert recs[1].range == "bytes=0-99" and recs[1].if_range == '"x"'
    assert recs[2].headers["Range"] == "bytes=1-"
    assert recs[0].range is None and recs[0].if_range is None
    assert srv.bytes_sent() == 2 * len(DATA) + 2
    assert srv.bytes_sent("data.bin") == 2 * len(DATA)
    assert srv.bytes_sent("dir/*") == 2
    srv.requests.clear()  # a copy: the log is unaffected
    assert len(srv.requests) == 4
    srv.reset_log()
    assert srv.requests == [] and srv.bytes_sent() == 0


# -- lifecycle -------------------------------------------------------------------------------


def test_stop_is_idempotent_and_ends_stalled_handlers(tmp_path: Path) -> None:
    server = FileServer().start()
    tmp_root = server.root
    server.add_file("slow.bin", DATA)
    server.add_file("slow2.bin", DATA)
    server.inject("slow.bin", Fault.stall(60))
    server.inject("slow2.bin", Fault.stall_after(10, 60))
    errors: queue.Queue[BaseException | None] = queue.Queue()

    def client(path: str) -> None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            c.request("GET", path)
            c.getresponse().read()
            errors.put(None)
        except BaseException as exc:
            errors.put(exc)

    threads = [
        threading.Thread(target=client, args=(p,), daemon=True) for p in ("/slow.bin", "/slow2.bin")
    ]
    for t in threads:
        t.start()
    wait_until(lambda: len(server.requests) == 2)
    t0 = time.monotonic()
    server.stop()
    server.stop()
    assert time.monotonic() - t0 < 10  # far below the 60 s stalls
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    results = [errors.get(timeout=TIMEOUT) for _ in threads]
    assert all(isinstance(r, (http.client.HTTPException, OSError)) for r in results), results
    assert not tmp_root.exists()  # the owned temporary root is removed
    with pytest.raises(RuntimeError):
        server.start()


def test_context_manager_and_given_root_kept(tmp_path: Path) -> None:
    root = tmp_path / "keep"
    with FileServer(root) as server:
        url = server.add_file("f", b"x")
        assert url.startswith("http://127.0.0.1:")
    assert (root / "f").read_bytes() == b"x"
    with pytest.raises(OSError), urllib.request.urlopen(url, timeout=TIMEOUT):
        pass


# -- command line ----------------------------------------------------------------------------


def test_cli_serves_until_interrupted(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello cli")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitsnb.testing", "--root", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout = proc.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        base_url = lines.get(timeout=60).strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url), base_url
        with urllib.request.urlopen(base_url + "/hello.txt", timeout=TIMEOUT) as resp:
            assert resp.read() == b"hello cli"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_cli_refuses_remote_host(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bitsnb.testing", "--root", str(tmp_path), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr
