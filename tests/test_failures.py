"""Failures become BITS codes by type (bitsnb/_failures.py): real failures through the engine.

An unresolvable ``.invalid`` name (it fails in the local resolver, no internet needed), a port
nobody listens on, certificates that do not verify, a stalled and a malformed response, local
files that cannot be written: each goes through ``Engine.download`` on the lean transport and
on httpx's own, and must come out as the same (code, context, transient). The errno table and
the lookup by type (never by message text) are tested directly as well.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trustme
from _support.engine import engine_failure, file_record
from _support.raw_http import ScriptServer, raw, reply, stall

import bitsnb
from bitsnb import ErrorContext, _codes
from bitsnb._failures import NETWORK_FAILURES, TransferFailure, local_failure, network_failure
from bitsnb.testing import FileServer

TIMEOUT = 10.0
E = TypeVar("E", bound=BaseException)


def fail(policy: bitsnb.Policy, url: str, temp: Path) -> TransferFailure:
    """Download *url* into *temp* through a fresh engine; the TransferFailure it raises."""
    return engine_failure(policy, file_record(url, temp))


def verdict(failure: TransferFailure) -> tuple[int, ErrorContext, bool]:
    return failure.code, failure.context, failure.transient


# -- network, for real ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_unresolvable_name(lean_policy: bitsnb.Policy, tmp_path: Path, scheme: str) -> None:
    failure = fail(lean_policy, f"{scheme}://bitsnb-test.invalid/f.bin", tmp_path / "f.tmp")
    assert verdict(failure) == (
        _codes.ERROR_WINHTTP_NAME_NOT_RESOLVED,
        ErrorContext.GENERAL_TRANSPORT,
        True,
    )


def test_a_refused_port(lean_policy: bitsnb.Policy, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    failure = fail(lean_policy, f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.tmp")
    assert verdict(failure) == (
        _codes.ERROR_WINHTTP_CANNOT_CONNECT,
        ErrorContext.GENERAL_TRANSPORT,
        True,
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_srv(ca: trustme.CA) -> Iterator[ScriptServer]:
    """A TLS server whose certificate, from a test CA, names ``localhost`` only."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    s = ScriptServer(tls=ctx)
    s.scripts["/f.bin"] = reply(b"secret")
    yield s
    s.close()


@pytest.mark.parametrize("case", ["untrusted-ca", "wrong-name"])
def test_a_certificate_that_does_not_verify(
    lean_policy: bitsnb.Policy, tmp_path: Path, ca: trustme.CA, tls_srv: ScriptServer, case: str
) -> None:
    """An unknown CA, or a trusted CA's certificate for another name: fatal, GENERAL_TRANSPORT,
    and the message says what the TLS layer said."""
    if case == "wrong-name":
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        lean_policy.verify = ctx
    url = f"https://127.0.0.1:{tls_srv.port}/f.bin"
    failure = fail(lean_policy, url, tmp_path / "f.tmp")
    assert verdict(failure) == (
        _codes.ERROR_WINHTTP_SECURE_FAILURE,
        ErrorContext.GENERAL_TRANSPORT,
        False,
    )
    assert "certificate" in failure.message.lower(), failure.message
    assert tls_srv.requests == []


def test_a_stalled_response(lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer) -> None:
    srv.scripts["/f.bin"] = stall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", srv.stopping)
    lean_policy.read_timeout = 0.3
    failure = fail(lean_policy, f"{srv.base}/f.bin", tmp_path / "f.tmp")
    assert verdict(failure) == (_codes.ERROR_WINHTTP_TIMEOUT, ErrorContext.GENERAL_TRANSPORT, True)


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        b"",
    ],
    ids=["two-lengths", "gzip-chunked", "short-body", "no-response"],
)
def test_a_broken_response(
    lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer, wire: bytes
) -> None:
    srv.scripts["/f.bin"] = raw(wire)
    failure = fail(lean_policy, f"{srv.base}/f.bin", tmp_path / "f.tmp")
    assert verdict(failure) == (
        _codes.ERROR_WINHTTP_CONNECTION_ERROR,
        ErrorContext.REMOTE_FILE,
        True,
    )


def test_too_many_redirects(lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer) -> None:
    srv.scripts["/loop"] = raw(
        b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n", keep=True
    )
    failure = fail(lean_policy, f"{srv.base}/loop", tmp_path / "f.tmp")
    assert verdict(failure) == (
        _codes.ERROR_WINHTTP_REDIRECT_FAILED,
        ErrorContext.REMOTE_FILE,
        False,
    )


# -- local files, for real -----------------------------------------------------------------------
def test_a_temporary_file_that_is_a_folder(
    policy: bitsnb.Policy, tmp_path: Path, server: FileServer
) -> None:
    """EISDIR: E_ACCESSDENIED, which is what Windows answers for a folder opened as a file."""
    url = server.add_file("f.bin", b"data")
    temp = tmp_path / "f.tmp"
    temp.mkdir()
    failure = fail(policy, url, temp)
    assert verdict(failure) == (_codes.E_ACCESSDENIED, ErrorContext.LOCAL_FILE, False)
    assert failure.protocol is None and str(temp) in failure.message


def test_a_temporary_file_in_a_missing_folder(
    policy: bitsnb.Policy, tmp_path: Path, server: FileServer
) -> None:
    url = server.add_file("f.bin", b"data")
    failure = fail(policy, url, tmp_path / "gone" / "f.tmp")
    assert verdict(failure) == (_codes.ERROR_PATH_NOT_FOUND, ErrorContext.LOCAL_FILE, False)


def _permission_denied(tmp_path: Path) -> OSError:
    """A real EACCES: a read-only file opened for writing (root: a read-only sysfs file,
    which refuses even root)."""
    if os.geteuid() != 0:
        target = tmp_path / "read-only"
        target.write_bytes(b"")
        target.chmod(0o400)
    else:
        target = Path("/sys/kernel/uevent_seqnum")
    try:
        open(target, "wb").close()
    except OSError as exc:
        if exc.errno == errno.EACCES:
            return exc
        pytest.skip(f"opening {target} for writing gave {exc!r}, not EACCES")
    pytest.skip(f"{target} could be opened for writing")


@pytest.mark.parametrize("kind", ["EACCES", "ENOENT", "EISDIR"])
def test_local_failures_from_real_calls(tmp_path: Path, kind: str) -> None:
    if kind == "EACCES":
        exc = _permission_denied(tmp_path)
        code = _codes.E_ACCESSDENIED
    else:
        target = tmp_path / "missing" / "f" if kind == "ENOENT" else tmp_path
        try:
            open(target, "wb").close()
        except OSError as caught:
            exc = caught
        assert exc.errno == getattr(errno, kind)
        code = _codes.ERROR_PATH_NOT_FOUND if kind == "ENOENT" else _codes.E_ACCESSDENIED
    failure = local_failure(exc, "the/path")
    assert verdict(failure) == (code, ErrorContext.LOCAL_FILE, False)
    assert "the/path" in failure.message and failure.protocol is None


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("EFBIG", 0x800700DF),  # ERROR_FILE_TOO_LARGE (read as Win32 27, it would be a sector)
        ("EIO", 0x8007045D),  # ERROR_IO_DEVICE
        ("ENOSPC", 0x80070070),  # ERROR_DISK_FULL
        ("EDQUOT", 0x80070070),
        ("EACCES", 0x80070005),  # ERROR_ACCESS_DENIED
        ("EPERM", 0x80070005),
        ("EISDIR", 0x80070005),
        ("EROFS", 0x80070013),  # ERROR_WRITE_PROTECT
        ("ENOENT", 0x80070003),  # ERROR_PATH_NOT_FOUND
        ("ENOTDIR", 0x80070003),
        ("ENAMETOOLONG", 0x800700CE),  # ERROR_FILENAME_EXCED_RANGE
        ("EMFILE", 0x80070004),  # ERROR_TOO_MANY_OPEN_FILES
        ("ECHILD", 0x80004005),  # no counterpart: E_FAIL, never a Win32 code of the same number
    ],
)
def test_the_errno_table(name: str, code: int) -> None:
    number = getattr(errno, name)
    assert _codes.hresult_from_errno(number) == code
    failure = local_failure(OSError(number, os.strerror(number)), "p")
    assert verdict(failure) == (code, ErrorContext.LOCAL_FILE, False)


def test_an_oserror_without_errno_is_e_fail() -> None:
    assert local_failure(OSError("no errno"), "p").code == _codes.E_FAIL


# -- the table itself ----------------------------------------------------------------------------
def _chained(outer: E, *causes: BaseException) -> E:
    link: BaseException = outer
    for cause in causes:
        link.__cause__ = cause
        link = cause
    return outer


def test_a_cause_below_httpx_decides() -> None:
    dns = _chained(httpx.ConnectError("x"), OSError("y"), socket.gaierror(-2, "no name"))
    assert network_failure(dns).code == _codes.ERROR_WINHTTP_NAME_NOT_RESOLVED
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    tls = _chained(httpx.ConnectError("x"), cert)
    assert verdict(network_failure(tls)) == (
        _codes.ERROR_WINHTTP_SECURE_FAILURE,
        ErrorContext.GENERAL_TRANSPORT,
        False,
    )
    assert network_failure(tls).message == str(cert)


def test_messages_are_never_read() -> None:
    """A ConnectError that only says "Name or service not known" is not a DNS failure."""
    failure = network_failure(httpx.ConnectError("[Errno -2] Name or service not known"))
    assert failure.code == _codes.ERROR_WINHTTP_CANNOT_CONNECT


def test_a_tls_connection_cut_mid_body_is_a_transient_connection_error() -> None:
    cut = _chained(
        httpx.ReadError("x"), ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    )
    assert verdict(network_failure(cut)) == (
        _codes.ERROR_WINHTTP_CONNECTION_ERROR,
        ErrorContext.REMOTE_FILE,
        True,
    )


def test_the_context_chain_counts_and_a_cycle_ends() -> None:
    outer = httpx.ConnectError("x")
    inner = socket.gaierror(-3, "try again")
    outer.__context__ = inner
    inner.__context__ = outer  # a cycle
    assert network_failure(outer).code == _codes.ERROR_WINHTTP_NAME_NOT_RESOLVED


def _httpx_errors() -> list[type[httpx.HTTPError]]:
    found: list[type[httpx.HTTPError]] = []
    todo: list[type[httpx.HTTPError]] = [httpx.HTTPError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo += kind.__subclasses__()
    return found


@pytest.mark.parametrize("kind", _httpx_errors(), ids=lambda k: k.__name__)
def test_every_httpx_error_has_a_row(kind: type[httpx.HTTPError]) -> None:
    """Each httpx exception class maps by a row of its own or an ancestor's; timeouts and
    redirect failures by theirs."""
    exc = kind.__new__(kind)
    Exception.__init__(exc, "m")
    failure = network_failure(exc)
    row = next(r for r in NETWORK_FAILURES if isinstance(exc, r[0]))
    assert verdict(failure) == row[1:]
    if issubclass(kind, httpx.TimeoutException):
        assert failure.code == _codes.ERROR_WINHTTP_TIMEOUT
    if issubclass(kind, httpx.TooManyRedirects | httpx.UnsupportedProtocol):
        assert (failure.code, failure.transient) == (_codes.ERROR_WINHTTP_REDIRECT_FAILED, False)
