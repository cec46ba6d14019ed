"""The loop thread under the blocking API: ``run`` for coroutines, ``call`` for plain functions."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

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
