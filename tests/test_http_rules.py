"""The client side of bitsnb/_http_rules.py: the engine's use of it against real servers.

Retry-After values that are not delta-seconds or an HTTP-date are ignored (a 503 stays a
retryable failure, never E_FAIL); lengths and Content-Range totals of 2^63 or more are refused
as BG_E_INVALID_SERVER_RESPONSE before anything reaches the store. Each case runs on the lean
transport and on httpx's own, against a raw-socket server that sends the very bytes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from _support.engine import engine_failure, file_record
from _support.helpers import wait_state
from _support.raw_http import ScriptServer, raw

import bitsnb
from bitsnb import ErrorContext, JobState, _codes
from bitsnb._http_rules import MAX_LENGTH, BadLength, parse_length
from bitsnb._records import FileRecord

TIMEOUT = 10.0
HTTP_503 = _codes.http_error(503)
INVALID = _codes.BG_E_INVALID_SERVER_RESPONSE


def record(url: str, tmp_path: Path, **fields: object) -> FileRecord:
    return file_record(url, tmp_path / "f.tmp", **fields)


def file_row(store: Path, job: bitsnb.Job) -> tuple[object, ...]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT bytes_total, bytes_transferred, ranges FROM files WHERE job_id=?",
            (str(job.id),),
        ).fetchone()
        return tuple(row)
    finally:
        db.close()


# -- Retry-After -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [b"\xb2", b"\xc2\xb2", b"\xd9\xa3", b"soon", b"-5", b"1.5", b"1e3", b"Tue, 99 Foo 2026"],
    ids=["latin1-sup2", "utf8-sup2", "arabic-3", "word", "negative", "fraction", "exp", "bad-date"],
)
def test_an_unparsable_retry_after_is_ignored(
    lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer, value: bytes
) -> None:
    """Superscript two and Arabic-Indic three are digits to str.isdigit but not to HTTP."""
    srv.scripts["/f"] = raw(
        b"HTTP/1.1 503 Busy\r\nRetry-After: " + value + b"\r\nContent-Length: 0\r\n\r\n", True
    )
    failure = engine_failure(lean_policy, record(f"{srv.base}/f", tmp_path))
    assert (failure.code, failure.transient, failure.retry_after) == (HTTP_503, True, None)


def test_a_valid_retry_after_is_kept(
    lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer
) -> None:
    srv.scripts["/f"] = raw(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n")
    failure = engine_failure(lean_policy, record(f"{srv.base}/f", tmp_path))
    assert (failure.code, failure.transient, failure.retry_after) == (HTTP_503, True, 7.0)


def test_a_503_with_a_non_ascii_retry_after_is_a_transient_error(
    lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer
) -> None:
    """Through the manager: TRANSIENT_ERROR with BG_E_HTTP_ERROR_503, not ERROR with E_FAIL."""
    srv.scripts["/f"] = raw(b"HTTP/1.1 503 Busy\r\nRetry-After: \xb2\r\nContent-Length: 0\r\n\r\n")
    with bitsnb.Manager(store=tmp_path / "jobs.db", policy=lean_policy) as mgr:
        job = mgr.create_job("busy")
        job.minimum_retry_delay = 60
        job.add_file(f"{srv.base}/f", str(tmp_path / "f"))
        job.resume()
        wait_state(job, JobState.TRANSIENT_ERROR, JobState.ERROR, timeout=TIMEOUT)
        assert job.state is JobState.TRANSIENT_ERROR
        assert job.error is not None and job.error.code == HTTP_503, job.error


# -- lengths of 2^63 and more ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "length", [2**63, 2**64 - 1, 10**20 - 1], ids=["2^63", "2^64-1", "20-digits"]
)
def test_a_content_length_over_2_63_is_refused_before_it_is_stored(
    lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer, length: int
) -> None:
    """A length no file can have: BG_E_INVALID_SERVER_RESPONSE, retried like BITS retries an
    invalid response on a plain download, and the store never sees the number."""
    head = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "e"\r\n\r\n' % length
    srv.scripts["/f"] = raw(head + b"x" * 1000)
    store = tmp_path / "jobs.db"
    with bitsnb.Manager(store=store, policy=lean_policy) as mgr:
        job = mgr.create_job("huge")
        job.minimum_retry_delay = 60
        job.add_file(f"{srv.base}/f", str(tmp_path / "f"))
        job.resume()
        wait_state(job, JobState.TRANSIENT_ERROR, JobState.ERROR, timeout=TIMEOUT)
        assert job.state is JobState.TRANSIENT_ERROR, job.error
        assert job.error is not None
        assert (job.error.code, job.error.context) == (INVALID, ErrorContext.REMOTE_FILE)
        assert str(length) in job.error.message
        assert job.progress.bytes_total is None
    assert file_row(store, job) == (None, 0, None)


def test_a_content_length_of_21_digits_is_malformed(
    lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer
) -> None:
    """h11 (both transports) refuses a Content-Length longer than 20 digits as malformed:
    a broken response, retried."""
    srv.scripts["/f"] = raw(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nx" % 10**20)
    failure = engine_failure(lean_policy, record(f"{srv.base}/f", tmp_path))
    assert (failure.code, failure.transient) == (_codes.ERROR_WINHTTP_CONNECTION_ERROR, True)


def test_a_content_range_total_over_2_63_on_resume(
    lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer
) -> None:
    srv.scripts["/f"] = raw(
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 4-9/%d\r\n"
        b'Content-Length: 6\r\nETag: "e"\r\n\r\nfghij' % 2**63
    )
    f = record(f"{srv.base}/f", tmp_path, bytes_total=10, etag='"e"')
    Path(f.temp_name).write_bytes(b"abcd")
    failure = engine_failure(lean_policy, f)
    assert (failure.code, failure.transient) == (INVALID, True)
    assert f.bytes_total == 10


@pytest.mark.parametrize(
    "content_range",
    [b"bytes 0-4/%d" % 2**63, b"bytes 0-%d/*" % (2**63 - 1), b"bytes 0-%d/*" % 2**63],
    ids=["total-2^63", "length-2^63", "last-2^63"],
)
def test_a_range_over_2_63_is_refused_before_it_is_stored(
    lean_policy: bitsnb.Policy, tmp_path: Path, srv: ScriptServer, content_range: bytes
) -> None:
    """A range to the end of the file whose answer makes it 2^63 bytes or more: fatal, as BITS
    documents range errors after Resume, and the range stays open in the store."""
    srv.scripts["/f"] = raw(
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: " + content_range + b"\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    store = tmp_path / "jobs.db"
    with bitsnb.Manager(store=store, policy=lean_policy) as mgr:
        job = mgr.create_job("ranges")
        job.add_file_with_ranges(f"{srv.base}/f", str(tmp_path / "f"), [(0, None)])
        before = file_row(store, job)
        job.resume()
        assert job.wait(timeout=TIMEOUT) is JobState.ERROR
        assert job.error is not None and job.error.code == INVALID, job.error
    assert file_row(store, job) == before


# -- the parser ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["0", " 5 ", "9223372036854775807", "007"])
def test_parse_length_takes_ascii_digits_up_to_2_63_minus_1(text: str) -> None:
    assert parse_length(text) == int(text)


@pytest.mark.parametrize("text", ["", "-1", "+1", "1.0", "²", "٣", "9223372036854775808", "1 2"])
def test_parse_length_refuses_the_rest(text: str) -> None:
    with pytest.raises(BadLength):
        parse_length(text)
    assert MAX_LENGTH == 2**63 - 1
