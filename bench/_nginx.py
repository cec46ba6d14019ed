"""A throw-away nginx on 127.0.0.1 serving the generated files (sendfile on).

The config, pid file, logs and temp folders live in a temp dir; nginx runs with ``daemon off``
under a subprocess that ``stop()`` kills (always call it, e.g. in ``finally`` or via ``with``).
The access log records ``$body_bytes_sent`` per request, which the resume workload sums.

The WAN testbed (``bench/_wan.py``) runs the same nginx inside a network namespace: ``host`` and
a fixed ``port`` to listen on, ``prefix`` (``ip netns exec NS``) before the command line,
``ready`` (a connect made from inside that namespace) and ``limit_rate`` (nginx's per-connection
cap, e.g. ``"10m"``; the same files stay reachable without the cap under ``/nolimit/``, which
the testbed's ceiling check uses).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Nginx", "NginxError", "free_port"]

_CONF = """\
{user}worker_processes 1;
daemon off;
master_process off;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    log_format bench '$request_uri $status $body_bytes_sent $request_length $connection';
    access_log {run}/access.log bench;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    gzip off;
    open_file_cache max=10000 inactive=60s;
    server {{
        listen {host}:{port};{tls}
        server_name localhost;
        root {root};
        location / {{ {limit} }}
    }}
}}
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the benchmark process dies (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _can_connect(host: str, port: int) -> bool:
    """Whether a TCP connection to (host, port) from here succeeds within half a second."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class NginxError(RuntimeError):
    """nginx could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """nginx serving *root* on a free 127.0.0.1 port, configured and logged under *run_dir*."""

    def __init__(
        self,
        binary: str,
        root: Path,
        run_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: Sequence[str] = (),
        ready: Callable[[str, int], bool] | None = None,
        limit_rate: str | None = None,
        tls: tuple[Path, Path] | None = None,
        tls_port: int = 443,
    ) -> None:
        self.binary = binary
        self.root = root
        self.run_dir = run_dir
        self.host = host
        self.fixed_port = port
        self.prefix = list(prefix)
        self.ready = ready or _can_connect
        self.limit_rate = limit_rate
        self.tls = tls  # (certificate, key): also HTTPS with HTTP/2 (ALPN) on tls_port
        self.tls_port = tls_port
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The nginx process's pid while it runs (None before start and after stop)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def access_log(self) -> Path:
        """Path of the access log (one line per finished request)."""
        return self.run_dir / "access.log"

    @property
    def error_log(self) -> Path:
        """Path of the error log."""
        return self.run_dir / "error.log"

    def url(self, rel: str) -> str:
        """The URL of a file under the served root."""
        return f"http://{self.host}:{self.port}/{rel.lstrip('/')}"

    def tls_url(self, rel: str) -> str:
        """The https URL of a file under the served root (with ``tls`` given)."""
        return f"https://{self.host}:{self.tls_port}/{rel.lstrip('/')}"

    def start(self, timeout: float = 15.0) -> Self:
        """Write the config and start nginx; returns once it accepts connections."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / name).mkdir(exist_ok=True)
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
        last_error = ""
        for _attempt in range(3):  # another process may take the free port first
            self.port = self.fixed_port or free_port()
            conf = self.run_dir / "nginx.conf"
            conf.write_text(
                _CONF.format(
                    user="user root;\n" if is_root else "",
                    run=self.run_dir,
                    host=self.host,
                    port=self.port,
                    tls=(
                        f"\n        listen {self.host}:{self.tls_port} ssl http2;"
                        f"\n        ssl_certificate {self.tls[0]};"
                        f"\n        ssl_certificate_key {self.tls[1]};"
                        if self.tls
                        else ""
                    ),
                    root=self.root,
                    limit=(
                        f"limit_rate {self.limit_rate}; }}\n        location /nolimit/ {{ alias {self.root}/;"
                        if self.limit_rate
                        else ""
                    ),
                )
            )
            self._proc = subprocess.Popen(
                [
                    *self.prefix,
                    self.binary,
                    "-p",
                    str(self.run_dir),
                    "-e",
                    str(self.error_log),
                    "-c",
                    str(conf),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                if self.ready(self.host, self.port):
                    return self
                time.sleep(0.05)
            last_error = self._failure_text()
            self.stop()
            if "Address already in use" not in last_error:
                break
        raise NginxError(f"nginx did not start: {last_error}")

    def _failure_text(self) -> str:
        parts: list[str] = []
        if self._proc is not None and self._proc.poll() is not None and self._proc.stderr:
            parts.append(self._proc.stderr.read().decode("utf-8", "replace"))
        with contextlib.suppress(OSError):
            parts.append(self.error_log.read_text()[-1500:])
        return " | ".join(p.strip() for p in parts if p.strip()) or "no message"

    def stop(self) -> None:
        """Kill nginx (its whole process group) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

    def log_size(self) -> int:
        """Current size of the access log: a mark to read later lines from."""
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests_since(self, mark: int) -> list[tuple[str, int, int]]:
        """(uri, status, body bytes sent) of every request logged after *mark*."""
        try:
            with open(self.access_log, "rb") as fh:
                fh.seek(mark)
                data = fh.read()
        except FileNotFoundError:
            return []
        out: list[tuple[str, int, int]] = []
        for line in data.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
                out.append((parts[0], int(parts[1]), int(parts[2])))
        return out

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
