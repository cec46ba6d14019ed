"""The WAN testbed of bench/ (bench/_wan.py, bench/_relay.py): set-up, the path, teardown.

Real parts: two network namespaces, TUN devices, the relay process, nginx in the server
namespace and curl in the client namespace. Skipped when not root, or when ``ip``, TUN or nginx
are missing. Wall-clock figures (the measured round trip) are printed and checked only against
a wide band: a delay line can make a packet later, never earlier, so the lower bound is firm
while the upper one allows a busy machine.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not installed
    sys.path.insert(0, str(REPO))

from bench import _relay, _wan  # noqa: E402

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
_WHY = _wan.unavailable() or (None if NGINX else "nginx is not installed")
needs_testbed = pytest.mark.skipif(_WHY is not None, reason=f"WAN testbed: {_WHY}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_bottleneck_is_a_drop_tail_fifo() -> None:
    """The relay's bottleneck: packets leave one after another at the rate; a full queue drops."""
    link = _relay.Link(
        "down", 0, delay=0.5, rate=1000.0, queue_bytes=2500, loss=0.0, rng=random.Random(1)
    )
    assert link.due(0.0, 1000) == pytest.approx(1.5)  # serialised in 1 s, then the delay
    assert link.due(0.0, 1000) == pytest.approx(2.5)  # behind the first
    assert link.due(0.0, 1000) is None  # 2000 queued + 1000 > 2500: dropped at the tail
    assert link.dropped_queue == 1
    assert link.due(1.5, 1000) == pytest.approx(3.5)  # 1500 left queued: it fits again
    plain = _relay.Link(
        "up", 0, delay=0.025, rate=0.0, queue_bytes=0, loss=0.0, rng=random.Random(1)
    )
    assert plain.due(10.0, 64000) == pytest.approx(10.025)


def test_loss_is_seeded_and_near_its_rate() -> None:
    def drops(seed: int) -> list[bool]:
        link = _relay.Link("down", 0, 0.0, 0.0, 0, loss=0.01, rng=random.Random(seed))
        return [link.due(0.0, 100) is None for _ in range(20000)]

    assert drops(7) == drops(7)
    assert 120 <= sum(drops(7)) <= 280  # 1 % of 20,000, binomial spread


def test_profiles_match_the_issue() -> None:
    p = _wan.PROFILES
    assert [p[n].rtt_ms for n in ("rtt20", "rtt50", "rtt150")] == [20, 50, 150]
    one, four = p["rtt50-100mbit-1bdp"], p["rtt50-100mbit-4bdp"]
    assert one.rate == four.rate == 12.5e6 and one.mtu == 9000
    assert one.queue_bytes == 625_000 and four.queue_bytes == 2_500_000  # 1 and 4 BDP at 50 ms
    assert p["rtt50-loss0.1"].loss == 0.001
    assert p["loopback-cap10"].loopback and p["loopback-cap10"].limit_rate == "10m"
    assert p["rtt50-50MBps-cap10"].rate == 50e6 and p["rtt50-50MBps-cap10"].limit_rate == "10m"


@needs_testbed
def test_a_50ms_path_round_trip_get_and_clean_teardown(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    body = random.Random(3).randbytes(300_000)
    (www / "small.bin").write_bytes(body)
    with _wan.Testbed("rtt50", serve=www, nginx=NGINX, workdir=tmp_path / "tb") as tb:
        names = tb.namespaces
        assert set(names) <= set(_wan.list_namespaces())
        rtts_ms = sorted(1000 * r for r in tb.connect_rtts(5))
        print(f"measured RTT (TCP connect through the relay), ms: {[round(r, 1) for r in rtts_ms]}")
        assert rtts_ms[0] >= 0.9 * 50  # the delay line never delivers early
        assert rtts_ms[len(rtts_ms) // 2] <= 50 + 250  # wide: a busy machine adds, never removes

        before = tb.relay_stats()
        if shutil.which("curl"):
            r = tb.run_client(
                ["curl", "-sS", "--noproxy", "*", tb.server_url("small.bin")], timeout=30
            )
            assert r.returncode == 0, r.stderr
            got = r.stdout
        else:  # the same GET, from a socket opened in the client namespace
            got = _wan.in_namespace(tb.client_ns, lambda: _http_get(tb.server_host, "/small.bin"))
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
        after = tb.relay_stats()
        carried = after["server_to_client"]["bytes"] - before["server_to_client"]["bytes"]
        assert carried >= len(body)  # the body crossed the relay
        assert (
            after["server_to_client"]["dropped_queue"]
            == after["server_to_client"]["dropped_loss"]
            == 0
        )
        # the addresses exist only inside the namespaces
        host = subprocess.run(
            [_wan._ip() or "ip", "-o", "addr"], capture_output=True, timeout=10, check=True
        )
        assert (
            _wan.SERVER_IP not in host.stdout.decode()
            and _wan.CLIENT_IP not in host.stdout.decode()
        )
        assert tb.relay is not None and tb.nginx is not None and tb.nginx.pid is not None
        pids = [tb.relay.pid, tb.nginx.pid]
    assert tb.relay_returncode == 0  # the relay ended on its own when its stdin closed
    assert not _wait_gone(pids)
    assert not set(names) & set(_wan.list_namespaces())


def _http_get(host: str, path: str) -> bytes:
    import socket

    with socket.create_connection((host, 80), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


_HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from bench import _wan
tb = _wan.Testbed("rtt20", serve=Path(sys.argv[2]), nginx=sys.argv[3], workdir=Path(sys.argv[4])).open()
print(tb.relay.pid, tb.nginx.pid, *tb.namespaces, flush=True)
time.sleep(60)
"""


@needs_testbed
def test_a_killed_run_leaves_nothing_running_and_its_namespaces_are_removed(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HOLDER,
            str(REPO),
            str(tmp_path / "www"),
            str(NGINX),
            str(tmp_path / "tb"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline().decode().split()  # bounded by the holder's own sleep
        assert len(line) == 4, holder.stderr.read().decode() if holder.stderr else ""
        relay_pid, nginx_pid, *names = int(line[0]), int(line[1]), *line[2:]
        assert set(names) <= set(_wan.list_namespaces())
    finally:
        holder.send_signal(signal.SIGKILL)  # no finally, no close(): a killed run
        holder.wait(timeout=10)
    assert not _wait_gone([relay_pid, nginx_pid])  # stdin EOF / PR_SET_PDEATHSIG
    removed = _wan.cleanup_leftovers()  # what the next run does first
    assert set(names) <= set(removed)
    assert not set(names) & set(_wan.list_namespaces())
