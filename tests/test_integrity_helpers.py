"""Integrity in the helpers: ``download(known_hash=)``, ``download_many(known_hashes=)``,
``checksums=`` (a SHA256SUMS file or URL), and the cache path (no job for a file in place;
no re-read of a file bitsnb completed and that is unchanged since)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

import bitsnb
from bitsnb import BitsError, JobState
from bitsnb._integrity import parse_checksums
from bitsnb._store_rows import SCHEMA_VERSION
from bitsnb.helpers import download, download_many, paths
from bitsnb.testing import Fault, FileServer

BG_E_VALIDATION_FAILED = 0x80200053
E_INVALIDARG = 0x80070057
MIB = 1024 * 1024
TIMEOUT = 30.0


def sha256(path: Path) -> str:
    """``sha256:<hex>`` of a file."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def bytes_read() -> int:
    """Bytes this process has read through read() calls so far (``/proc/self/io`` rchar)."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def job_count(mgr: bitsnb.Manager) -> int:
    return len(list(mgr.enum_jobs(include_finished=True)))


def get_count(server: FileServer, name: str) -> int:
    return len([r for r in server.requests if r.path == name])


# -- download(known_hash=) and the cache ------------------------------------------------------
def test_known_hash_then_cache_without_rereading(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A verified download records size, mtime and inode at complete(); a re-run returns the
    path at once: no job, no request, and the file is not read again."""
    url = server.add_random_file("big.bin", 8 * MIB, seed=1)
    known = sha256(server.path("big.bin"))
    job = download(url, dest, known_hash=known, manager=manager, wait=True, display=False)
    assert isinstance(job, bitsnb.Job) and job.state is JobState.ACKNOWLEDGED
    (f,) = job.files
    assert (f.known_hash, f.hash, f.validation_state) == (known, known, True)
    assert manager.verified_hash(dest / "big.bin") == known
    jobs, gets = job_count(manager), get_count(server, "big.bin")
    before = bytes_read()
    again = download(url, dest, known_hash=known.upper().replace("SHA256", "sha256"),
                     manager=manager, wait=True, display=False)  # fmt: skip
    read = bytes_read() - before
    assert again == dest / "big.bin"
    assert paths(again) == [dest / "big.bin"]
    assert (job_count(manager), get_count(server, "big.bin")) == (jobs, gets)
    assert read < MIB  # the store's few pages, not the 8 MiB file


def test_changed_file_is_hashed_once_or_fetched_again(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Touched but equal: hashed once, in place. Changed: downloaded again, and right."""
    url = server.add_random_file("t.bin", 2 * MIB, seed=2)
    known = sha256(server.path("t.bin"))
    download(url, dest, known_hash=known, manager=manager, wait=True, display=False)
    target = dest / "t.bin"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert manager.verified_hash(target) is None  # no longer as complete() left it
    before = bytes_read()
    assert download(url, dest, known_hash=known, manager=manager, display=False) == target
    assert bytes_read() - before >= 2 * MIB  # hashed, once
    jobs = job_count(manager)
    target.write_bytes(b"x" * (2 * MIB))  # same size, wrong bytes
    job = download(url, dest, known_hash=known, manager=manager, wait=True, display=False)
    assert isinstance(job, bitsnb.Job) and job_count(manager) == jobs + 1
    assert sha256(target) == known


def test_several_urls_all_in_place(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """download() of several URLs with a checksums file: once all are in place, the folder
    comes back and no job is made."""
    urls = [server.add_random_file(f"a{i}.bin", 20_000, seed=50 + i) for i in range(2)]
    sums = dest.parent / "SUMS"
    sums.write_text("".join(f"{sha256(server.path(f'a{i}.bin'))[7:]}  a{i}.bin\n" for i in (0, 1)))
    job = download(urls, dest, checksums=sums, manager=manager, wait=True, display=False)
    assert isinstance(job, bitsnb.Job)
    jobs = job_count(manager)
    assert download(urls, dest, checksums=sums, manager=manager) == dest
    assert job_count(manager) == jobs


def test_file_bitsnb_did_not_write(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """A right file put there by someone else: hashed once, no job; md5 known hashes too."""
    url = server.add_random_file("o.bin", MIB, seed=3)
    (dest / "o.bin").write_bytes(server.path("o.bin").read_bytes())
    known = "md5:" + hashlib.md5(server.path("o.bin").read_bytes()).hexdigest()
    assert download(url, dest, known_hash=known, manager=manager) == dest / "o.bin"
    assert job_count(manager) == 0 and get_count(server, "o.bin") == 0


def test_bad_known_hash_creates_nothing(
    manager: bitsnb.Manager, server: FileServer, tmp_path: Path
) -> None:
    """A malformed hash or unknown algorithm: E_INVALIDARG; no job, no folder."""
    url = server.add_random_file("b.bin", 1000, seed=4)
    target = tmp_path / "new" / "folder"
    for bad in ("sha256:1234", "whirlpool:" + "0" * 64, 42):
        with pytest.raises(BitsError) as err:
            download(url, os.path.join(target, ""), known_hash=bad, manager=manager)  # type: ignore[arg-type]
        assert err.value.code == E_INVALIDARG
    with pytest.raises(BitsError) as err:
        download_many([url], target, known_hashes=["md5:zz"], manager=manager)
    assert err.value.code == E_INVALIDARG
    with pytest.raises(BitsError):  # one hash for several URLs is a mistake
        download([url, url + "?2"], target, known_hash="0" * 64, manager=manager)
    assert job_count(manager) == 0 and not (tmp_path / "new").exists()


def test_wrong_known_hash_raises_validation_failed(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """A corrupted body against the known hash: wait=True raises BG_E_VALIDATION_FAILED and
    the final name never appears."""
    url = server.add_random_file("c.bin", 300_000, seed=5)
    known = sha256(server.path("c.bin"))
    server.inject("c.bin", Fault.corrupt(seed=1))
    with pytest.raises(BitsError) as err:
        download(url, dest, known_hash=known, manager=manager, wait=True, display=False)
    assert err.value.code == BG_E_VALIDATION_FAILED
    assert not (dest / "c.bin").exists()


# -- download_many(known_hashes=) ----------------------------------------------------------------
@pytest.mark.parametrize("shape", ["mapping", "list", "series", "frame"])
def test_known_hashes_shapes(
    manager: bitsnb.Manager, server: FileServer, dest: Path, shape: str
) -> None:
    """A mapping, a list, a Series or a one-column frame: each file checked; a re-run makes no
    job; a file already in place is left out of the job."""
    urls = [server.add_random_file(f"m{i}.bin", 50_000 + i, seed=10 + i) for i in range(3)]
    hashes = [sha256(server.path(f"m{i}.bin")) for i in range(3)]
    df = pd.DataFrame({"url": urls, "sha256": hashes})
    given: object = {
        "mapping": dict(zip(urls, hashes, strict=True)),
        "list": hashes,
        "series": df["sha256"],
        "frame": df[["sha256"]],
    }[shape]
    (dest / "m1.bin").write_bytes(server.path("m1.bin").read_bytes())  # one already there
    jobs = download_many(df["url"], dest, known_hashes=given, manager=manager, wait=True,
                         display=False)  # type: ignore[arg-type]  # fmt: skip
    (job,) = jobs
    assert [Path(f.local_name).name for f in job.files] == ["m0.bin", "m2.bin"]
    assert [f.hash for f in job.files] == [hashes[0], hashes[2]]
    assert [sha256(dest / f"m{i}.bin") for i in range(3)] == hashes
    assert download_many(urls, dest, known_hashes=given, manager=manager) == []  # type: ignore[arg-type]


def test_known_hashes_partial_and_mismatched(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """None/NaN mean no hash; a wrong count or a URL not downloaded is refused."""
    urls = [server.add_random_file(f"p{i}.bin", 10_000, seed=20 + i) for i in range(2)]
    with pytest.raises(BitsError, match="2 URLs"):
        download_many(urls, dest, known_hashes=["0" * 64], manager=manager)
    with pytest.raises(BitsError, match="not downloaded"):
        download_many(urls, dest, known_hashes={"http://elsewhere/x": "0" * 64}, manager=manager)
    known = sha256(server.path("p1.bin"))
    series = pd.Series([float("nan"), known])
    (job,) = download_many(urls, dest, known_hashes=series, manager=manager, wait=True,
                           display=False)  # fmt: skip
    assert [f.known_hash for f in job.files] == [None, known]


# -- checksums= ---------------------------------------------------------------------------------
def sums_text(server: FileServer, names: list[str]) -> str:
    lines = [f"{sha256(server.path(n)).split(':')[1]}  {n}" for n in names[:-1]]
    last = names[-1]  # binary-mode marker, and a ./ prefix
    lines.append(f"{sha256(server.path(last)).split(':')[1]} *./{last}")
    return "# release sums\n\n" + "\n".join(lines) + "\n"


def test_checksums_file_and_url(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """A SHA256SUMS path or URL: each file gets its line's hash (by file name, `*` and `./`
    understood); a re-run makes no job for the data files."""
    urls = [server.add_random_file(f"r/s{i}.bin", 40_000, seed=30 + i) for i in range(2)]
    text = sums_text(server, ["r/s0.bin", "r/s1.bin"]).replace("r/", "")
    sums_path = dest.parent / "SHA256SUMS"
    sums_path.write_text(text)
    (job,) = download_many(urls, dest, checksums=sums_path, manager=manager, wait=True,
                           display=False)  # fmt: skip
    assert [f.known_hash for f in job.files] == [sha256(server.path(f"r/s{i}.bin")) for i in (0, 1)]
    sums_url = server.add_file("r/SHA256SUMS", text.encode())
    assert download_many(urls, dest, checksums=sums_url, manager=manager) == []
    other = dest.parent / "other"
    job2 = download(urls[1], os.path.join(other, ""), checksums=sums_url, manager=manager, wait=True,
                    display=False)  # fmt: skip
    assert isinstance(job2, bitsnb.Job)
    assert job2.files[0].hash == sha256(server.path("r/s1.bin"))


def test_checksums_refusals(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """A file the sums do not name, a malformed line, an unreadable file: E_INVALIDARG, no
    job."""
    url = server.add_random_file("z.bin", 1000, seed=40)
    sums = dest.parent / "SUMS"
    sums.write_text(f"{'a' * 64}  other.bin\n")
    with pytest.raises(BitsError, match=r"no line for 'z\.bin'"):
        download(url, dest, checksums=sums, manager=manager)
    sums.write_text("not a checksum line\n")
    with pytest.raises(BitsError, match="line 1"):
        download(url, dest, checksums=sums, manager=manager)
    with pytest.raises(BitsError) as err:
        download(url, dest, checksums=dest.parent / "missing", manager=manager)
    assert err.value.code == E_INVALIDARG
    assert job_count(manager) == 0


def test_parse_checksums_algorithms() -> None:
    """The algorithm follows from the length (and b2 names mean blake2b)."""
    got = parse_checksums(f"{'A' * 32}  a\n{'b' * 128} *b\n")
    assert got == {"a": "md5:" + "a" * 32, "b": "sha512:" + "b" * 128}
    assert parse_checksums(f"{'c' * 128}  c\n", "B2SUMS") == {"c": "blake2b:" + "c" * 128}
    with pytest.raises(ValueError):
        parse_checksums(f"{'c' * 30}  c\n")


# -- the store ----------------------------------------------------------------------------------
def test_store_migrates_placed_column(store: Path, policy: bitsnb.Policy, dest: Path) -> None:
    """A store of the schema before ``placed`` opens and gains it (rows kept, NULL)."""
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("old")
        job.add_file("http://127.0.0.1:9/x", dest / "x")
        job_id = job.id
    db = sqlite3.connect(store)
    db.execute("DROP INDEX files_local")
    db.execute("ALTER TABLE files DROP COLUMN placed")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        assert len(mgr.get_job(job_id).files) == 1
        assert mgr.verified_hash(dest / "x") is None
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT placed FROM files").fetchall() == [(None,)]
    db.close()
