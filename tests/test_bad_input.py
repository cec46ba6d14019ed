"""Every bad input the developers' guide names: the right BITS code, a message a person
understands, and nothing changed — not the queue, not the store, not the disk."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _support.helpers import folder, queue_snapshot, store_rows

import bitsnb
from bitsnb import AuthScheme, AuthTarget, BitsError, JobType, ProxyUsage
from bitsnb.testing import FileServer

E_NOTIMPL = 0x80004001
E_INVALIDARG = 0x80070057
E_ACCESSDENIED = 0x80070005
ERROR_PATH_NOT_FOUND = 0x80070003
BG_E_NOT_FOUND = 0x80200001
BG_E_INVALID_STATE = 0x80200002
BG_E_STRING_TOO_LONG = 0x80200021
BG_E_INVALID_RANGE = 0x8020002B
BG_E_OVERLAPPING_RANGES = 0x8020002C
BG_E_TOO_MANY_JOBS_PER_USER = 0x80200049
BG_E_TOO_MANY_FILES_IN_JOB = 0x80200051
BG_E_INVALID_AUTH_TARGET = 0x80200027
BG_E_INVALID_AUTH_SCHEME = 0x80200028


@pytest.fixture
def policy(policy: bitsnb.Policy) -> bitsnb.Policy:
    """Small BITS limits, so the limit errors can be provoked."""
    policy.max_files_per_job = 2
    policy.max_jobs_per_user = 1
    return policy


@dataclass
class Ctx:
    """What a bad-input case may use: a SUSPENDED job with one file, a cancelled job, ..."""

    mgr: bitsnb.Manager
    job: bitsnb.Job
    cancelled: bitsnb.Job
    server: FileServer
    dest: Path
    tmp: Path

    def url(self, name: str = "x.bin") -> str:
        return self.server.url(name)


@pytest.fixture
def ctx(manager: bitsnb.Manager, server: FileServer, dest: Path, tmp_path: Path) -> Iterator[Ctx]:
    """The queue every case starts from."""
    cancelled = manager.create_job("cancelled")
    cancelled.cancel()
    job = manager.create_job("target")
    job.add_file(server.url("first.bin"), dest / "first.bin")
    (dest / "existing.txt").write_text("not ours")
    yield Ctx(manager, job, cancelled, server, dest, tmp_path)


Action = Callable[[Ctx], object]


@dataclass(frozen=True)
class Case:
    """One bad input: what to call, the code it must raise and words its message must hold."""

    id: str
    action: Action
    code: int
    words: tuple[str, ...]
    secret: str | None = None  # must not appear in the message


CASES = [
    # remote names
    Case("url-empty", lambda c: c.job.add_file("", c.dest / "a.bin"), E_INVALIDARG, ("URL",)),
    Case(
        "url-none",
        lambda c: c.job.add_file(None, c.dest / "a.bin"),  # type: ignore[arg-type]
        E_INVALIDARG,
        ("URL",),
    ),
    Case(
        "url-no-scheme",
        lambda c: c.job.add_file("www.example.com/a.bin", c.dest / "a.bin"),
        E_INVALIDARG,
        ("scheme", "http"),
    ),
    Case(
        "url-ftp",
        lambda c: c.job.add_file("ftp://127.0.0.1/a.bin", c.dest / "a.bin"),
        E_INVALIDARG,
        ("ftp", "http"),
    ),
    Case(
        "url-file",
        lambda c: c.job.add_file("file:///etc/passwd", c.dest / "a.bin"),
        E_INVALIDARG,
        ("file", "http"),
    ),
    Case(
        "url-no-host",
        lambda c: c.job.add_file("http:///a.bin", c.dest / "a.bin"),
        E_INVALIDARG,
        ("host",),
    ),
    Case(
        "url-spaces",
        lambda c: c.job.add_file(c.url("a b.bin").replace("%20", " "), c.dest / "a.bin"),
        E_INVALIDARG,
        ("spaces",),
    ),
    Case(
        "url-too-long",
        lambda c: c.job.add_file("http://127.0.0.1/" + "a" * 2200, c.dest / "a.bin"),
        E_INVALIDARG,
        ("2200", "long"),
    ),
    Case(
        "url-credentials",
        lambda c: c.job.add_file("http://alice:hunter2-secret@127.0.0.1/a.bin", c.dest / "a.bin"),
        E_INVALIDARG,
        ("credentials", "set_credentials"),
        secret="hunter2-secret",
    ),
    Case(
        "set-remote-name-bad-url",
        lambda c: c.job.set_remote_name(0, "gopher://127.0.0.1/x"),
        E_INVALIDARG,
        ("gopher",),
    ),
    Case(
        "set-remote-name-no-such-file",
        lambda c: c.job.set_remote_name(5, c.url()),
        E_INVALIDARG,
        ("no file", "5"),
    ),
    # local names
    Case(
        "path-relative",
        lambda c: c.job.add_file(c.url(), "relative/a.bin"),
        E_INVALIDARG,
        ("relative", "absolute"),
    ),
    Case(
        "path-dotdot",
        lambda c: c.job.add_file(c.url(), f"{c.dest}/../a.bin"),
        E_INVALIDARG,
        ("..",),
    ),
    Case(
        "path-is-folder",
        lambda c: c.job.add_file(c.url(), c.dest),
        E_INVALIDARG,
        ("folder",),
    ),
    Case(
        "path-trailing-slash",
        lambda c: c.job.add_file(c.url(), f"{c.dest}/sub/"),
        E_INVALIDARG,
        ("folder",),
    ),
    Case(
        "path-missing-folder",
        lambda c: c.job.add_file(c.url(), c.dest / "missing" / "a.bin"),
        ERROR_PATH_NOT_FOUND,
        ("folder", "does not exist"),
    ),
    Case(
        "path-name-too-long",
        lambda c: c.job.add_file(c.url(), c.dest / ("n" * 300)),
        E_INVALIDARG,
        ("too long",),
    ),
    Case(
        "path-too-long",
        lambda c: c.job.add_file(c.url(), "/" + "/".join(["d" * 200] * 25)),
        E_INVALIDARG,
        ("too long",),
    ),
    Case(
        "path-nul",
        lambda c: c.job.add_file(c.url(), f"{c.dest}/a\x00b"),
        E_INVALIDARG,
        ("NUL",),
    ),
    # duplicates, all-or-none sets, limits
    Case(
        "duplicate-in-job",
        lambda c: c.job.add_file(c.url("other.bin"), c.dest / "first.bin"),
        E_INVALIDARG,
        ("already", "first.bin"),
    ),
    Case(
        "duplicate-in-one-set",
        lambda c: c.job.add_file_set(
            [(c.url("a"), c.dest / "same.bin"), (c.url("b"), c.dest / "same.bin")]
        ),
        E_INVALIDARG,
        ("same.bin",),
    ),
    Case(
        "set-with-one-bad-url",
        lambda c: c.job.add_file_set(
            [(c.url("ok.bin"), c.dest / "ok.bin"), ("ftp://h/x", c.dest / "x.bin")]
        ),
        E_INVALIDARG,
        ("ftp",),
    ),
    Case(
        "set-empty",
        lambda c: c.job.add_file_set([]),
        E_INVALIDARG,
        ("no files",),
    ),
    Case(
        "too-many-files-in-job",
        lambda c: c.job.add_file_set(
            [(c.url("a"), c.dest / "a.bin"), (c.url("b"), c.dest / "b.bin")]
        ),
        BG_E_TOO_MANY_FILES_IN_JOB,
        ("at most 2 files",),
    ),
    Case(
        "too-many-jobs-per-user",
        lambda c: c.mgr.create_job("one too many"),
        BG_E_TOO_MANY_JOBS_PER_USER,
        ("1 jobs",),
    ),
    # calls invalid in the job's state, unknown jobs
    Case(
        "add-file-to-cancelled-job",
        lambda c: c.cancelled.add_file(c.url(), c.dest / "late.bin"),
        BG_E_INVALID_STATE,
        ("CANCELLED",),
    ),
    Case(
        "resume-cancelled-job", lambda c: c.cancelled.resume(), BG_E_INVALID_STATE, ("CANCELLED",)
    ),
    Case(
        "rename-cancelled-job",
        lambda c: setattr(c.cancelled, "display_name", "new"),
        BG_E_INVALID_STATE,
        ("CANCELLED",),
    ),
    Case(
        "unknown-job-uuid",
        lambda c: c.mgr.get_job(uuid.uuid4()),
        BG_E_NOT_FOUND,
        ("no job",),
    ),
    Case(
        "unknown-job-not-a-uuid",
        lambda c: c.mgr.get_job("definitely-not-a-uuid"),
        BG_E_NOT_FOUND,
        ("not a job id", "definitely-not-a-uuid"),
    ),
    Case(
        "cancelled-job-by-id",
        lambda c: c.mgr.get_job(c.cancelled.id),
        BG_E_NOT_FOUND,
        ("no job",),
    ),
    # strings, priorities, types
    Case(
        "create-display-name-257",
        lambda c: c.mgr.create_job("n" * 257),
        BG_E_STRING_TOO_LONG,
        ("display name", "257", "256"),
    ),
    Case(
        "set-display-name-257",
        lambda c: setattr(c.job, "display_name", "n" * 257),
        BG_E_STRING_TOO_LONG,
        ("display name", "256"),
    ),
    Case(
        "display-name-not-str",
        lambda c: c.mgr.create_job(42),  # type: ignore[arg-type]
        E_INVALIDARG,
        ("display name", "string"),
    ),
    Case(
        "create-description-1025",
        lambda c: c.mgr.create_job("x", description="d" * 1025),
        BG_E_STRING_TOO_LONG,
        ("description", "1024"),
    ),
    Case(
        "set-description-1025",
        lambda c: setattr(c.job, "description", "d" * 1025),
        BG_E_STRING_TOO_LONG,
        ("description", "1024"),
    ),
    Case(
        "create-priority-7",
        lambda c: c.mgr.create_job("x", priority=7),  # type: ignore[arg-type]
        E_NOTIMPL,
        ("priority", "7"),
    ),
    Case(
        "set-priority-minus-1",
        lambda c: setattr(c.job, "priority", -1),
        E_NOTIMPL,
        ("priority",),
    ),
    Case(
        "create-bad-type",
        lambda c: c.mgr.create_job("x", 7),  # type: ignore[arg-type]
        E_INVALIDARG,
        ("job type",),
    ),
    # settings
    Case(
        "notify-flags-unknown-bit",
        lambda c: setattr(c.job, "notify_flags", 0x40),
        E_NOTIMPL,
        ("notify flags", "0x40"),
    ),
    Case(
        "notify-flags-negative",
        lambda c: setattr(c.job, "notify_flags", -1),
        E_NOTIMPL,
        ("notify flags",),
    ),
    Case(
        "notify-cmd-relative-program",
        lambda c: c.job.set_notify_cmd_line("sh", "sh -c true"),
        E_INVALIDARG,
        ("full path",),
    ),
    Case(
        "retry-delay-negative",
        lambda c: setattr(c.job, "minimum_retry_delay", -1),
        E_INVALIDARG,
        ("minimum_retry_delay",),
    ),
    Case(
        "no-progress-timeout-nan",
        lambda c: setattr(c.job, "no_progress_timeout", float("nan")),
        E_INVALIDARG,
        ("no_progress_timeout",),
    ),
    Case(
        "headers-malformed",
        lambda c: c.job.set_custom_headers("this is not a header"),
        E_INVALIDARG,
        ("malformed", "Name: value"),
    ),
    Case(
        "auth-bad-target",
        lambda c: c.job.set_credentials(9, AuthScheme.BASIC, "u", "p"),
        BG_E_INVALID_AUTH_TARGET,
        ("target",),
    ),
    Case(
        "auth-bad-scheme",
        lambda c: c.job.set_credentials(AuthTarget.SERVER, 9, "u", "p"),
        BG_E_INVALID_AUTH_SCHEME,
        ("scheme",),
    ),
    Case(
        "auth-ntlm",
        lambda c: c.job.set_credentials(AuthTarget.SERVER, AuthScheme.NTLM, "u", "p"),
        E_NOTIMPL,
        ("NTLM",),
    ),
    Case(
        "proxy-bad-usage",
        lambda c: c.job.set_proxy_settings(9),
        E_NOTIMPL,
        ("proxy usage",),
    ),
    Case(
        "proxy-override-without-list",
        lambda c: c.job.set_proxy_settings(ProxyUsage.OVERRIDE),
        E_INVALIDARG,
        ("OVERRIDE", "proxy list"),
    ),
    Case(
        "proxy-list-without-override",
        lambda c: c.job.set_proxy_settings(ProxyUsage.NO_PROXY, "proxy:8080"),
        E_INVALIDARG,
        ("OVERRIDE",),
    ),
    # ranges
    Case(
        "ranges-overlap",
        lambda c: c.job.add_file_with_ranges(c.url(), c.dest / "r.bin", [(0, 100), (50, 100)]),
        BG_E_OVERLAPPING_RANGES,
        ("overlap",),
    ),
    Case(
        "ranges-eof-then-more",
        lambda c: c.job.add_file_with_ranges(c.url(), c.dest / "r.bin", [(0, None), (100, 10)]),
        BG_E_OVERLAPPING_RANGES,
        ("overlap",),
    ),
    Case(
        "ranges-zero-length",
        lambda c: c.job.add_file_with_ranges(c.url(), c.dest / "r.bin", [(0, 0)]),
        BG_E_INVALID_RANGE,
        ("length",),
    ),
    Case(
        "ranges-negative-offset",
        lambda c: c.job.add_file_with_ranges(c.url(), c.dest / "r.bin", [(-1, 10)]),
        BG_E_INVALID_RANGE,
        ("offset",),
    ),
    Case(
        "ranges-none",
        lambda c: c.job.add_file_with_ranges(c.url(), c.dest / "r.bin", []),
        E_INVALIDARG,
        ("at least one range",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx: Ctx, store: Path) -> None:
    """The call raises BitsError(code) with a readable message and changes nothing."""
    queue_before = queue_snapshot(ctx.mgr)
    rows_before = store_rows(store, ctx.job.id)
    disk_before = folder(ctx.dest)
    tmp_before = sorted(os.listdir(ctx.tmp))
    with pytest.raises(BitsError) as info:
        case.action(ctx)
    err = info.value
    assert err.code == case.code, f"{err!r}"
    text = str(err)
    assert text.startswith(f"{err.name} (0x{case.code:08X})")
    for word in case.words:
        assert word in text, f"{word!r} not in {text!r}"
    if case.secret is not None:
        assert case.secret not in text and case.secret not in repr(err)
    assert queue_snapshot(ctx.mgr) == queue_before
    assert store_rows(store, ctx.job.id) == rows_before
    assert folder(ctx.dest) == disk_before
    assert sorted(os.listdir(ctx.tmp)) == tmp_before


def test_unwritable_folder(ctx: Ctx, store: Path) -> None:
    """A folder the user may not write to: E_ACCESSDENIED, nothing added."""
    if os.geteuid() == 0:
        pytest.skip("running as root: every folder is writable, os.access says so")
    locked = ctx.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        before = store_rows(store, ctx.job.id)
        with pytest.raises(BitsError) as info:
            ctx.job.add_file(ctx.url(), locked / "a.bin")
        assert info.value.code == E_ACCESSDENIED
        assert "not writable" in str(info.value)
        assert store_rows(store, ctx.job.id) == before
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


def test_bad_input_keeps_job_usable(ctx: Ctx, server: FileServer) -> None:
    """After a refused add_file_set the job still takes good files and transfers them."""
    with pytest.raises(BitsError):
        ctx.job.add_file_set([(ctx.url("ok.bin"), ctx.dest / "ok.bin"), ("", ctx.dest / "x")])
    assert [f.local_name for f in ctx.job.files] == [str(ctx.dest / "first.bin")]
    ctx.job.set_remote_name(0, server.add_random_file("first.bin", 1000))
    ctx.job.add_file(server.add_random_file("ok.bin", 500), ctx.dest / "ok.bin")
    ctx.job.resume()
    assert ctx.job.wait(timeout=15) is bitsnb.JobState.TRANSFERRED
    assert ctx.job.complete() == 0
    assert (ctx.dest / "ok.bin").read_bytes() == server.path("ok.bin").read_bytes()


# -- the store ---------------------------------------------------------------------------------
def _loop_threads() -> int:
    return sum(t.name == "bitsnb-loop" for t in threading.enumerate())


def test_corrupt_store(tmp_path: Path) -> None:
    """A file of garbage bytes: BitsError saying the store is corrupt; the file is untouched
    and no loop thread is left behind."""
    path = tmp_path / "garbage.db"
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    threads = _loop_threads()
    with pytest.raises(BitsError) as info:
        bitsnb.Manager(store=path)
    text = str(info.value)
    assert "garbage.db" in text
    assert "corrupt" in text or "not a bitsnb database" in text
    assert path.read_bytes() == garbage
    assert sorted(os.listdir(tmp_path)) == ["garbage.db"]
    assert _loop_threads() == threads


def _newer_store(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute("INSERT INTO future VALUES ('from the future')")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()


def test_store_from_newer_schema(tmp_path: Path) -> None:
    """A store written by a newer bitsnb: BitsError that says so; its data and version stay."""
    path = tmp_path / "future.db"
    _newer_store(path)
    threads = _loop_threads()
    with pytest.raises(BitsError) as info:
        bitsnb.Manager(store=path)
    text = str(info.value)
    assert "99" in text and "newer" in text and "upgrade" in text
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99
        assert db.execute("SELECT x FROM future").fetchall() == [("from the future",)]
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["future"]
    finally:
        db.close()
    assert _loop_threads() == threads


def test_store_from_newer_schema_is_not_modified(tmp_path: Path) -> None:
    """Refusing a newer store must leave its bytes exactly as they were."""
    path = tmp_path / "future.db"
    _newer_store(path)
    before = path.read_bytes()
    with pytest.raises(BitsError):
        bitsnb.Manager(store=path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["future.db"]


def test_store_path_is_a_folder(tmp_path: Path) -> None:
    """A folder where the store file should be: a BitsError naming the path."""
    with pytest.raises(BitsError) as info:
        bitsnb.Manager(store=tmp_path)
    assert str(tmp_path) in str(info.value)


def test_job_type_of_upload_rejects_folder_source(ctx: Ctx) -> None:
    """An upload's local file must exist (ERROR_FILE_NOT_FOUND), checked before anything is added."""
    ctx.job.cancel()  # stay within max_jobs_per_user
    up = ctx.mgr.create_job("up", JobType.UPLOAD)
    with pytest.raises(BitsError) as info:
        up.add_file(ctx.url("u"), ctx.dest / "no-such-source.bin")
    assert info.value.code == 0x80070002
    assert "does not exist" in str(info.value)
    assert up.files == []
