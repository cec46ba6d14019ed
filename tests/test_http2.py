"""``Policy(http2=True)``: an https server that offers HTTP/2 (nginx, ``ssl http2``, a trustme
certificate) serves a job's files as streams of one connection; without it, HTTP/1.1 opens one
connection per file in flight. nginx's access log numbers each connection."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import trustme

import bitsnb
from bitsnb import JobState

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not installed
    sys.path.insert(0, str(REPO))

from bench._nginx import Nginx, free_port  # noqa: E402

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
pytest.importorskip("h2")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
COUNT = 40


@pytest.fixture
def tls_nginx(tmp_path: Path) -> tuple[Nginx, Path]:
    """nginx on loopback with HTTPS + HTTP/2, serving COUNT small files; (nginx, CA file)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    pem, ca_file = tmp_path / "server.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_file))
    www = tmp_path / "www"
    www.mkdir()
    for i in range(COUNT):
        (www / f"{i}.bin").write_bytes(os.urandom(16 * 1024))
    assert NGINX is not None
    server = Nginx(NGINX, www, tmp_path / "nginx", tls=(pem, pem), tls_port=free_port())
    with server:
        yield server, ca_file


def _connections(server: Nginx, mark: int) -> set[str]:
    with open(server.access_log, "rb") as fh:
        fh.seek(mark)
        return {line.split()[4] for line in fh.read().decode().splitlines()}


@pytest.mark.parametrize("http2", [True, False])
def test_http2_multiplexes_a_jobs_files(
    tls_nginx: tuple[Nginx, Path], store: Path, policy: bitsnb.Policy, tmp_path: Path, http2: bool
) -> None:
    server, ca_file = tls_nginx
    policy.http2 = http2
    policy.verify = str(ca_file)
    dest = tmp_path / "dest"
    dest.mkdir()
    mark = server.log_size()
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("h2")
        job.add_file_set([(server.tls_url(f"{i}.bin"), dest / f"{i}.bin") for i in range(COUNT)])
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    for i in range(COUNT):
        assert (dest / f"{i}.bin").read_bytes() == (server.root / f"{i}.bin").read_bytes()
    conns = _connections(server, mark)
    if http2:
        assert len(conns) == 1  # every file a stream of one connection
    else:
        assert 1 < len(conns) <= policy.files_in_flight
