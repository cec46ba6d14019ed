"""Plain GETs sent straight to the lean transport (``stream_get``) keep what httpx's flow did:
the client's headers, a cookie a response set sent on the next request, redirects followed by
the client's rules."""

from __future__ import annotations

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
