"""The e2e tests' Jupyter server and Chromium, once for the package (torn down after its last
test): ``test_jupyterlab`` and ``test_views_issue17`` open their notebooks (each in a folder or
file of its own, in a JupyterLab workspace of its own, its kernel shut down at its end) in the
same server and browser."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from .test_jupyterlab import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    UI_TIMEOUT,
    Jupyter,
    _free_port,
    _kill_kernels,
    _require,
    _stop_server,
    _wait_for_server,
    _write_settings,
)

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext


@pytest.fixture(scope="package")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """JupyterLab on a free loopback port with a token, serving a temporary folder; its config,
    data, runtime, settings and workspaces are temporary too (the venv's labextensions, where
    the widget manager lives, are still found through sys.prefix). Always killed at the end."""
    _require("playwright", "jupyterlab")
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
