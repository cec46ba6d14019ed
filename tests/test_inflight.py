"""Files in flight follow the host's round trip: on loopback a job keeps ``files_in_flight``
requests at once; through a 50 ms path (the WAN testbed: namespaces, a delay relay, nginx) it
opens more, up to ``max_connections_per_host``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from _support.helpers import temp_files

import bitsnb
from bitsnb import JobState
from bitsnb._inflight import LOCAL_WORK, files_in_flight
from bitsnb.testing import FileServer

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not installed
    sys.path.insert(0, str(REPO))

from bench import _wan  # noqa: E402

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
_WHY = _wan.unavailable() or (None if NGINX else "nginx is not installed")


def test_the_rule() -> None:
    assert files_in_flight(4, None, 8) == 4  # not measured yet
    assert files_in_flight(4, 50e-6, 8) == 4  # loopback
    assert files_in_flight(4, LOCAL_WORK, 8) == 4
    assert files_in_flight(4, 0.003, 16) == 7  # 3 ms: three more
    assert files_in_flight(4, 0.05, 8) == 8  # 50 ms: all the host allows
    assert files_in_flight(4, 0.05, 16) == 16
    assert files_in_flight(4, 0.05, 2) == 4  # never fewer than files_in_flight
    assert files_in_flight(0, None, 8) == 1


def test_loopback_keeps_files_in_flight(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A loopback host (round trip of microseconds): never more than files_in_flight at once."""
    policy.files_in_flight = 3
    policy.max_connections_per_host = 16
    urls = [server.add_random_file(f"s/{i}.bin", 16 * 1024, seed=i) for i in range(120)]
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("small")
        job.add_file_set([(u, dest / u.rsplit("/", 1)[-1]) for u in urls])
        job.resume()
        assert job.wait(timeout=60) is JobState.TRANSFERRED, job.error
        job.complete()
    assert 1 <= server.peak_concurrent <= 3
    assert len(list(dest.iterdir())) == 120
    assert temp_files(dest) == []


@pytest.mark.skipif(_WHY is not None, reason=f"WAN testbed: {_WHY}")
def test_a_far_host_gets_more_in_flight(tmp_path: Path) -> None:
    """Through a 50 ms path, one job of 160 small files with the default Policy (4 files in
    flight, 16 connections per host) opens more than 8 connections and at most 16 (nginx's log
    numbers each connection), and every file arrives."""
    www = tmp_path / "www"
    (www / "s").mkdir(parents=True)
    for i in range(160):
        (www / "s" / f"{i}.bin").write_bytes(os.urandom(16 * 1024))
    dest = tmp_path / "dest"
    with _wan.Testbed("rtt50", serve=www, nginx=NGINX, workdir=tmp_path / "tb") as tb:
        assert tb.nginx is not None
        lists = tmp_path / "urls.txt"
        lists.write_text("".join(tb.server_url(f"s/{i}.bin") + "\n" for i in range(160)))
        mark = tb.nginx.log_size()
        done = tb.run_client(
            [sys.executable, "-m", "bench._run_bitsnb", "--url-file", str(lists), str(dest)],
            timeout=120,
            cwd=str(REPO),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        with open(tb.nginx.access_log, "rb") as fh:
            fh.seek(mark)
            lines = fh.read().decode().splitlines()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert "t_complete" in result
    conns = {line.split()[4] for line in lines if line.startswith("/s/")}
    print(f"160 files through 50 ms: {len(conns)} connections")
    assert 8 < len(conns) <= 16
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{i}.bin" for i in range(160))


@pytest.mark.skipif(_WHY is not None, reason=f"WAN testbed: {_WHY}")
def test_a_far_host_that_refuses_more_gets_fewer(tmp_path: Path) -> None:
    """Through a 50 ms path, a slow server that answers 503 beyond 4 requests at once (the
    test server in the server namespace): the job widens (the default allows 16), is refused,
    narrows again and transfers every file without an error; the refused files were fetched
    again, and the refusals stay within what the widening overshot (each one costs a worker)."""
    www = tmp_path / "www"
    names = [f"s/{i}.bin" for i in range(80)]
    (www / "s").mkdir(parents=True)
    for name in names:
        (www / name).write_bytes(os.urandom(16 * 1024))
    server = FileServer(www, host=_wan.SERVER_IP)  # bound in the server namespace below
    server.max_concurrent = 4
    server.connection_rate = 100_000  # each file takes ~0.16 s: the requests overlap there too
    dest = tmp_path / "dest"
    with _wan.Testbed("rtt50", workdir=tmp_path / "tb") as tb:
        _wan.in_namespace(tb.server_ns, server.start)  # its sockets live in the server's side
        try:
            urls = tmp_path / "urls.txt"
            urls.write_text("".join(server.url(n) + "\n" for n in names))
            done = tb.run_client(
                [sys.executable, "-m", "bench._run_bitsnb", "--url-file", str(urls), str(dest)],
                timeout=120,
                cwd=str(REPO),
            )
        finally:
            server.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result["states"] == {"TRANSFERRED": 1}
    refused = [r.path for r in server.requests if r.status == 503]
    print(f"refused {len(refused)} requests; server's live peak {server.peak_concurrent}")
    assert refused, "the run never went past the server's 4"
    assert len(refused) <= 16 - 4 + 4  # the overshoot, and the ones already sent meanwhile
    fetched = {r.path for r in server.requests if r.status == 200}
    assert set(refused) <= fetched  # each refused file came again
    assert sorted(p.name for p in dest.rglob("*.bin")) == sorted(n.split("/")[1] for n in names)
