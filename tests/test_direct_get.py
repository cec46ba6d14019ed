"""Plain GETs sent straight to the lean transport (``stream_get``) keep what httpx's flow did:
the client's headers, a cookie a response set sent on the next request, redirects followed by
the client's rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _support.raw_http import ScriptServer, reply

import bitsnb
from bitsnb import JobState


def _run(policy: bitsnb.Policy, store: Path, files: list[tuple[str, Path]]) -> bitsnb.Job:
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("direct")
        job.add_file_set(files)
        job.resume()
        assert job.wait(timeout=30) is JobState.TRANSFERRED, job.error
        job.complete()
        return job


def test_a_cookie_set_by_one_file_goes_with_the_next(
    srv: ScriptServer, policy: bitsnb.Policy, store: Path, dest: Path
) -> None:
    """The first response sets a cookie: the second request carries it, as through httpx."""
    policy.files_in_flight = 1  # in order: the cookie exists before the second request
    srv.scripts["/a"] = reply(b"first", "Set-Cookie: s=42; Path=/")
    srv.scripts["/b"] = reply(b"second")
    _run(policy, store, [(f"{srv.base}/a", dest / "a"), (f"{srv.base}/b", dest / "b")])
    first, second = srv.requests
    assert b"cookie:" not in first.lower()
    assert b"\r\ncookie: s=42" in second.lower()
    assert b"user-agent: bitsnb/" in first.lower()  # the client's own headers
    assert (dest / "a").read_bytes() == b"first" and (dest / "b").read_bytes() == b"second"


def test_a_redirect_is_followed_by_the_clients_rules(
    srv: ScriptServer, policy: bitsnb.Policy, store: Path, dest: Path
) -> None:
    """A 302 on the direct path: the client's flow goes on from it, one request a hop."""
    srv.scripts["/old"] = reply(b"", f"Location: {srv.base}/new", status="302 Found")
    srv.scripts["/new"] = reply(b"moved here")
    _run(policy, store, [(f"{srv.base}/old", dest / "f")])
    paths = [r.split(b" ")[1] for r in srv.requests]
    assert paths == [b"/old", b"/new"]
    assert (dest / "f").read_bytes() == b"moved here"


_NO_TLS_CHILD = """
import gc, pathlib, ssl, sys, tempfile
import bitsnb
from bitsnb.testing import FileServer
srv = FileServer().start()
url = srv.add_random_file("a.bin", 50_000, seed=1)
d = pathlib.Path(tempfile.mkdtemp())
with bitsnb.Manager(d / "jobs.db") as mgr:
    job = mgr.create_job("plain")
    job.add_file(url, str(d / "a.bin"))
    job.resume()
    state = job.wait(timeout=30)
    contexts = sum(isinstance(o, ssl.SSLContext) for o in gc.get_objects())
    job.complete()
srv.stop()
print(state.name, contexts, (d / "a.bin").stat().st_size)
"""


def test_a_plain_http_download_never_makes_a_tls_context() -> None:
    """Over plain http the TLS context (the CA bundle loaded: tens of ms of a process's
    start) and httpx's own transport are made only if a request needs them: none here."""
    out = subprocess.run(
        [sys.executable, "-c", _NO_TLS_CHILD], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TRANSFERRED", "0", "50000"], out.stdout
