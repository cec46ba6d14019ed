"""Safe defaults: redirects (limit, no scheme changes, no credentials to another host), secrets
kept out of the store, logs, reprs, frames and panels, TLS verified by default, disk full then
resume, idle jobs scavenged and finished jobs pruned.

Real servers only: ``FileServer`` for files, and below a tiny stdlib HTTP(S) "origin" that
answers redirects and fixed bodies and logs each request's headers (plain or TLS with a local
CA from ``trustme``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import sqlite3
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from _support.helpers import temp_files, wait_state, wait_until

import bitsnb
from bitsnb import AuthScheme, AuthTarget, ErrorContext, JobState
from bitsnb.testing import Fault, FileServer

KIB, MIB = 1024, 1024 * 1024
TIMEOUT = 15.0
REDIRECT_FAILED = 0x80072F7C  # ERROR_WINHTTP_REDIRECT_FAILED
SECURE_FAILURE = 0x80072F8F  # ERROR_WINHTTP_SECURE_FAILURE
DISK_FULL = 0x80070070  # ERROR_DISK_FULL

USER = "alice-user"
PASSWORD = "pa55-W0RD-never-stored-7731"
TOKEN = "tok3n-bearer-secret-5150"


# -- a tiny origin server: fixed bodies, redirects, logged headers ---------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _OriginHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        origin = self.server.origin
        path = self.path.split("?", 1)[0]
        with origin.lock:
            origin.log.append((path, dict(self.headers.items())))
        route = origin.routes.get(path)
        if route is None:
            self._reply(404, [], b"not found\n")
        elif isinstance(route, bytes):
            etag = '"' + hashlib.sha256(route).hexdigest()[:16] + '"'
            self._reply(200, [("ETag", etag), ("Accept-Ranges", "none")], route)
        else:
            self._reply(route[0], [("Location", route[1])], b"moved\n")

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _OriginHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, origin: Origin, host: str, tls: ssl.SSLContext | None) -> None:
        self.origin = origin
        self.tls = tls
        super().__init__((host, 0), _Handler)

    def server_bind(self) -> None:
        # no getfqdn() reverse lookup
        import socketserver

        socketserver.TCPServer.server_bind(self)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the handler thread; a refused handshake is counted, not raised."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            with self.origin.lock:
                self.origin.handshake_failures += 1
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up are not errors here."""


class Origin:
    """An HTTP (or HTTPS with *tls*) server on *host*: ``add`` a body, ``redirect`` a path."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.lock = threading.Lock()
        self.routes: dict[str, bytes | tuple[int, str]] = {}
        self.log: list[tuple[str, dict[str, str]]] = []
        self.handshake_failures = 0
        self._httpd = _OriginHTTPServer(self, host, tls)
        scheme = "https" if tls is not None else "http"
        self.base_url = f"{scheme}://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def add(self, path: str, body: bytes) -> str:
        """Serve *body* at *path*; returns its URL."""
        self.routes[path] = body
        return self.base_url + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        """Answer *path* with a redirect to *location*; returns the URL of *path*."""
        self.routes[path] = (status, location)
        return self.base_url + path

    def requests(self) -> list[tuple[str, dict[str, str]]]:
        """(path, headers) of every request so far."""
        with self.lock:
            return list(self.log)

    def close(self) -> None:
        """Stop serving (bounded)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def origin() -> Iterator[Origin]:
    """A plain HTTP origin on 127.0.0.1."""
    o = Origin()
    yield o
    o.close()


@pytest.fixture
def other_host() -> Iterator[FileServer]:
    """A FileServer on 127.0.0.2: loopback too, but another host than 127.0.0.1."""
    with FileServer(host="127.0.0.2") as srv:
        yield srv


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A local certificate authority (never trusted by default)."""
    return trustme.CA()


@pytest.fixture
def tls_origin(ca: trustme.CA) -> Iterator[Origin]:
    """An HTTPS origin on 127.0.0.1 with a certificate from the local CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    o = Origin(tls=ctx)
    yield o
    o.close()


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def _download(mgr: bitsnb.Manager, url: str, local: Path, name: str = "safe") -> bitsnb.Job:
    job = mgr.create_job(name)
    job.minimum_retry_delay = 0.05
    job.add_file(url, local)
    job.resume()
    job.wait(timeout=TIMEOUT)
    return job


def _assert_error(job: bitsnb.Job, code: int, context: ErrorContext | None = None) -> None:
    assert job.state is JobState.ERROR, (job.state, job.error)
    err = job.error
    assert err is not None and err.code == code, str(err)
    if context is not None:
        assert err.context is context, str(err)


# -- defaults -------------------------------------------------------------------------------------
def test_policy_defaults_are_the_safe_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of the box: TLS verified, a redirect limit, no downgrade, BITS's 90-day lifetime,
    a bounded history, and scavenging that actually runs."""
    monkeypatch.delenv("BITSNB_MIN_RETRY_DELAY_FLOOR", raising=False)
    p = bitsnb.Policy()
    assert p.verify is True
    assert 0 < p.max_redirects <= 10
    assert p.allow_https_to_http is False
    assert p.job_lifetime == 90 * 86400
    assert 0 < p.history_retention < float("inf")
    assert 0 < p.scavenge_interval <= 3600
    assert p.min_retry_delay_floor == 5.0


# -- redirects ------------------------------------------------------------------------------------
def test_redirects_are_followed_up_to_the_limit(
    store: Path, policy: bitsnb.Policy, server: FileServer, origin: Origin, dest: Path
) -> None:
    """max_redirects=3: a chain of 3 redirects delivers the file; a chain of 4 is a fatal
    ERROR_WINHTTP_REDIRECT_FAILED, not retried."""
    data = os.urandom(20 * KIB)
    target = server.add_file("target.bin", data)
    origin.redirect("/a1", target, 301)
    origin.redirect("/a2", origin.base_url + "/a1", 307)
    ok_url = origin.redirect("/a3", origin.base_url + "/a2", 302)
    too_far = origin.redirect("/a4", ok_url, 308)
    policy.max_redirects = 3
    with bitsnb.Manager(store, policy=policy) as mgr:
        job = _download(mgr, ok_url, dest / "ok.bin", "three hops")
        assert job.state is JobState.TRANSFERRED, job.error
        job.complete()
        assert (dest / "ok.bin").read_bytes() == data

        job = _download(mgr, too_far, dest / "far.bin", "four hops")
        _assert_error(job, REDIRECT_FAILED, ErrorContext.REMOTE_FILE)
        assert job.error_count == 1  # fatal at once: no TRANSIENT_ERROR round
        job.cancel()
    assert not (dest / "far.bin").exists() and temp_files(dest) == []


def test_redirect_to_ftp_is_refused(manager: bitsnb.Manager, origin: Origin, dest: Path) -> None:
    """Only http and https are transferred, also after a redirect."""
    url = origin.redirect("/to-ftp", "ftp://127.0.0.1/file.bin")
    job = _download(manager, url, dest / "ftp.bin")
    _assert_error(job, REDIRECT_FAILED)
    assert "ftp" in (job.error.message if job.error else "")


def test_redirect_https_to_http_is_refused_by_default(
    store: Path,
    policy: bitsnb.Policy,
    server: FileServer,
    tls_origin: Origin,
    ca: trustme.CA,
    dest: Path,
) -> None:
    """A downgrade from https to http fails the job and never reaches the http server."""
    target = server.add_random_file("down.bin", 4 * KIB)
    url = tls_origin.redirect("/down", target)
    policy.verify = _trusting(ca)
    with bitsnb.Manager(store, policy=policy) as mgr:
        job = _download(mgr, url, dest / "down.bin")
        _assert_error(job, REDIRECT_FAILED)
        message = job.error.message if job.error else ""
        assert "https" in message and "http" in message, message
    assert [p for p, _ in tls_origin.requests()] == ["/down"]
    assert server.requests == []


def test_redirect_https_to_http_when_the_policy_allows_it(
    store: Path,
    policy: bitsnb.Policy,
    server: FileServer,
    tls_origin: Origin,
    ca: trustme.CA,
    dest: Path,
) -> None:
    """``Policy(allow_https_to_http=True)`` follows the downgrade."""
    data = os.urandom(8 * KIB)
    url = tls_origin.redirect("/down", server.add_file("down.bin", data))
    policy.verify = _trusting(ca)
    policy.allow_https_to_http = True
    with bitsnb.Manager(store, policy=policy) as mgr:
        job = _download(mgr, url, dest / "down.bin")
        assert job.state is JobState.TRANSFERRED, job.error
        job.complete()
    assert (dest / "down.bin").read_bytes() == data


def test_redirect_http_to_https_is_followed(
    store: Path,
    policy: bitsnb.Policy,
    origin: Origin,
    tls_origin: Origin,
    ca: trustme.CA,
    dest: Path,
) -> None:
    """An upgrade from http to https is fine (and verified)."""
    data = os.urandom(3 * KIB)
    url = origin.redirect("/up", tls_origin.add("/up.bin", data))
    policy.verify = _trusting(ca)
    with bitsnb.Manager(store, policy=policy) as mgr:
        job = _download(mgr, url, dest / "up.bin")
        assert job.state is JobState.TRANSFERRED, job.error
        job.complete()
    assert (dest / "up.bin").read_bytes() == data


@pytest.mark.parametrize(
    "how",
    [
        "set_credentials",
        "custom Authorization header",
        "custom Proxy-Authorization header",
    ],
)
def test_credentials_are_not_sent_to_another_host(
    manager: bitsnb.Manager, origin: Origin, other_host: FileServer, dest: Path, how: str
) -> None:
    """127.0.0.1 redirects to 127.0.0.2: the first host gets the credentials, the second not."""
    expected: str | None
    data = os.urandom(5 * KIB)
    url = origin.redirect("/moved", other_host.add_file("elsewhere.bin", data))
    job = manager.create_job("cross-host")
    header = "Authorization"
    if how == "set_credentials":
        job.set_credentials(AuthTarget.SERVER, AuthScheme.BASIC, USER, PASSWORD)
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    elif how == "custom Authorization header":
        expected = f"Bearer {TOKEN}"
        job.set_custom_headers({header: expected, "X-Visible": "yes"})
    else:
        # Proxy-Authorization belongs to a proxy: with none set, no origin ever gets it
        header = "Proxy-Authorization"
        job.set_custom_headers({header: f"Basic {TOKEN}", "X-Visible": "yes"})
        expected = None
    job.add_file(url, dest / "elsewhere.bin")
    job.resume()
    assert job.wait(timeout=TIMEOUT) is JobState.TRANSFERRED, job.error
    job.complete()
    assert (dest / "elsewhere.bin").read_bytes() == data
    ((path, first),) = origin.requests()
    assert path == "/moved" and first.get(header) == expected
    gets = [r for r in other_host.requests if r.method == "GET"]
    assert gets, "the second host was never asked"
    for rec in gets:
        lowered = {k.lower(): v for k, v in rec.headers.items()}
        assert "authorization" not in lowered and "proxy-authorization" not in lowered, lowered
        assert PASSWORD not in str(rec.headers) and TOKEN not in str(rec.headers)
        if how != "set_credentials":
            assert lowered.get("x-visible") == "yes"  # the harmless header does follow


# -- secrets never stored, logged or shown ---------------------------------------------------------
def _secret_forms() -> list[str]:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return [PASSWORD, TOKEN, basic, "cookie-val-4242"]


def _store_bytes(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in store.parent.glob(store.name + "*")}


def _widget_text(root: Any) -> str:
    parts: list[str] = [repr(root)]
    stack = [root]
    while stack:
        w = stack.pop()
        for attr in (
            "value",
            "description",
            "tooltip",
            "placeholder",
            "options",
            "_options_labels",
        ):
            value = getattr(w, attr, None)
            if value is not None:
                parts.append(str(value))
        stack.extend(getattr(w, "children", ()))
    return "\n".join(parts)


def test_secrets_are_never_stored_logged_or_shown(
    store: Path,
    policy: bitsnb.Policy,
    server: FileServer,
    dest: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Credentials and secret headers reach the server, and nothing else: not the SQLite file
    (nor its -wal/-shm), not a log record at any level, not a repr, frame or panel."""
    from bitsnb.frames import files_to_frame, jobs_to_frame
    from bitsnb.notebook import job_panel, queue_panel
    from bitsnb.notebook._commlog import counting_comms

    caplog.set_level(logging.DEBUG)
    url = server.add_random_file("secret.bin", 256 * KIB)
    fail_url = server.add_random_file("denied.bin", 1 * KIB)
    server.inject("denied.bin", Fault.status(401, times=-1))
    with bitsnb.Manager(store, policy=policy) as mgr:
        jobs = []
        for name, remote in (("secret", url), ("denied", fail_url)):
            job = mgr.create_job(name, description="has secrets")
            job.minimum_retry_delay = 0.05
            job.set_credentials(AuthTarget.SERVER, AuthScheme.BASIC, USER, PASSWORD)
            job.set_credentials(AuthTarget.PROXY, AuthScheme.BASIC, USER, PASSWORD)
            job.set_custom_headers(
                f"X-Api: public\r\nAuthorization: Bearer {TOKEN}\r\nCookie: s=cookie-val-4242"
            )
            job.add_file(remote, dest / f"{name}.bin")
            job.resume()
            jobs.append(job)
        ok, denied = jobs
        assert ok.wait(timeout=TIMEOUT) is JobState.TRANSFERRED, ok.error
        assert denied.wait(timeout=TIMEOUT) is JobState.ERROR
        # the server saw them (they were really in use)
        got = [r.headers for r in server.requests if r.path == "secret.bin"]
        assert any(TOKEN in str(h) or PASSWORD in str(h) or "Basic" in str(h) for h in got)

        assert "<hidden>" in str(ok.custom_headers)
        shown = [
            repr(ok),
            repr(ok.async_job),
            repr(mgr),
            str(ok.files),
            str(ok.custom_headers),
            str(denied.error),
            repr(denied.error),
            repr(mgr.enum_jobs()),
            jobs_to_frame(list(mgr.enum_jobs())).to_csv(),
            files_to_frame(ok).to_csv(),
            mgr.enum_jobs().to_frame().to_string(),
        ]
        with counting_comms():
            panels: list[Any] = [job_panel(ok), job_panel(denied), queue_panel(mgr)]
            for panel in panels:
                try:
                    # let the pump render the current state once
                    wait_until(lambda: panel.renders > 0, TIMEOUT, "a panel render")  # noqa: B023
                    shown.append(_widget_text(panel))
                finally:
                    panel.close()
        ok.complete()
        denied.cancel()
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # logs were captured
    shown.extend(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    shown.extend(f"{name}: {blob!r}" for name, blob in _store_bytes(store).items())
    text = "\n".join(shown)
    assert "X-Api: public" in text  # the public header is kept and shown
    for secret in _secret_forms():
        assert secret not in text, f"{secret!r} leaked"


def test_store_and_wal_hold_no_secret_bytes(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """The raw bytes of jobs.db, jobs.db-wal and jobs.db-shm, checked while the manager is open
    (WAL not yet checkpointed) and after it closed."""
    url = server.add_random_file("w.bin", 4 * KIB)
    mgr = bitsnb.Manager(store, policy=policy)
    try:
        job = mgr.create_job("wal")
        job.set_credentials(AuthTarget.SERVER, AuthScheme.DIGEST, USER, PASSWORD)
        job.set_custom_headers({"Authorization": f"Bearer {TOKEN}"})
        job.add_file(url, dest / "w.bin")
        job.description = "written after the secrets were set"
        job.resume()
        assert job.wait(timeout=TIMEOUT) is JobState.TRANSFERRED, job.error
        open_files = _store_bytes(store)
        assert any(n.endswith("-wal") for n in open_files)
    finally:
        mgr.close()
    for blobs in (open_files, _store_bytes(store)):
        for name, blob in blobs.items():
            for secret in (PASSWORD, TOKEN, USER):
                assert secret.encode() not in blob, f"{secret!r} in {name}"
                assert secret.encode("utf-16-le") not in blob, f"{secret!r} in {name}"


# -- TLS ------------------------------------------------------------------------------------------
def test_tls_is_verified_by_default(
    manager: bitsnb.Manager, tls_origin: Origin, dest: Path
) -> None:
    """A certificate from a CA nobody trusts: fatal ERROR_WINHTTP_SECURE_FAILURE that says
    what is wrong, and no request reaches the server."""
    url = tls_origin.add("/tls.bin", os.urandom(2 * KIB))
    job = _download(manager, url, dest / "tls.bin")
    _assert_error(job, SECURE_FAILURE, ErrorContext.GENERAL_TRANSPORT)
    assert job.error_count == 1
    message = (job.error.message if job.error else "").lower()
    assert "certificate" in message and "verif" in message, message
    assert tls_origin.requests() == []
    wait_until(lambda: tls_origin.handshake_failures >= 1, TIMEOUT, "a refused handshake")
    assert not (dest / "tls.bin").exists()


@pytest.mark.parametrize("verify", ["context", "ca-file"])
def test_tls_with_a_trusted_ca(
    store: Path,
    policy: bitsnb.Policy,
    tls_origin: Origin,
    ca: trustme.CA,
    dest: Path,
    tmp_path: Path,
    verify: str,
) -> None:
    """Trusting the local CA (an SSLContext, or a CA file path) makes the download succeed."""
    data = os.urandom(30 * KIB)
    url = tls_origin.add("/tls.bin", data)
    if verify == "context":
        policy.verify = _trusting(ca)
    else:
        pem = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(pem))
        policy.verify = str(pem)
    with bitsnb.Manager(store, policy=policy) as mgr:
        job = _download(mgr, url, dest / "tls.bin")
        assert job.state is JobState.TRANSFERRED, job.error
        job.complete()
    assert (dest / "tls.bin").read_bytes() == data


# -- disk full ------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (skipped where mounting is not permitted); unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        result = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_disk_full_then_resume_from_the_partial_data(
    manager: bitsnb.Manager, server: FileServer, small_disk: Path
) -> None:
    """A download bigger than the free space: ERROR_DISK_FULL (LOCAL_FILE), the partial data
    stays; after space is freed, resume() continues with a Range request, byte-exact."""
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1 * MIB))
    size = 2 * MIB
    url = server.add_random_file("big.bin", size, seed=3)
    local = small_disk / "big.bin"
    job = manager.create_job("disk full")
    job.minimum_retry_delay = 0.05
    job.add_file(url, local)
    job.resume()
    assert job.wait(timeout=TIMEOUT) is JobState.ERROR
    err = job.error
    assert err is not None and err.code == DISK_FULL, str(err)
    assert err.context is ErrorContext.LOCAL_FILE
    assert err.file is not None and err.file.local_name == str(local)
    (temp,) = temp_files(small_disk)
    partial = (small_disk / temp).stat().st_size
    assert 0 < partial < size
    assert job.progress.bytes_transferred > 0

    filler.unlink()
    server.reset_log()
    job.resume()
    assert job.wait(timeout=TIMEOUT) is JobState.TRANSFERRED, job.error
    gets = [r for r in server.requests if r.method == "GET"]
    assert gets and gets[0].range == f"bytes={partial}-", [r.range for r in gets]
    assert gets[0].status == 206
    assert server.bytes_sent() == size - partial
    job.complete()
    assert local.read_bytes() == server.path("big.bin").read_bytes()
    assert temp_files(small_disk) == []


# -- scavenging and history -------------------------------------------------------------------------
def _store_count(store: Path, table: str, where: str = "") -> int:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0])
    finally:
        db.close()


def _store_state(store: Path, job_id: uuid.UUID) -> JobState | None:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT state FROM jobs WHERE id=?", (str(job_id),)).fetchone()
        return None if row is None else JobState(row[0])
    finally:
        db.close()


def test_idle_jobs_are_scavenged_and_their_temp_files_removed(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Past ``job_lifetime`` without a modification a job is CANCELLED by housekeeping and its
    temporary files deleted; a job that keeps being modified stays."""
    policy.job_lifetime = 2.0
    policy.scavenge_interval = 0.1
    policy.history_retention = 3600
    url = server.add_random_file("idle.bin", 512 * KIB)
    server.inject("idle.bin", Fault.drop_after(100 * KIB))
    with bitsnb.Manager(store, policy=policy) as mgr:
        idle = mgr.create_job("idle")
        idle.no_progress_timeout = 0  # the first error is fatal: ERROR with partial data
        idle.add_file(url, dest / "idle.bin")
        idle.resume()
        assert idle.wait(timeout=TIMEOUT) is JobState.ERROR
        assert len(temp_files(dest)) == 1
        busy = mgr.create_job("busy")
        busy.add_file(server.add_file("busy.bin", b"x"), dest / "busy.bin")

        deadline = time.monotonic() + TIMEOUT
        while _store_state(store, idle.id) is not JobState.CANCELLED:
            assert time.monotonic() < deadline, "the idle job was not scavenged"
            busy.description = f"touched at {time.monotonic()}"  # a modification
            time.sleep(0.1)
        assert idle.state is JobState.CANCELLED
        assert temp_files(dest) == [] and not (dest / "idle.bin").exists()
        assert busy.state is JobState.SUSPENDED
        with pytest.raises(bitsnb.BitsError) as info:
            mgr.get_job(idle.id)
        assert info.value.code == 0x80200001  # BG_E_NOT_FOUND


def test_finished_jobs_are_pruned_so_the_store_stays_bounded(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """ACKNOWLEDGED and CANCELLED jobs are history for ``history_retention`` seconds, then their
    rows (and file rows) go: five rounds of ten jobs never leave more than one round's rows."""
    policy.history_retention = 0.5
    policy.scavenge_interval = 0.1
    url = server.add_file("h.bin", b"history")
    with bitsnb.Manager(store, policy=policy) as mgr:
        for rnd in range(5):
            made = []
            for i in range(10):
                job = mgr.create_job(f"h{rnd}-{i}")
                job.add_file(url, dest / f"h{rnd}-{i}.bin")
                if i % 2:
                    job.cancel()
                else:
                    job.resume()
                    assert job.wait(timeout=TIMEOUT) is JobState.TRANSFERRED
                    job.complete()
                made.append(job)
            assert _store_count(store, "jobs") <= 10  # the earlier rounds are gone
            wait_until(lambda: _store_count(store, "jobs") == 0, TIMEOUT, "history pruned")
            assert _store_count(store, "files") == 0
            assert len(mgr.enum_jobs(include_finished=True)) == 0
            for job in made:
                wait_state(job, JobState.ACKNOWLEDGED, JobState.CANCELLED)
        assert temp_files(dest) == []
    with contextlib.closing(sqlite3.connect(store)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
