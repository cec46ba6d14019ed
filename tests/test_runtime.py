"""The loop thread under the blocking API: ``run`` for coroutines, ``call`` for plain functions,
and create_job(), which stores in the calling thread and leaves the loop to adopt the job."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import bitsnb
from bitsnb._runtime import LoopThread


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


def test_call_runs_on_the_loop_thread_and_returns(loop_thread: LoopThread) -> None:
    def where(x: int) -> tuple[str, int]:
        return threading.current_thread().name, x * 2

    assert loop_thread.call(where, 21) == ("bitsnb-loop", 42)


def test_call_raises_what_the_function_raised(loop_thread: LoopThread) -> None:
    def boom() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        loop_thread.call(boom)
    # a returned exception object is a result, not a failure
    assert isinstance(loop_thread.call(lambda: ValueError("kept")), ValueError)


def test_call_from_the_loop_thread_is_refused(loop_thread: LoopThread) -> None:
    def nested() -> str:
        try:
            loop_thread.call(lambda: None)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "own loop thread" in loop_thread.call(nested)


def test_call_after_stop_says_closed(loop_thread: LoopThread) -> None:
    loop_thread.stop()
    with pytest.raises(RuntimeError, match="closed"):
        loop_thread.call(lambda: None)


def test_blocking_create_job_is_adopted_before_anything_else(tmp_path: Path) -> None:
    """create_job() stores the job in the calling thread; the loop adopts it before its next
    look at the queue, so listeners hear "created" first and every later call sees the job."""
    events: list[tuple[str, str]] = []
    with bitsnb.Manager(store=tmp_path / "jobs.db") as mgr:
        mgr.subscribe(lambda e: events.append((e.kind, str(e.job_id))))
        job = mgr.create_job("first")
        assert job.state is bitsnb.JobState.SUSPENDED
        assert [j.id for j in mgr.enum_jobs()] == [job.id]
        assert mgr.get_job(job.id) == job
        job.add_file("http://127.0.0.1:1/x", tmp_path / "x.bin")
        assert events[0] == ("created", str(job.id))
        assert ("modified", str(job.id)) in events
        other = mgr.create_job("second")
    with bitsnb.Manager(store=tmp_path / "jobs.db") as mgr:  # both were stored on return
        assert {j.id for j in mgr.enum_jobs()} == {job.id, other.id}
        assert mgr.get_job(job.id).files[0].remote_name == "http://127.0.0.1:1/x"


def test_blocking_create_job_refused_on_the_loop_and_once_closed(tmp_path: Path) -> None:
    mgr = bitsnb.Manager(store=tmp_path / "jobs.db")
    answers: list[str] = []

    def listener(event: object) -> None:
        try:
            mgr.create_job("inside")
        except RuntimeError as exc:
            answers.append(str(exc))

    mgr.subscribe(listener)
    mgr.create_job("outside")
    mgr.enum_jobs()  # adopts "outside": its "created" event runs the listener on the loop
    assert answers and "own loop thread" in answers[0]
    mgr.close()
    with pytest.raises(RuntimeError, match="closed"):
        mgr.create_job("late")
