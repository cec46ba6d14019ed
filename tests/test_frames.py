"""bitsnb.frames: the queue, a job's files and the error table as typed DataFrames."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pandas as pd
import pytest

import bitsnb
from bitsnb import JobPriority, JobState, helpers
from bitsnb._errors import all_errors
from bitsnb.frames import errors_frame, files_to_frame, jobs_frame, jobs_to_frame
from bitsnb.testing import FileServer

TIMEOUT = 20.0
STATES = ["QUEUED", "CONNECTING", "TRANSFERRING", "SUSPENDED", "ERROR", "TRANSIENT_ERROR",
          "TRANSFERRED", "ACKNOWLEDGED", "CANCELLED"]  # fmt: skip
JOB_DTYPES = {
    "display_name": "string",
    "type": "category",
    "state": "category",
    "priority": "category",
    "bytes_total": "Int64",
    "bytes_transferred": "Int64",
    "percent": "Float64",
    "files_total": "Int64",
    "files_transferred": "Int64",
    "created": "datetime64[ns, UTC]",
    "modified": "datetime64[ns, UTC]",
    "transfer_completed": "datetime64[ns, UTC]",
    "error_code": "string",
    "error_name": "string",
    "error_description": "string",
    "owner": "string",
    "max_bandwidth": "Float64",
    "rate": "Float64",
    "worker": "string",
}


def check_job_dtypes(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(JOB_DTYPES)
    assert {c: str(t) for c, t in frame.dtypes.items()} == JOB_DTYPES
    assert frame.index.name == "job_id"
    state = frame["state"].dtype
    assert isinstance(state, pd.CategoricalDtype) and state.ordered
    assert list(state.categories) == STATES
    prio = frame["priority"].dtype
    assert isinstance(prio, pd.CategoricalDtype) and prio.ordered
    assert list(prio.categories) == ["FOREGROUND", "HIGH", "NORMAL", "LOW"]
    assert list(frame["type"].dtype.categories) == ["DOWNLOAD", "UPLOAD", "UPLOAD_REPLY"]


def test_jobs_frame_values_and_dtypes(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    done = manager.create_job("done", priority=JobPriority.HIGH)
    done.add_file(server.add_random_file("a.bin", 50_000, seed=1), dest / "a.bin")
    done.resume()
    failed = manager.create_job("failed", priority=JobPriority.LOW)
    failed.add_file(server.url("missing.bin"), dest / "missing.bin")
    failed.resume()
    waiting = manager.create_job("not started")
    waiting.add_file(server.add_random_file("b.bin", 10, seed=2), dest / "b.bin")
    empty = manager.create_job("empty", priority=JobPriority.FOREGROUND)
    assert done.wait(TIMEOUT) is JobState.TRANSFERRED
    assert failed.wait(TIMEOUT) is JobState.ERROR

    frame = manager.enum_jobs().to_frame()
    check_job_dtypes(frame)
    assert list(frame.index) == [str(j.id) for j in (done, failed, waiting, empty)]

    row = frame.loc[str(done.id)]
    assert row["display_name"] == "done"
    assert row["state"] == "TRANSFERRED" and row["priority"] == "HIGH"
    assert row["bytes_total"] == 50_000 and row["bytes_transferred"] == 50_000
    assert row["percent"] == 100.0
    assert row["files_total"] == 1 and row["files_transferred"] == 1
    assert row["transfer_completed"] == pd.Timestamp(done.times.transfer_completion)
    assert row["created"] == pd.Timestamp(done.times.creation)
    assert row["created"].tzinfo is not None
    assert pd.isna(row["error_code"]) and row["owner"] == done.owner

    row = frame.loc[str(failed.id)]
    assert row["state"] == "ERROR"
    assert row["error_code"] == "0x80190194"
    assert row["error_name"] == "BG_E_HTTP_ERROR_404"
    assert row["error_description"] == failed.error.description  # type: ignore[union-attr]
    assert pd.isna(row["transfer_completed"])

    row = frame.loc[str(waiting.id)]
    assert row["state"] == "SUSPENDED"
    assert row["bytes_total"] is pd.NA and row["percent"] is pd.NA
    assert row["bytes_transferred"] == 0 and row["files_total"] == 1

    row = frame.loc[str(empty.id)]
    assert row["bytes_total"] == 0 and row["files_total"] == 0
    assert row["percent"] == empty.progress.percent

    # ordered categoricals sort and compare in BITS order
    by_state = frame.sort_values("state")
    assert list(by_state["display_name"]) == ["not started", "empty", "failed", "done"]
    assert list(frame[frame["priority"] < "NORMAL"]["display_name"]) == ["done", "empty"]
    assert frame.groupby("state", observed=True).size().to_dict() == {
        "SUSPENDED": 2,
        "ERROR": 1,
        "TRANSFERRED": 1,
    }

    # async handles give the same frame
    same = jobs_to_frame([j.async_job for j in (done, failed, waiting, empty)])
    pd.testing.assert_frame_equal(same, frame)


def test_jobs_frame_helper_and_finished_jobs(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    job = manager.create_job("one")
    job.add_file(server.add_file("x.txt", b"hello"), dest / "x.txt")
    job.resume()
    assert job.wait(TIMEOUT) is JobState.TRANSFERRED
    assert job.complete() == 0
    assert len(jobs_frame(manager)) == 0
    history = jobs_frame(manager, include_finished=True)
    check_job_dtypes(history)
    assert history.loc[str(job.id), "state"] == "ACKNOWLEDGED"
    assert history.loc[str(job.id), "bytes_total"] == 5


def test_empty_frame_keeps_dtypes() -> None:
    frame = jobs_to_frame([])
    assert frame.shape == (0, len(JOB_DTYPES))
    check_job_dtypes(frame)


def test_files_frame(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    job = manager.create_job("files")
    job.add_file_set(
        [
            (server.add_random_file("one.bin", 1000, seed=3), dest / "one.bin"),
            (server.add_random_file("two.bin", 2000, seed=4), dest / "two.bin"),
        ]
    )
    before = job.files_frame()
    assert list(before.index) == [0, 1] and before.index.name == "index"
    assert {c: str(t) for c, t in before.dtypes.items()} == {
        "remote_name": "string",
        "local_name": "string",
        "bytes_total": "Int64",
        "bytes_transferred": "Int64",
        "transferred": "bool",
        "completed": "bool",
        "temporary_name": "string",
        "known_hash": "string",
        "hash": "string",
        "verified": "boolean",
        "connections": "int64",
        "worker": "string",
    }
    assert before["bytes_total"].isna().all()
    assert not before["transferred"].any()
    assert before.loc[1, "local_name"] == str(dest / "two.bin")
    assert before.loc[0, "remote_name"] == server.url("one.bin")
    assert before.loc[0, "temporary_name"].startswith(str(dest / ".BIT"))

    job.resume()
    assert job.wait(TIMEOUT) is JobState.TRANSFERRED
    after = files_to_frame(job)
    assert list(after["bytes_total"]) == [1000, 2000]
    assert list(after["bytes_transferred"]) == [1000, 2000]
    assert after["transferred"].all() and not after["completed"].any()
    job.complete()
    assert files_to_frame(job.async_job)["completed"].all()


def test_no_credentials_in_frames(manager: bitsnb.Manager, server: FileServer, dest: Path) -> None:
    job = manager.create_job("secret")
    with pytest.raises(bitsnb.BitsError):
        job.add_file(server.base_url.replace("http://", "http://user:pw@") + "/x", dest / "x")
    job.add_file(server.add_file("x", b"x"), dest / "x")
    job.set_credentials(bitsnb.AuthTarget.SERVER, bitsnb.AuthScheme.BASIC, "alice", "s3cr3t-pw")
    job.set_custom_headers({"Authorization": "Bearer t0ken-s3cr3t"})
    text = jobs_to_frame([job]).to_csv() + files_to_frame(job).to_csv()
    assert "s3cr3t" not in text and "alice" not in text


def test_errors_frame() -> None:
    frame = errors_frame()
    rows = all_errors()
    assert list(frame.columns) == ["name", "code", "description"]
    assert len(frame) == len(rows)
    assert all(str(t) == "string" for t in frame.dtypes)
    assert all(re.fullmatch(r"0x[0-9A-F]{8}", c) for c in frame["code"])
    hit = frame[frame["name"] == "BG_E_NOT_FOUND"]
    assert list(hit["code"]) == ["0x80200001"]
    assert helpers.errors_frame().equals(frame)


@pytest.mark.slow
def test_ten_thousand_jobs(store: Path) -> None:
    """10,000 jobs through one AsyncManager coroutine; shape and dtypes only (timing: bench/)."""

    async def create() -> tuple[list[bitsnb.AsyncJob], float]:
        async with bitsnb.AsyncManager(store) as amgr:
            start = time.perf_counter()
            jobs = [
                await amgr.create_job(f"job {i}", priority=JobPriority(i % 4))
                for i in range(10_000)
            ]
            return jobs, time.perf_counter() - start

    jobs, seconds = asyncio.run(create())
    print(f"created 10,000 jobs in {seconds:.2f} s")
    frame = jobs_to_frame(jobs)
    assert frame.shape == (10_000, len(JOB_DTYPES))
    check_job_dtypes(frame)
    assert frame.index.is_unique
    assert (frame["state"] == "SUSPENDED").all()
    assert frame["priority"].value_counts().to_dict() == {
        "FOREGROUND": 2500,
        "HIGH": 2500,
        "NORMAL": 2500,
        "LOW": 2500,
    }


def test_styled_jobs_reads_and_leaves_the_frame_alone(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    from bitsnb.frames import jobs_to_frame, styled_files, styled_jobs

    job = manager.create_job("styled")
    job.add_file(server.add_random_file("st.bin", 2_500_000, seed=1), str(dest / "st.bin"))
    job.resume()
    assert job.wait(20) is bitsnb.JobState.TRANSFERRED
    frame = jobs_to_frame([job])
    before = frame.copy()
    styler = styled_jobs(frame)
    html = styler.to_html()
    assert str(job.id)[:8] in html and str(job.id) in html  # short index, full id in a column
    assert list(styler.data.index) == [str(job.id)[:8]]
    assert styler.data.columns[-1] == "job_id"
    assert "2.5 MB" in html and "100%" in html and "2500000" not in html
    pd.testing.assert_frame_equal(frame, before)  # the raw typed frame is unchanged
    assert frame["bytes_total"].dtype == "Int64"
    files_html = styled_files(job.files_frame()).to_html()
    assert "2.5 MB" in files_html
