"""Integrity on the command line: ``transfer --checksum``/``--checksum-file``, ``addfile
--checksum``, and ``bitsnb verify JOB`` (one line per file, exit 1 on a mismatch)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bitsnb
from bitsnb import _cli
from bitsnb.testing import Fault, FileServer

Result = subprocess.CompletedProcess[str]


def here(capsys: pytest.CaptureFixture[str], *args: object) -> Result:
    """``bitsnb._cli.main(args)`` in this process, output captured."""
    capsys.readouterr()
    argv = [str(a) for a in args]
    code = _cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return subprocess.CompletedProcess(argv, code, out, err)


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def gets(server: FileServer, name: str) -> int:
    return len([r for r in server.requests if r.path == name])


def store_jobs() -> list[bitsnb.Job]:
    with bitsnb.Manager(policy=bitsnb.Policy(max_active_jobs=0)) as mgr:
        return list(mgr.enum_jobs(include_finished=True))


def test_transfer_checksum_then_in_place(
    capsys: pytest.CaptureFixture[str], server: FileServer, dest: Path
) -> None:
    """--checksum: verified and recorded; the same command again finds the file in place and
    makes no job and no request."""
    url = server.add_random_file("a.bin", 500_000, seed=1)
    known = sha256(server.path("a.bin"))
    r = here(capsys, "transfer", url, dest, "--checksum", known, "--json")
    assert r.returncode == 0, r.stderr
    (f,) = json.loads(r.stdout)["files"]
    assert (f["known_hash"], f["hash"], f["validation_state"]) == (known, known, True)
    r = here(capsys, "transfer", url, dest, "--checksum", known)
    assert r.returncode == 0 and "already in place" in r.stdout
    r = here(capsys, "transfer", url, dest, "--checksum", known, "--json")
    assert json.loads(r.stdout) == {"state": "IN_PLACE", "files": [str(dest / "a.bin")]}
    assert gets(server, "a.bin") == 1 and len(store_jobs()) == 1


def test_transfer_checksum_mismatch_and_refusals(
    capsys: pytest.CaptureFixture[str], server: FileServer, tmp_path: Path
) -> None:
    """A same-size corrupted body: exit 1 naming BG_E_VALIDATION_FAILED, no final file. A
    malformed hash or a wrong count: exit 3, nothing created."""
    url = server.add_random_file("b.bin", 200_000, seed=2)
    known = sha256(server.path("b.bin"))
    server.inject("b.bin", Fault.corrupt(seed=3))
    dest = tmp_path / "out"
    r = here(capsys, "transfer", url, os.path.join(dest, ""), "--checksum", known)
    assert r.returncode == 1
    assert "BG_E_VALIDATION_FAILED" in r.stdout + r.stderr
    assert not (dest / "b.bin").exists()
    fresh = tmp_path / "fresh"
    for extra in (["--checksum", "sha256:12"], ["--checksum", known, "--checksum", known]):
        r = here(capsys, "transfer", url, os.path.join(fresh, ""), *extra)
        assert r.returncode == 3 and "error: " in r.stderr
    assert not fresh.exists()


def test_transfer_checksum_file(
    capsys: pytest.CaptureFixture[str], server: FileServer, dest: Path
) -> None:
    """--checksum-file, local or a URL: each file gets the hash of its line."""
    urls = [server.add_random_file(f"s{i}.bin", 30_000, seed=10 + i) for i in range(2)]
    hexes = [sha256(server.path(f"s{i}.bin")).split(":")[1] for i in range(2)]
    text = f"{hexes[0]}  s0.bin\n{hexes[1]} *s1.bin\n"
    sums = dest.parent / "SHA256SUMS"
    sums.write_text(text)
    r = here(capsys, "transfer", *urls, dest, "--checksum-file", sums, "--json")
    assert r.returncode == 0, r.stderr
    assert [f["hash"] for f in json.loads(r.stdout)["files"]] == [f"sha256:{h}" for h in hexes]
    other = dest.parent / "other"
    sums_url = server.add_file("SHA256SUMS", text.encode())
    r = here(capsys, "transfer", *urls, other, "--checksum-file", sums_url)
    assert r.returncode == 0, r.stderr
    assert [sha256(other / f"s{i}.bin") for i in range(2)] == [f"sha256:{h}" for h in hexes]


def test_addfile_checksum(capsys: pytest.CaptureFixture[str], dest: Path) -> None:
    """addfile --checksum records the known hash; --checksum-file takes a local file only."""
    r = here(capsys, "create", "hashed")
    job_id = r.stdout.strip()
    known = "md5:" + "ab" * 16
    r = here(capsys, "addfile", job_id, "http://127.0.0.1:9/x.bin", dest, "--checksum", known)
    assert r.returncode == 0, r.stderr
    sums = dest.parent / "SUMS"
    sums.write_text(f"{'cd' * 32}  y.bin\n")
    r = here(capsys, "addfile", job_id, "http://127.0.0.1:9/y.bin", dest, "--checksum-file", sums)
    assert r.returncode == 0, r.stderr
    r = here(capsys, "addfile", job_id, "http://127.0.0.1:9/z.bin", dest, "--checksum", "x:1")
    assert r.returncode == 3
    r = here(capsys, "addfile", job_id, "http://127.0.0.1:9/z.bin", dest, "--checksum-file",
             "http://127.0.0.1:9/SUMS")  # fmt: skip
    assert r.returncode == 3 and "local file" in r.stderr
    (job,) = store_jobs()
    assert [f.known_hash for f in job.files] == [known, "sha256:" + "cd" * 32]


def test_verify(capsys: pytest.CaptureFixture[str], server: FileServer, dest: Path) -> None:
    """verify: OK per file; a same-size change on disk: FAILED with expected and got, exit 1
    (the child process too); a deleted file: MISSING; an unfinished job: exit 3."""
    urls = [server.add_random_file(f"v{i}.bin", 100_000, seed=20 + i) for i in range(2)]
    r = here(capsys, "transfer", *urls, dest, "--json")  # no known hash
    job_id = json.loads(r.stdout)["id"]
    known = [sha256(server.path(f"v{i}.bin")) for i in range(2)]
    r = here(capsys, "verify", job_id)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("no hash recorded") == 2  # the test server sends no digest
    r = here(capsys, "transfer", *urls, dest.parent / "h", "--json",
             "--checksum", known[0], "--checksum", known[1])  # fmt: skip
    job_id = json.loads(r.stdout)["id"]
    r = here(capsys, "verify", job_id)
    assert r.returncode == 0 and r.stdout.count(": OK (sha256)") == 2
    assert here(capsys, "info", job_id).stdout.count("completed, verified") == 2
    target = dest.parent / "h" / "v0.bin"
    data = bytearray(target.read_bytes())
    data[5000] ^= 0xFF
    target.write_bytes(bytes(data))
    (dest.parent / "h" / "v1.bin").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "bitsnb", "verify", job_id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.startswith(str(target)) and "FAILED" in ln and known[0] in ln for ln in lines)
    assert any(ln.endswith("v1.bin: MISSING") for ln in lines)
    r = here(capsys, "create", "empty")
    assert here(capsys, "verify", r.stdout.strip()).returncode == 3
