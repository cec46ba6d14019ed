"""The upload server's security (issue 18, security 5): authentication, session and byte caps,
expiry off the event loop, TLS, and refusing to serve the network without authentication.

Everything runs against the real app: ``UploadServer`` (uvicorn in a thread on 127.0.0.1) or
``python -m bitsnb.server`` as a child process; packets are sent by the small reference client
in ``tests/_support`` or by the product's own upload jobs.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _support.bits_upload_client import BitsUploadClient, error_code, received

import bitsnb
from bitsnb import JobState, JobType

pytest.importorskip("uvicorn")
from bitsnb.server import AuthFile, auth_line, hash_password, verify_password
from bitsnb.testing import UploadServer

TIMEOUT = 10.0
UPLOAD_PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
BG_E_HTTP_ERROR_401 = 0x80190191
BG_E_HTTP_ERROR_503 = 0x801901F7
BG_E_TOO_LARGE = 0x80200020


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def auth_text() -> str:
    """The users file's text: its two scrypt hashes made once for the module (each costs
    tenths of a second by design)."""
    return f"# upload users\n{auth_line('alice', 'wonder land')}\n\n{auth_line('bob', 'builder')}\n"


@pytest.fixture
def auth_file(tmp_path: Path, auth_text: str) -> Path:
    path = tmp_path / "users.txt"
    path.write_text(auth_text, encoding="utf-8")
    return path


def sessions(root: Path) -> list[str]:
    folder = root / ".bits-sessions"
    return sorted(os.listdir(folder)) if folder.exists() else []


def bits(server: UploadServer, name: str, auth: tuple[str, str] | None = None) -> BitsUploadClient:
    return BitsUploadClient(server.url(name), client=httpx.Client(timeout=TIMEOUT, auth=auth))


def create(c: BitsUploadClient) -> httpx.Response:
    return c.post("Create-Session", headers={"BITS-Supported-Protocols": UPLOAD_PROTOCOL})


# -- password hashes and the auth file ----------------------------------------------------------
def test_password_hashes_verify_and_differ_by_salt() -> None:
    one, two = hash_password("s3cret"), hash_password("s3cret")
    assert one != two and one.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret", one) and verify_password("s3cret", two)
    assert not verify_password("s3cret ", one) and not verify_password("", one)


@pytest.mark.parametrize(
    "line",
    [
        "alice",
        "alice:plain-text-password",
        "alice:scrypt$16384$8$1$AAAA",
        "alice:scrypt$3$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,
        ":" + hash_password("x"),
    ],
)
def test_a_malformed_auth_file_stops_the_server_at_start(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"# ok\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        AuthFile(path)


def test_hash_password_helper_prints_a_line_the_auth_file_accepts(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bitsnb.server", "--hash-password", "carol"],
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("carol:scrypt$") and "correct horse" not in line
    path = tmp_path / "users.txt"
    path.write_text(line + "\n", encoding="utf-8")
    users = AuthFile(path)
    assert users.users == {"carol"}
    assert users("carol", "correct horse") and not users("carol", "wrong")
    assert not users("mallory", "correct horse")


# -- HTTP Basic against the running server --------------------------------------------------------
@pytest.fixture
def auth_srv(root: Path, auth_file: Path) -> Iterator[UploadServer]:
    with UploadServer(root, authenticate=AuthFile(auth_file)) as server:
        yield server


@pytest.mark.parametrize(
    "auth", [None, ("alice", "wrong"), ("mallory", "wonder land"), ("alice", "")]
)
def test_without_good_credentials_every_packet_gets_401(
    auth_srv: UploadServer, root: Path, auth: tuple[str, str] | None
) -> None:
    with bits(auth_srv, "x.bin", auth) as c:
        for resp in (c.ping(), create(c)):
            assert resp.status_code == 401
            assert resp.headers["www-authenticate"].startswith('Basic realm="bitsnb upload"')
        got = c.client.get(auth_srv.base_url + "/.bits-sessions/x/reply")
        assert got.status_code == 401
    assert sessions(root) == [] and not (root / "x.bin").exists()


def test_a_malformed_authorization_header_gets_401(auth_srv: UploadServer) -> None:
    for value in ("Basic", "Basic !!!", "Bearer abc", "Basic " + "YWxpY2U="):  # no colon
        resp = httpx.request(
            "BITS_POST",
            auth_srv.url("x.bin"),
            headers={"BITS-Packet-Type": "Ping", "Authorization": value},
            timeout=TIMEOUT,
        )
        assert resp.status_code == 401, value


def test_good_credentials_upload(auth_srv: UploadServer, root: Path) -> None:
    data = os.urandom(200_000)
    with bits(auth_srv, "in/alice.bin", ("alice", "wonder land")) as c:
        assert c.ping().status_code == 200
        result = c.upload(data, fragment_size=64 * 1024)
        assert result.reply_url is not None
        assert c.client.get(result.reply_url).status_code == 200
    assert (root / "in" / "alice.bin").read_bytes() == data


def test_a_failing_authenticate_hook_refuses_instead_of_crashing(root: Path) -> None:
    def broken(user: str, password: str) -> bool:
        raise RuntimeError("directory service down")

    with UploadServer(root, authenticate=broken) as server, bits(server, "x", ("a", "b")) as c:
        assert c.ping().status_code == 401


def test_the_product_client_uploads_with_basic_credentials(
    manager: bitsnb.Manager, auth_srv: UploadServer, tmp_path: Path
) -> None:
    """bitsnb's own upload job, with set_credentials(BASIC), gets through; without, it fails
    with BG_E_HTTP_ERROR_401."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    job = manager.create_job("with-creds", JobType.UPLOAD)
    job.set_credentials(bitsnb.AuthTarget.SERVER, bitsnb.AuthScheme.BASIC, "bob", "builder")
    job.add_file(auth_srv.url("bob.bin"), src)
    job.resume()
    assert job.wait(timeout=30) is JobState.TRANSFERRED
    job.complete()
    assert auth_srv.path("bob.bin").read_bytes() == src.read_bytes()
    bare = manager.create_job("no-creds", JobType.UPLOAD)
    bare.add_file(auth_srv.url("nobody.bin"), src)
    bare.resume()
    assert bare.wait(timeout=30) is JobState.ERROR
    assert bare.get_error().code == BG_E_HTTP_ERROR_401
    assert not auth_srv.path("nobody.bin").exists()


# -- caps -----------------------------------------------------------------------------------------
def assert_busy(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.headers
    assert error_code(resp) == BG_E_HTTP_ERROR_503
    assert int(resp.headers["retry-after"]) > 0


def test_500_sessions_from_one_client_meet_the_default_cap(root: Path) -> None:
    """The issue's probe (3,000 Create-Sessions made 9,000 inodes), at five times the cap:
    with the defaults one client holds at most 100 sessions; the rest are told to come back
    later (503) and leave nothing on disk, the 400th refusal as the first."""
    with UploadServer(root) as server, bits(server, "many.bin") as c:
        statuses = [create(c).status_code for _ in range(500)]
        assert statuses.count(200) == 100 and statuses.count(503) == 400
        assert_busy(create(c))
    assert len(sessions(root)) == 100


def test_the_global_cap_counts_every_client(root: Path, auth_file: Path) -> None:
    users = AuthFile(auth_file)
    with UploadServer(
        root, authenticate=users, max_sessions=3, max_sessions_per_client=None
    ) as server:
        with bits(server, "a.bin", ("alice", "wonder land")) as a:
            assert [create(a).status_code for _ in range(2)] == [200, 200]
            with bits(server, "b.bin", ("bob", "builder")) as b:
                assert b.create_session()
                assert_busy(create(b))
                assert_busy(create(a))
                assert b.cancel_session().status_code == 200  # one ends: room for one more
                assert create(a).status_code == 200
        assert len(sessions(root)) == 3


def test_the_per_client_cap_is_per_user(root: Path, auth_file: Path) -> None:
    with UploadServer(root, authenticate=AuthFile(auth_file), max_sessions_per_client=2) as server:
        with bits(server, "a.bin", ("alice", "wonder land")) as a:
            assert [create(a).status_code for _ in range(3)] == [200, 200, 503]
            with bits(server, "b.bin", ("bob", "builder")) as b:
                assert [create(b).status_code for _ in range(3)] == [200, 200, 503]


def test_the_session_count_survives_a_restart(root: Path) -> None:
    """Sessions are on disk: a restarted server counts the ones it already holds."""
    server = UploadServer(root, max_sessions_per_client=2)
    with server, bits(server, "x.bin") as c:
        assert [create(c).status_code for _ in range(2)] == [200, 200]
    with server, bits(server, "x.bin") as c:
        assert_busy(create(c))


def test_the_bytes_held_cap(root: Path) -> None:
    """Unfinished uploads reserve their declared totals; one that would pass the cap waits
    (503), one larger than the cap alone is refused for good (413)."""
    with UploadServer(root, max_bytes_held=1000, reply=False) as server:
        with bits(server, "a.bin") as a, bits(server, "b.bin") as b:
            a.create_session()
            assert a.fragment(b"x" * 100, 0, 600).status_code == 200
            b.create_session()
            assert_busy(b.fragment(b"y" * 100, 0, 600))
            big = b.fragment(b"y" * 100, 0, 1001)
            assert big.status_code == 413 and error_code(big) == BG_E_TOO_LARGE
            assert b.fragment(b"y" * 100, 0, 400).status_code == 200  # fits beside a
            last = a.fragment(b"x" * 500, 100, 600)  # a completes: its bytes are no longer held
            assert received(last) == 600
            with bits(server, "c.bin") as c:
                c.create_session()
                assert c.fragment(b"z" * 10, 0, 600).status_code == 200
    assert (root / "a.bin").read_bytes() == b"x" * 600


# -- expiry off the event loop ----------------------------------------------------------------
def test_a_fifo_planted_as_session_state_blocks_nothing(root: Path) -> None:
    """A session's state file that is a FIFO nobody writes is refused without being opened
    for reading (which would wait forever): the server keeps answering, expiry goes on, and
    no worker thread is left blocked (the process can exit)."""
    stuck = root / ".bits-sessions" / "00000000-0000-4000-8000-000000000001"
    stuck.mkdir(parents=True)
    fifo = stuck / "state.json"
    os.mkfifo(fifo)
    with UploadServer(root, session_timeout=0.01) as server, bits(server, "x.bin") as c:
        assert c.ping().status_code == 200  # starts a sweep, answered meanwhile
        assert c.ping().status_code == 200
        assert c.client.get(server.base_url + "/nothing").status_code == 404
        assert c.create_session()  # the sweep went on: the session count is known
    stuck_threads = [
        t.name for t in threading.enumerate() if t.name.startswith(("asyncio_", "ThreadPool"))
    ]
    assert not stuck_threads, stuck_threads


# -- TLS and remote binding --------------------------------------------------------------------
def serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bitsnb.server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=20)


def test_tls_with_certfile_and_keyfile(root: Path, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    proc = serve("--root", str(root), "--certfile", str(certfile), "--keyfile", str(keyfile))
    try:
        base = first_line(proc)
        assert base.startswith("https://127.0.0.1:")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with httpx.Client(verify=context, timeout=TIMEOUT) as client:
            c = BitsUploadClient(base + "/tls.bin", client=client)
            c.upload(b"over tls" * 1000)
        assert (root / "tls.bin").read_bytes() == b"over tls" * 1000
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.request("BITS_POST", base + "/x", timeout=TIMEOUT)
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--certfile", "cert.pem"], "go together"),
        (["--keyfile", "key.pem"], "go together"),
        (["--allow-remote"], "--insecure-no-auth"),
        (["--auth-file", "missing.txt"], "--auth-file"),
    ],
)
def test_unsafe_or_broken_options_refuse_to_start(
    root: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bitsnb.server", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def _free_non_loopback_address() -> str | None:
    """An address of this machine other than loopback (for --allow-remote), if any."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize("mode", ["insecure-no-auth", "auth-file"])
def test_allow_remote_starts_with_auth_or_the_explicit_insecure_flag(
    root: Path, auth_file: Path, mode: str
) -> None:
    host = _free_non_loopback_address() or "127.0.0.1"
    extra = (
        ["--insecure-no-auth"] if mode == "insecure-no-auth" else ["--auth-file", str(auth_file)]
    )
    proc = serve("--root", str(root), "--host", host, "--allow-remote", *extra)
    try:
        base = first_line(proc)
        assert base.startswith(f"http://{host}:"), proc.stderr
        resp = httpx.request(
            "BITS_POST", base + "/x", headers={"BITS-Packet-Type": "Ping"}, timeout=TIMEOUT
        )
        assert resp.status_code == (200 if mode == "insecure-no-auth" else 401)
    finally:
        stop(proc)
