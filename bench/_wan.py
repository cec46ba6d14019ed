"""The WAN testbed: two network namespaces joined by a delay line, with nginx on the far side.

``Testbed(profile)`` (a context manager) creates a client and a server namespace (names start with
``bnbwan-<pid>-``), starts ``bench/_relay.py``, which opens a TUN device in each and carries the
packets between them after the profile's one-way delay (and through its bottleneck, loss), gives
the devices addresses that exist only inside the namespaces (client 10.77.0.1, server 10.77.0.2,
point to point), tunes the server's TCP (congestion control, ``tcp_wmem`` max 32 MiB) and, when
given a folder to serve, starts nginx in the server namespace. Clients run in the client
namespace (``tb.run_client(argv)``, or ``tb.client_argv(argv)`` for your own runner).

The loopback profile has no relay: one namespace, nginx on its 127.0.0.1, clients beside it.

Bounded and cleaned up: every ``ip`` call and wait has a timeout; ``close()`` (``__exit__``)
stops nginx and the relay, kills whatever still runs in the namespaces and deletes them; the
relay also exits when this process dies (its stdin closes; it has PR_SET_PDEATHSIG too) and after
``max_seconds``. At start, namespaces left by a killed run (prefix ``bnbwan-``, creator pid no
longer alive) are removed with their processes. Root only: ``unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from ._nginx import Nginx, _die_with_parent

__all__ = [
    "PREFIX",
    "PROFILES",
    "Profile",
    "Testbed",
    "TestbedError",
    "cleanup_leftovers",
    "unavailable",
]

PREFIX = "bnbwan-"
CLIENT_IP = "10.77.0.1"
SERVER_IP = "10.77.0.2"
DEV = "bnbw0"
RELAY = Path(__file__).resolve().parent / "_relay.py"
MiB = 1 << 20
WMEM_MAX = 32 * MiB
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    """One network path: round trip, bottleneck, loss, per-connection cap, server's TCP."""

    name: str
    rtt_ms: float  # 0: loopback, no relay
    mtu: int = 64000
    rate: float = 0.0  # bottleneck, bytes/s (0: none)
    queue_bdp: float = 0.0  # bottleneck queue, in bandwidth-delay products
    loss: float = 0.0  # fraction of packets dropped at random, each direction
    limit_rate: str | None = None  # nginx limit_rate per connection ("10m": 10 MiB/s)
    server_cc: str = "bbr"  # the namespace may pick reno or bbr
    seed: int = 1

    @property
    def loopback(self) -> bool:
        """No relay: client and server share one namespace's loopback."""
        return self.rtt_ms <= 0

    @property
    def queue_bytes(self) -> int:
        """The bottleneck's drop-tail queue in bytes (at least two packets)."""
        if not self.rate:
            return 0
        return max(2 * self.mtu, int(self.queue_bdp * self.rate * self.rtt_ms / 1000.0))

    def describe(self) -> str:
        """One line for tables: what this path is."""
        if self.loopback:
            parts = ["loopback (one namespace, no relay)"]
        else:
            parts = [f"RTT {self.rtt_ms:g} ms", f"MTU {self.mtu}"]
        if self.rate:
            parts.append(
                f"bottleneck {self.rate * 8 / 1e6:g} Mbit/s ({self.rate / 1e6:g} MB/s), drop-tail"
                f" queue {self.queue_bdp:g} BDP = {self.queue_bytes / 1e6:.2f} MB"
            )
        if self.loss:
            parts.append(f"random loss {100 * self.loss:g} % each way (seed {self.seed})")
        if self.limit_rate:
            parts.append(f"nginx limit_rate {self.limit_rate} per connection")
        parts.append(f"server congestion control {self.server_cc}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, with the derived queue size."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["queue_bytes"] = self.queue_bytes
        out["describe"] = self.describe()
        return out


_M = 1e6
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("rtt20", 20),
        Profile("rtt50", 50),
        Profile("rtt150", 150),
        Profile("rtt50-100mbit-1bdp", 50, 9000, 12.5 * _M, 1.0, server_cc="reno"),
        Profile("rtt50-100mbit-4bdp", 50, 9000, 12.5 * _M, 4.0, server_cc="reno"),
        Profile("rtt50-loss0.1", 50, loss=0.001, server_cc="reno"),
        Profile("loopback-cap10", 0, limit_rate="10m"),
        Profile("rtt50-cap10", 50, limit_rate="10m"),
        Profile("rtt50-50MBps-cap10", 50, 9000, 50 * _M, 1.0, limit_rate="10m", server_cc="reno"),
    )
}
"""The profiles of issue 13 (``--wan-profiles`` picks among these names)."""


class TestbedError(RuntimeError):
    """The testbed could not be set up."""


def _ip() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )


def unavailable() -> str | None:
    """Why the testbed cannot run here (not root, no ``ip``, no TUN), or None if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the WAN testbed needs root (network namespaces, TUN devices)"
    if sys.platform != "linux":
        return "the WAN testbed needs Linux"
    if _ip() is None:
        return "the WAN testbed needs `ip` (Debian package iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "the WAN testbed needs /dev/net/tun (TUN devices)"
    return None


def _run_ip(*args: str, timeout: float = 15.0, check: bool = True) -> str:
    ip = _ip()
    if ip is None:
        raise TestbedError("`ip` (iproute2) not found")
    try:
        p = subprocess.run(
            [ip, *args], capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"ip {' '.join(args)} timed out after {timeout} s") from exc
    if check and p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip()
        raise TestbedError(f"ip {' '.join(args)} failed ({p.returncode}): {err}")
    return p.stdout.decode("utf-8", "replace")


def list_namespaces() -> list[str]:
    """Names of the network namespaces ``ip netns`` knows (``/run/netns``)."""
    out = _run_ip("netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_in_namespace(name: str) -> list[int]:
    """SIGKILL every process in namespace *name*; the pids that were there."""
    pids = [int(x) for x in _run_ip("netns", "pids", name, check=False).split() if x.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.02)
    return pids


def _delete_namespace(name: str) -> None:
    _kill_in_namespace(name)
    _run_ip("netns", "del", name, check=False)


def cleanup_leftovers(log: Callable[[str], None] | None = None) -> list[str]:
    """Delete namespaces of earlier runs whose creator died (with their processes); their names.

    Names are ``bnbwan-<creator pid>-<n>-<role>``: one whose creator still lives belongs to a
    run going on now (another engineer's, say) and is left alone.
    """
    removed: list[str] = []
    for name in list_namespaces():
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and _pid_alive(int(owner)):
            continue  # a run going on now (this process's other testbeds included)
        _delete_namespace(name)
        removed.append(name)
        if log:
            log(f"removed a leftover namespace of a killed run: {name}")
    return removed


def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_namespace(name: str, fn: Callable[[], T], timeout: float = 60.0) -> T:
    """Run *fn* in a new thread that entered network namespace *name*; its result.

    A network namespace belongs to a thread, so this process stays where it is; sockets made
    by *fn* live in *name*.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _setns(name)
            box["value"] = fn()
        except BaseException as exc:  # carried to the caller
            box["error"] = exc

    th = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise TimeoutError(f"work in namespace {name} did not finish in {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


_SEQ = [0]


class Testbed:
    """A profile's network, set up on ``__enter__`` (or ``open()``) and torn down on exit.

    *serve*: a folder nginx serves from the server namespace (None: no nginx). *nginx*: its
    binary (default: found on PATH or in /usr/sbin). *max_seconds* bounds the relay's life.
    """

    def __init__(
        self,
        profile: Profile | str,
        *,
        serve: Path | None = None,
        nginx: str | None = None,
        workdir: Path | None = None,
        max_seconds: float = 3 * 3600.0,
        log: Callable[[str], None] | None = None,
        tls: bool = False,
    ) -> None:
        self.tls = tls  # nginx also serves HTTPS + HTTP/2 on 443, a self-signed certificate
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.serve = serve
        self.nginx_binary = nginx
        self.max_seconds = max_seconds
        self.log = log or (lambda _text: None)
        _SEQ[0] += 1
        tag = f"{PREFIX}{os.getpid()}-{_SEQ[0]}"
        self.server_ns = f"{tag}-s"
        self.client_ns = self.server_ns if self.profile.loopback else f"{tag}-c"
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="bnbwan-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.relay_stats_path = self.workdir / "relay-stats.json"
        self.relay: subprocess.Popen[bytes] | None = None
        self.nginx: Nginx | None = None
        self._created: list[str] = []
        self._relay_err: Any = None
        self.relay_returncode: int | None = None  # 0: the relay exited on its own at close()

    # -- addresses ---------------------------------------------------------------------------
    @property
    def server_host(self) -> str:
        """The address clients use for the server."""
        return "127.0.0.1" if self.profile.loopback else SERVER_IP

    @property
    def namespaces(self) -> list[str]:
        """The namespaces this testbed made (and deletes)."""
        return list(dict.fromkeys([self.client_ns, self.server_ns]))

    def server_url(self, path: str) -> str:
        """URL of *path* under the served folder, as a client in the client namespace sees it."""
        if self.nginx is None:
            raise TestbedError("no nginx: pass serve=FOLDER to Testbed")
        return self.nginx.url(path)

    def client_argv(self, argv: Sequence[str]) -> list[str]:
        """*argv* made to run in the client namespace (``ip netns exec``, which execs, no fork)."""
        return [_ip() or "ip", "netns", "exec", self.client_ns, *argv]

    def server_argv(self, argv: Sequence[str]) -> list[str]:
        """*argv* made to run in the server namespace."""
        return [_ip() or "ip", "netns", "exec", self.server_ns, *argv]

    def run_client(
        self, argv: Sequence[str], *, timeout: float = 60.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run *argv* in the client namespace to its end (killed after *timeout*), output captured."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.client_argv(argv), timeout=timeout, check=False, **kwargs)

    # -- set-up ------------------------------------------------------------------------------
    def open(self) -> Self:
        """Create everything; on failure, remove what was made and raise TestbedError."""
        why = unavailable()
        if why:
            raise TestbedError(why)
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self) -> None:
        cleanup_leftovers(self.log)
        p = self.profile
        for ns in self.namespaces:
            _run_ip("netns", "add", ns)
            self._created.append(ns)
            _run_ip("-n", ns, "link", "set", "lo", "up")
        # the server: a congestion control the profile names, send buffers that can grow to
        # 32 MiB (CDN-like; the default 4 MiB caps every client at ~80 MB/s at 50 ms), and no
        # TCP metrics cache, so one sample's ssthresh does not carry over to the next
        self._sysctl(
            self.server_ns,
            f"net.ipv4.tcp_congestion_control={p.server_cc}",
            f"net.ipv4.tcp_wmem=4096 16384 {WMEM_MAX}",
            f"net.ipv4.tcp_rmem=4096 131072 {WMEM_MAX}",
            "net.ipv4.tcp_no_metrics_save=1",
        )
        if not p.loopback:
            self._sysctl(
                self.client_ns,
                f"net.ipv4.tcp_rmem=4096 131072 {WMEM_MAX}",
                "net.ipv4.tcp_no_metrics_save=1",
            )
            self._start_relay()
            for ns, here, there in (
                (self.client_ns, CLIENT_IP, SERVER_IP),
                (self.server_ns, SERVER_IP, CLIENT_IP),
            ):
                _run_ip("-n", ns, "addr", "add", here, "peer", there, "dev", DEV)
                _run_ip("-n", ns, "link", "set", DEV, "mtu", str(p.mtu), "txqueuelen", "1000")
                _run_ip("-n", ns, "link", "set", DEV, "up")
        if self.serve is not None:
            self._start_nginx()
        self.log(f"testbed {p.name} up: {p.describe()} (namespaces {', '.join(self.namespaces)})")

    def _sysctl(self, ns: str, *settings: str) -> None:
        sysctl = shutil.which("sysctl") or "/usr/sbin/sysctl"
        for s in settings:
            _run_ip("netns", "exec", ns, sysctl, "-q", "-w", s)

    def _start_relay(self) -> None:
        p = self.profile
        argv = [
            sys.executable,
            "-I",
            str(RELAY),
            "--ns-a",
            f"/run/netns/{self.client_ns}",
            "--ns-b",
            f"/run/netns/{self.server_ns}",
            "--dev",
            DEV,
            "--delay-ms",
            str(p.rtt_ms / 2),
            "--loss",
            str(p.loss),
            "--seed",
            str(p.seed),
            "--stats",
            str(self.relay_stats_path),
            "--max-seconds",
            str(self.max_seconds),
        ]
        if p.rate:
            argv += ["--rate", str(p.rate), "--queue-bytes", str(p.queue_bytes)]
        self._relay_err = open(self.workdir / "relay.err", "wb")  # closed in close()
        self.relay = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._relay_err,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        assert self.relay.stdout is not None
        ready, _, _ = select.select([self.relay.stdout], [], [], 15.0)
        line = self.relay.stdout.readline() if ready else b""
        if not line.startswith(b'{"ready"'):
            self.relay.poll()
            err = (self.workdir / "relay.err").read_bytes().decode("utf-8", "replace")[-800:]
            raise TestbedError(f"the relay did not start: {line!r} {err.strip()}")

    def _start_nginx(self) -> None:
        assert self.serve is not None
        binary = self.nginx_binary or shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(binary, os.X_OK):
            raise TestbedError("nginx not found (Debian package nginx-light)")
        self.nginx = Nginx(
            binary,
            self.serve,
            self.workdir / "nginx",
            host=self.server_host,
            port=80,
            prefix=self.server_argv([]),
            ready=self._reachable,
            limit_rate=self.profile.limit_rate,
            tls=self._certificate() if self.tls else None,
        )
        try:
            self.nginx.start(timeout=20.0)
        except Exception as exc:
            raise TestbedError(str(exc)) from exc

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate nginx's HTTPS uses (``tls=True``): a client's CA file."""
        return self.workdir / "tls-cert.pem"

    def _certificate(self) -> tuple[Path, Path]:
        """A one-day self-signed P-256 certificate for the server's address (openssl)."""
        key = self.workdir / "tls-key.pem"
        done = subprocess.run(
            [
                shutil.which("openssl") or "openssl",
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "1", "-subj", f"/CN={self.server_host}",
                "-addext", f"subjectAltName=IP:{self.server_host}",
                "-keyout", str(key), "-out", str(self.ca_file),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise TestbedError(f"openssl could not make a certificate: {done.stderr[-300:]!r}")
        return self.ca_file, key

    def server_tls_url(self, path: str) -> str:
        """The https URL of *path* (``tls=True``), as the client namespace sees it."""
        if self.nginx is None or not self.tls:
            raise TestbedError("no HTTPS: pass serve=FOLDER and tls=True to Testbed")
        return self.nginx.tls_url(path)

    def _reachable(self, host: str, port: int) -> bool:
        """Whether a client in the client namespace can open a TCP connection to host:port."""

        def attempt() -> bool:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return True
            except OSError:
                return False

        return in_namespace(self.client_ns, attempt, timeout=5.0)

    # -- measurements ------------------------------------------------------------------------
    def connect_rtts(self, count: int = 7, port: int | None = None) -> list[float]:
        """Seconds each of *count* TCP connects from the client to the server took (one RTT)."""
        port = port or (self.nginx.port if self.nginx else 80)
        host = self.server_host

        def measure() -> list[float]:
            out: list[float] = []
            for _ in range(count):
                t0 = time.perf_counter()
                with socket.create_connection((host, port), timeout=10.0):
                    out.append(time.perf_counter() - t0)
            return out

        return in_namespace(self.client_ns, measure, timeout=15.0 * count)

    def pull(self, path: str, *, connections: int = 4, seconds: float = 4.0) -> dict[str, Any]:
        """Download *path* over *connections* raw HTTP/1.0 connections at once, for *seconds* at
        most, discarding the bytes: the path's (and the relay's) ceiling; relay CPU included.

        The receive buffers autotune (no SO_RCVBUF), so at any RTT of the profiles the windows
        outgrow what the relay can carry: the result is what the path and relay can do.
        """
        host, port = self.server_host, (self.nginx.port if self.nginx else 80)
        request = f"GET /{path.lstrip('/')} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()

        def run() -> tuple[int, float]:
            socks = [
                socket.create_connection((host, port), timeout=10.0) for _ in range(connections)
            ]
            buf = bytearray(1 << 20)
            total = 0
            t0 = time.monotonic()
            deadline = t0 + seconds
            try:
                for s in socks:
                    s.sendall(request)
                    s.setblocking(False)
                live = list(socks)
                while live and time.monotonic() < deadline:
                    ready, _, _ = select.select(live, [], [], max(0.0, deadline - time.monotonic()))
                    for s in ready:
                        try:
                            n = s.recv_into(buf)
                        except BlockingIOError:
                            continue
                        if n == 0:
                            live.remove(s)
                        total += n
                return total, time.monotonic() - t0
            finally:
                for s in socks:
                    s.close()

        cpu0, t0 = self.relay_cpu_s(), time.monotonic()
        total, elapsed = in_namespace(self.client_ns, run, timeout=seconds + 60.0)
        cpu = self.relay_cpu_s() - cpu0
        wall = time.monotonic() - t0
        return {
            "connections": connections,
            "bytes": total,
            "seconds": elapsed,
            "mbps": total / elapsed / 1e6 if elapsed > 0 else 0.0,
            "relay_cpu_fraction": cpu / wall if wall > 0 else 0.0,
        }

    def device_drops(self) -> dict[str, int]:
        """Packets the kernel dropped at each namespace's TUN device (its queue to the relay full,
        i.e. the relay did not keep up), by namespace; {} without a relay."""
        if self.relay is None:
            return {}
        out: dict[str, int] = {}
        for ns in self.namespaces:
            text = _run_ip("-n", ns, "-s", "-j", "link", "show", "dev", DEV, check=False)
            try:
                info = json.loads(text)[0]["stats64"]
                out[ns] = int(info["tx"]["dropped"]) + int(info["rx"]["dropped"])
            except (ValueError, LookupError, TypeError):
                out[ns] = -1
        return out

    def relay_cpu_s(self) -> float:
        """CPU seconds (user + system) the relay has used so far (0 without a relay)."""
        if self.relay is None or self.relay.poll() is not None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.relay.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def relay_stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """The relay's counters now (packets, bytes, drops per direction); {} without a relay."""
        if self.relay is None or self.relay.poll() is not None:
            return {}
        before = self._read_stats().get("dumps", 0)
        os.kill(self.relay.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self._read_stats()
            if data.get("dumps", 0) > before:
                return data
            time.sleep(0.01)
        raise TestbedError(f"the relay did not write its counters within {timeout} s")

    def _read_stats(self) -> dict[str, Any]:
        try:
            data = json.loads(self.relay_stats_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # -- teardown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop nginx and the relay, kill what is left in the namespaces, delete them."""
        if self.nginx is not None:
            self.nginx.stop()
        relay, self.relay = self.relay, None
        if relay is not None:
            if relay.stdin is not None:
                with contextlib.suppress(OSError):
                    relay.stdin.close()  # the relay exits at end of file
            try:
                relay.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(timeout=5.0)
            self.relay_returncode = relay.returncode
            if relay.stdout is not None:
                relay.stdout.close()
        if self._relay_err is not None:
            self._relay_err.close()
            self._relay_err = None
        for ns in reversed(self._created):
            _delete_namespace(ns)
        self._created.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
