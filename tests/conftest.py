"""Shared fixtures: an isolated BITSNB_HOME, a real loopback file server, fast policies."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support.postgres import Postgres, find_pg_bin, running_postgres
from _support.raw_http import ScriptServer

import bitsnb
from bitsnb.testing import FileServer

# the PostgreSQL tests' ``url`` and ``opened`` fixtures (a fresh database, raw stores on it)
pytest_plugins = ["_support.pg_fixtures"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close the panels' widgets while the interpreter still runs: left to ipywidgets'
    ``__del__`` at exit, one found its module state gone and printed "Exception ignored"
    after the summary (a clean clone's full run, session 11)."""
    widgets = sys.modules.get("ipywidgets")
    if widgets is not None:
        widgets.Widget.close_all()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own BITSNB_HOME and no proxy settings from the environment."""
    monkeypatch.setenv("BITSNB_HOME", str(tmp_path / "bitsnb-home"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[FileServer]:
    """A real HTTP/1.1 file server on 127.0.0.1 with Range, ETag and fault injection."""
    with FileServer() as srv:
        yield srv


@pytest.fixture
def policy() -> bitsnb.Policy:
    """Short timings so retries, leases and polling happen within a test."""
    return bitsnb.Policy(
        min_retry_delay_floor=0.05,
        poll_interval=0.05,
        lease_seconds=2.0,
        checkpoint_interval=0.2,
        connect_timeout=5.0,
        read_timeout=5.0,
    )


@pytest.fixture(params=[True, False], ids=["lean", "httpx"])
def lean_policy(request: pytest.FixtureRequest, policy: bitsnb.Policy) -> bitsnb.Policy:
    """The fast test policy on the lean transport, then on httpx's default transport."""
    policy.lean_transport = request.param
    return policy


@pytest.fixture
def srv() -> Iterator[ScriptServer]:
    """A raw-socket server on 127.0.0.1 that answers each path with a scripted response
    (tests that need another kind of server define their own ``srv``)."""
    s = ScriptServer()
    yield s
    s.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A path for a fresh SQLite store."""
    return tmp_path / "jobs.db"


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A folder for downloaded files."""
    path = tmp_path / "dest"
    path.mkdir()
    return path


@pytest.fixture
def manager(store: Path, policy: bitsnb.Policy) -> Iterator[bitsnb.Manager]:
    """A blocking Manager on a fresh store with the fast policy."""
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        yield mgr


def visible_files(folder: Path) -> list[str]:
    """Names in *folder* that are not temporary files."""
    return sorted(n for n in os.listdir(folder) if not n.startswith(".BIT"))


def temp_files(folder: Path) -> list[str]:
    """BITS temporary files left in *folder*."""
    return sorted(n for n in os.listdir(folder) if n.startswith(".BIT"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL (Debian's packages) for the session; skips when it is not installed."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install bitsnb[postgres])")
    with running_postgres(bin_dir) as pg:
        yield pg
