"""What the blocking ``Manager`` and ``Job`` share: the loop thread and the way calls cross it.

A ``Job`` holds its manager's ``Bridge`` rather than reaching into the ``Manager``: one trip
through the loop per queue operation (retried here while another process holds the store's
lock), a coroutine run to its end, and the blocking handle of an ``AsyncJob`` for callbacks.
Managers still open at exit are closed here (their data stays for next time).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ._job import AsyncJob
from ._persist import call_patiently
from ._runtime import LoopThread

__all__ = ["WINDOWS_ONLY", "Bridge", "closed", "keep_open"]

_T = TypeVar("_T")

# the Windows-only BITS calls a Job answers with E_NOTIMPL (set_peer_caching_flags, ...)
WINDOWS_ONLY = frozenset(
    {
        "set_peer_caching_flags",
        "set_file_acl_flags",
        "set_client_certificate",
        "set_helper_token",
        "get_owner_integrity_level",
    }
)


class _Closeable(Protocol):
    def close(self) -> None: ...


_open: weakref.WeakSet[_Closeable] = weakref.WeakSet()


def keep_open(mgr: _Closeable) -> None:
    """*mgr* is open: close it at interpreter exit unless it was closed before."""
    _open.add(mgr)


def closed(mgr: _Closeable) -> None:
    """*mgr* closed: nothing left to do for it at exit."""
    _open.discard(mgr)


@atexit.register
def _close_all() -> None:
    for mgr in list(_open):
        try:
            mgr.close()
        except Exception:  # interpreter shutdown: best effort
            pass


class Bridge:
    """The loop thread of one manager, as its blocking handles use it."""

    __slots__ = ("busy_timeout", "runtime", "wrap")

    def __init__(
        self, runtime: LoopThread, busy_timeout: float, wrap: Callable[[AsyncJob], object]
    ) -> None:
        self.runtime = runtime
        self.busy_timeout = busy_timeout
        self.wrap = wrap  # the blocking Job of an AsyncJob (for notify callbacks)

    def refuse_here(self) -> None:
        """Raise what every blocking call raises on the loop's own thread or once closed."""
        if self.runtime.in_loop_thread or not self.runtime.running:
            self.runtime.call(_nothing)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run *coro* on the loop and block until it is done."""
        return self.runtime.run(coro, timeout)

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Schedule *coro* on the loop; a thread-safe future of its result."""
        return self.runtime.submit(coro)

    def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a queue operation that never waits with one trip through the loop; while
        another process holds the store's lock, retry here (the loop never waits on it)."""
        return call_patiently(self.busy_timeout, lambda: self.runtime.call(fn, *args))


def _nothing() -> None:
    """A call that does nothing: ``LoopThread.call`` refuses it where it refuses any."""
