"""The e2e tests' Jupyter server and Chromium, once for the package (torn down after its last
test): ``test_jupyterlab`` and ``test_views_issue17`` open their notebooks (each in a folder or
file of its own, in a JupyterLab workspace of its own, its kernel shut down at its end) in the
same server and browser."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .test_jupyterlab import ARTIFACTS, CHROMIUM, UI_TIMEOUT, Jupyter, require

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT = 60.0  # s, for /api/status to answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_settings(settings: Path) -> None:
    """No news prompt; every cell in the DOM (no windowing), so the test can read them all."""
    files = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, value in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value), "utf-8")


def _wait_for_server(proc: subprocess.Popen[bytes], status_url: str, log: Path) -> None:
    """Poll /api/status until it answers 200; fail if the server exits or the deadline passes."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the Jupyter server exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(status_url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the Jupyter server did not answer in {SERVER_START_TIMEOUT} s; see {log}")
        time.sleep(0.2)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (it shuts its kernels down), SIGKILL if it lingers."""
    if proc.poll() is None:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _kill_group(proc.pid, signal.SIGKILL)  # anything left in the group


def _kill_kernels(root: Path) -> None:
    """Kernels run in sessions of their own: kill each one whose pid a notebook recorded."""
    for pid_file in root.rglob("kernel.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                _kill_group(pid, signal.SIGKILL)


@pytest.fixture(scope="package")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """JupyterLab on a free loopback port with a token, serving a temporary folder; its config,
    data, runtime, settings and workspaces are temporary too (the venv's labextensions, where
    the widget manager lives, are still found through sys.prefix). Always killed at the end."""
    require("playwright", "jupyterlab")
    base = tmp_path_factory.mktemp("jupyter")
    root, home = base / "root", base / "home"
    names = ("config", "data", "runtime", "ipython", "settings", "workspaces")
    dirs = {name: home / name for name in names}
    for path in (root, *dirs.values()):
        path.mkdir(parents=True)
    _write_settings(dirs["settings"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "jupyter-server.log"
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "BITSNB_HOME": str(home / "bitsnb"),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={dirs['settings']}",
        f"--LabApp.workspaces_dir={dirs['workspaces']}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        server = Jupyter(f"http://127.0.0.1:{port}", token, root)
        _wait_for_server(proc, server.url("/api/status"), log)
        yield server
    finally:
        _stop_server(proc)
        _kill_kernels(root)


@pytest.fixture(scope="package")
def browser(jupyter: Jupyter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a new empty profile (never a Playwright-downloaded browser)."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1800},
            timeout=UI_TIMEOUT,
        )
        try:
            yield context
        finally:
            context.close()
