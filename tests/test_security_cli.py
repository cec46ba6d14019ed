"""The command line's bitsadmin parity and input safety (issue 18: CLI parity, security 6 and 9).

Runs ``bitsnb._cli.main()`` in this process (the ``here`` fixture of test_cli) against the real
loopback file and upload servers, real files and the test's own store; one flow crosses a
process boundary with ``python -m bitsnb``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_cli import Cli, here, sub  # noqa: F401  (fixtures)

import bitsnb
from bitsnb import _cli
from bitsnb.testing import FileServer

E_INVALIDARG = 0x80070057


def new_job(here: Cli, name: str = "job", *extra: str) -> str:  # noqa: F811
    return here.ok("create", name, *extra).strip()


# -- get* verbs print one value ----------------------------------------------------------------
def test_get_verbs_print_one_value_each(
    here: Cli,  # noqa: F811
    server: FileServer,
    dest: Path,
) -> None:
    job = new_job(here, "getters", "--priority", "low", "--description", "about it")
    here.ok("addfile", job, server.add_random_file("g.bin", 1234), dest / "g.bin")
    values = {
        "getstate": "SUSPENDED",
        "gettype": "DOWNLOAD",
        "getpriority": "LOW",
        "getdisplayname": "getters",
        "getdescription": "about it",
        "getfilestotal": "1",
        "getfilestransferred": "0",
        "getbytestransferred": "0",
        "getbytestotal": "-1",  # unknown until the transfer starts
        "geterror": "",
        "geterrorcount": "0",
        "getnotifycmdline": "",
        "getproxyusage": "PRECONFIG",
        "getdynamic": "false",
        "getcompletiontime": "-",
    }
    for verb, value in values.items():
        assert here.ok(verb, job).splitlines() == ([value] if value else [""]), verb
    assert here.ok("getminretry", job).strip() == "600.0"
    assert here.ok("getcreationtime", job).strip().startswith("20")
    assert here.ok("getowner", job).strip()
    here.fails(3, "getstate", "no-such-job")


# -- set verbs ---------------------------------------------------------------------------------
def test_notify_verbs(here: Cli) -> None:  # noqa: F811
    job = new_job(here)
    here.ok("setnotifycmdline", job, "/bin/echo", "done", "%1")
    assert here.ok("getnotifycmdline", job).strip() == "/bin/echo done %1"
    here.fails(3, "setnotifycmdline", job, "relative/prog")  # BITS wants a full path
    here.ok("setnotifycmdline", job, "--clear")
    assert here.ok("getnotifycmdline", job).strip() == ""
    here.fails(2, "setnotifycmdline", job)
    here.ok("setnotifyflags", job, "job_transferred,job_error")
    assert here.ok("getnotifyflags", job).strip() == "0x3"
    here.ok("setnotifyflags", job, "0x10")
    assert here.ok("getnotifyflags", job).strip() == "0x10"
    here.fails(2, "setnotifyflags", job, "loud")
    here.fails(2, "setnotifyflags", job, "0x400")


def test_credential_verbs(here: Cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    job = new_job(here)
    proc = here("setcredentials", job, "server", "basic", "ann:secret")
    assert proc.returncode == 0 and "memory only" in proc.stderr
    assert "secret" not in proc.stdout + proc.stderr
    # in this process the job is gone from memory after the verb: nothing to remove
    assert "no server BASIC credentials" in here.ok("removecredentials", job, "server", "basic")
    here.fails(2, "setcredentials", job, "elsewhere", "basic", "ann:x")
    here.fails(2, "removecredentials", job, "server", "kerberos")


def test_replaceremoteprefix_addfilewithranges_and_reply_verbs(
    here: Cli,  # noqa: F811
    server: FileServer,
    dest: Path,
) -> None:
    job = new_job(here)
    here.ok("addfile", job, "http://old.example/a.bin", dest / "a.bin")
    assert "changed" in here.ok("replaceremoteprefix", job, "http://old.example/", server.url(""))
    assert here.json("info", job)["files"][0]["remote_name"] == server.url("a.bin")
    out = here.ok("addfilewithranges", job, server.url("r.bin"), dest / "r.bin", "0:10,100:eof")
    assert "2 ranges" in out
    assert here.ok("getfilestotal", job).strip() == "2"
    here.fails(2, "addfilewithranges", job, server.url("r.bin"), dest / "r2.bin", "0-10")
    reply = new_job(here, "reply", "--type", "upload-reply")
    here.ok("setreplyfilename", reply, dest / "reply.json")
    assert here.ok("getreplyfilename", reply).strip() == str(dest / "reply.json")
    here.fails(5, "setreplyfilename", job, dest / "x")  # not an upload-reply job: E_NOTIMPL
    here.fails(3, "getreplydata", reply)  # no reply yet


def test_takeownership(here: Cli) -> None:  # noqa: F811
    job = new_job(here)
    proc = here("takeownership", job)
    if os.geteuid() == 0:
        assert proc.returncode == 0 and "owner" in proc.stdout
    else:
        assert proc.returncode == 3 and "E_ACCESSDENIED" in proc.stderr


def test_reset_cancels_every_job_of_the_user(here: Cli) -> None:  # noqa: F811
    jobs = [new_job(here, f"j{i}") for i in range(3)]
    assert here.ok("reset").strip() == "3 of 3 jobs cancelled"
    assert {j["id"]: j["state"] for j in here.json("list", "--all")} == dict.fromkeys(
        jobs, "CANCELLED"
    )
    assert here.ok("reset").strip() == "0 of 0 jobs cancelled"


# -- transfer options -----------------------------------------------------------------------------
def test_transfer_default_priority_is_normal_as_download(
    here: Cli,  # noqa: F811
    server: FileServer,
    dest: Path,
) -> None:
    """`transfer` and `bitsnb.download` agree: NORMAL (bitsadmin /transfer's default)."""
    url = server.add_random_file("p.bin", 100)
    data = here.json("transfer", url, dest, "--no-wait")
    assert data["priority"] == "NORMAL"
    assert bitsnb.download.__kwdefaults__["priority"] is bitsnb.JobPriority.NORMAL
    assert "default normal" in here.ok("transfer", "--help")


def test_transfer_options_reach_the_job(
    here: Cli,  # noqa: F811
    server: FileServer,
    dest: Path,
) -> None:
    url = server.add_random_file("o.bin", 100)
    data = here.json(
        "transfer",
        url,
        dest,
        "--no-wait",
        "--retry-interval",
        "7",
        "--dynamic",
        "--proxy",
        "http://proxy.example:3128",
        "--bypass",
        "localhost",
        "--notify-cmd",
        "/bin/true job-done",
        "--credential",
        "ann:pw",
    )
    job = data["id"]
    assert here.ok("getminretry", job).strip() == "7.0"
    assert here.ok("getdynamic", job).strip() == "true"
    assert here.ok("getproxyusage", job).strip() == "OVERRIDE"
    assert here.ok("getproxylist", job).strip() == "http://proxy.example:3128"
    assert here.ok("getproxybypasslist", job).strip() == "localhost"
    assert here.ok("getnotifycmdline", job).strip() == "/bin/true job-done"


def test_transfer_upload(here: Cli, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("uvicorn")
    from bitsnb.testing import UploadServer

    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(50_000))
    with UploadServer(tmp_path / "srv") as srv:
        out = here.ok("transfer", "--upload", srv.url("in/up.bin"), src, "--retry-interval", "1")
        assert "ACKNOWLEDGED" in out
        assert srv.path("in/up.bin").read_bytes() == src.read_bytes()
    here.fails(2, "transfer", "--upload", "http://h/a", "http://h/b", src)


# -- input safety -------------------------------------------------------------------------------
def test_addfileset_refuses_devices_fifos_and_huge_lists(
    here: Cli,  # noqa: F811
    tmp_path: Path,
) -> None:
    job = new_job(here)
    proc = here.fails(3, "addfileset", job, "/dev/zero")
    assert "not a regular file" in proc.stderr
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    result: list[subprocess.CompletedProcess[str]] = []
    worker = threading.Thread(target=lambda: result.append(here("addfileset", job, fifo)))
    worker.start()
    worker.join(30)  # a blocking open of a FIFO with no writer would never return
    if worker.is_alive():  # unblock the reader so the test can end, then fail
        with open(fifo, "w"):
            pass
        worker.join(30)
        pytest.fail("addfileset on a FIFO hung")
    assert result[0].returncode == 3 and "not a regular file" in result[0].stderr
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as fh:
        fh.truncate(_cli.MAX_FILE_SET_BYTES + 1)
    assert "larger than" in here.fails(3, "addfileset", job, huge).stderr
    assert here.json("info", job)["files"] == []


@pytest.mark.parametrize("char", ["\n", "\x1b", "\r", "\x07"])
def test_names_from_urls_with_control_characters_are_refused(
    here: Cli,  # noqa: F811
    dest: Path,
    char: str,
) -> None:
    encoded = f"%{ord(char):02X}"
    proc = here.fails(3, "transfer", f"http://127.0.0.1:9/a{encoded}b.bin", dest, "--no-wait")
    assert "E_INVALIDARG" in proc.stderr
    assert char not in proc.stderr.removesuffix("\n")
    assert here.json("list", "--all") == []


def test_list_and_info_escape_control_characters(here: Cli, dest: Path) -> None:  # noqa: F811
    evil = "x\x1b[2J\x1b]0;pwned\x07\nFAKE LINE\u202e"
    job = new_job(here, evil)
    outputs = [here.ok("list"), here.ok("info", job), here.ok("getdisplayname", job)]
    for out in outputs:
        for raw in ("\x1b", "\x07", "\u202e"):
            assert raw not in out
        assert "FAKE LINE" not in [line.strip() for line in out.splitlines()]
        assert "\\x1b[2J" in out
    assert here.json("info", job)["display_name"] == evil  # JSON keeps the value, escaped


def test_job_verbs_show_a_name_escaped_once(here: Cli, dest: Path) -> None:  # noqa: F811
    """Every verb on one job prints ``job ID 'NAME': ...`` with the name through repr (which
    escapes every control and format character), not escaped twice."""
    job = new_job(here, "x\x1b[2J\u202e")
    outputs = [here.ok("suspend", job), here.ok("setnotifyflags", job, "3")]
    for out in outputs:
        assert "\x1b" not in out and "\u202e" not in out
        assert r"'x\x1b[2J\u202e'" in out  # repr's escapes, once


def test_non_utf8_arguments_are_invalidarg_not_internal_errors(
    here: Cli,  # noqa: F811
    server: FileServer,
    tmp_path: Path,
) -> None:
    """Surrogate-escaped bytes (what Python makes of a non-UTF-8 argv) exit 3, E_INVALIDARG."""
    proc = here.fails(3, "create", "bad\udce9")
    assert "E_INVALIDARG" in proc.stderr and "Traceback" not in proc.stderr
    job = new_job(here)
    proc = here.fails(3, "addfile", job, server.url("x.bin"), str(tmp_path / "\udcff.bin"))
    assert "E_INVALIDARG" in proc.stderr
    assert here.json("info", job)["files"] == []


def test_non_utf8_argv_from_a_real_process(tmp_path: Path) -> None:
    env = dict(os.environ, BITSNB_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, "-m", "bitsnb", "create", b"bad\xe9"],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert b"E_INVALIDARG" in proc.stderr and b"Traceback" not in proc.stderr
