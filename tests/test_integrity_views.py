"""Integrity in the views: the files frame's known_hash, hash and verified columns, and the
job panel saying "verified" (or showing the mismatch)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bitsnb
from bitsnb import JobState
from bitsnb.frames import files_to_frame
from bitsnb.notebook import job_panel
from bitsnb.notebook._commlog import CommLog, counting_comms
from bitsnb.testing import Fault, FileServer

TIMEOUT = 20.0


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for(pred: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def comms() -> Iterator[CommLog]:
    """Widgets send into a counting comm (no kernel)."""
    with counting_comms() as log:
        yield log


@pytest.fixture
def panels() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for p in made:
        p.close()


def three_files(mgr: bitsnb.Manager, server: FileServer, dest: Path) -> tuple[bitsnb.Job, str]:
    """A job of three files: one with a right known hash, one corrupted against its known
    hash, one with none."""
    urls = [server.add_random_file(f"f{i}.bin", 40_000, seed=i) for i in range(3)]
    known = [sha256(server.path(f"f{i}.bin")) for i in range(2)]
    server.inject("f1.bin", Fault.corrupt(seed=9))
    job = mgr.create_job("views")
    job.add_file_set(
        [
            (urls[0], dest / "f0.bin", known[0]),
            (urls[1], dest / "f1.bin", known[1]),
            (urls[2], dest / "f2.bin"),
        ]
    )
    return job, known[1]


def test_files_frame_columns(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    """known_hash and hash as text, verified True / False / <NA>."""
    job, _ = three_files(manager, server, dest)
    job.resume()
    assert job.wait(TIMEOUT) is JobState.ERROR
    df = files_to_frame(job)
    assert str(df["known_hash"].dtype) == "string" and str(df["verified"].dtype) == "boolean"
    assert df["known_hash"].isna().tolist() == [False, False, True]
    assert df.loc[0, "hash"] == df.loc[0, "known_hash"]
    assert df["verified"].tolist()[:2] == [True, False]
    assert df["verified"].isna().tolist()[2]


def test_panel_verified_and_mismatch(
    manager: bitsnb.Manager, server: FileServer, dest: Path, panels: list[Any]
) -> None:
    """ERROR: the panel's error line names the file with expected and got. Resumed and
    completed: the panel says how many files were verified; all of them: "verified"."""
    job, bad = three_files(manager, server, dest)
    panel = job_panel(job)
    panels.append(panel)
    job.resume()
    assert job.wait(TIMEOUT) is JobState.ERROR
    wait_for(lambda: panel.state_label.value == "ERROR", "the panel shows ERROR")
    assert "BG_E_VALIDATION_FAILED" in panel.error_text
    assert bad.split(":")[1] in panel.error_text and "got" in panel.error_text
    assert "f1.bin" in panel.html()
    job.resume()
    assert job.wait(TIMEOUT) is JobState.TRANSFERRED
    job.complete()
    wait_for(lambda: panel.state_label.value == "ACKNOWLEDGED", "the panel shows ACKNOWLEDGED")
    assert "2 of 3 files verified" in panel.stats_label.value
    assert "2 of 3 files verified" in panel.text() and "2 of 3 files verified" in panel.html()

    url = server.add_random_file("one.bin", 10_000, seed=5)
    one = manager.create_job("one")
    one.add_file(url, dest / "one.bin", known_hash=sha256(server.path("one.bin")))
    panel1 = job_panel(one)
    panels.append(panel1)
    one.resume()
    assert one.wait(TIMEOUT) is JobState.TRANSFERRED
    wait_for(lambda: "verified" in panel1.stats_label.value, "the panel says verified")
    assert "files verified" not in panel1.text() and panel1.text().rstrip().endswith("verified")
