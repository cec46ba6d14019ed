"""A private event loop on a daemon thread: the sync API's engine room.

Calls from other threads run coroutines there and block for the result, so transfers keep
going while the calling thread (a notebook cell, a script) blocks or sleeps. No loop patching.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["LoopThread"]


class _Raised:
    """What ``call`` hands back when *fn* raised (kept apart from a returned exception)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class LoopThread:
    """One asyncio loop running forever on its own daemon thread."""

    def __init__(self, name: str = "bitsnb-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        # drain what is left so nothing warns about pending tasks
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    @property
    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    @property
    def running(self) -> bool:
        """True until stop() was called."""
        return self._thread.is_alive() and not self.loop.is_closed()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule *coro* on the loop; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run *coro* on the loop and block until it is done (Ctrl-C cancels it)."""
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError(
                "A blocking bitsnb call was made from bitsnb's own loop thread (e.g. inside "
                "a callback); use the AsyncJob methods there, or run the callback in a thread."
            )
        if not self.running:
            coro.close()
            raise RuntimeError("The manager is closed.")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the plain function *fn(*args)* on the loop and block until it returns.

        For work that never waits (store writes, queue changes): one trip through the loop
        instead of a task, two future hand-offs and a second loop turn. The result comes back
        through a lock the loop thread releases. Ctrl-C stops the wait, not *fn*, which is
        short and runs to its end.
        """
        if self.in_loop_thread:
            raise RuntimeError(
                "A blocking bitsnb call was made from bitsnb's own loop thread (e.g. inside "
                "a callback); use the AsyncJob methods there, or run the callback in a thread."
            )
        if not self.running:
            raise RuntimeError("The manager is closed.")
        done = threading.Lock()
        done.acquire()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append(fn(*args))
            except BaseException as exc:
                outcome.append(_Raised(exc))
            finally:
                done.release()

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:  # closed between the check and here
            raise RuntimeError("The manager is closed.") from None
        while not done.acquire(timeout=1.0):
            if not self._thread.is_alive():  # stopped before it got to *fn*
                raise RuntimeError("The manager is closed.")
        result = outcome[0]
        if isinstance(result, _Raised):
            raise result.exc
        return result  # type: ignore[no-any-return]

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call *fn* on the loop thread, soon, without waiting."""
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and join the thread."""
        if self.loop.is_closed():
            return
        if not self.in_loop_thread:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
