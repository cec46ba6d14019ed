"""``ThreadedServer``: what bitsnb's test servers share (a loopback server run in daemon threads).

A lock and condition, the injected faults (one ``FaultBook``), the request log with bounded
waits on it, start/stop/restart and the context manager, and URLs. ``FileServer`` serves files
with ``http.server``; ``UploadServer`` runs the BITS upload app under uvicorn. Each only adds
how it serves and which fault kinds it can apply.
"""

from __future__ import annotations

import fnmatch
import threading
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from bitsnb.testing._faults import Fault, FaultBook

__all__ = ["LoggedRequest", "ThreadedServer"]


class LoggedRequest(Protocol):
    """What the base needs of a request record: its path, whether it ended, a snapshot copy."""

    path: str
    finished: bool

    def copy(self) -> Self: ...


R = TypeVar("R", bound=LoggedRequest)


class ThreadedServer(Generic[R]):
    """The shared half of a test server; subclasses implement ``start``, ``stop``, ``base_url``."""

    fault_kinds: frozenset[str] = frozenset()
    """The ``FaultKind``s this server applies (``inject`` refuses the others)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._faults = FaultBook(self.fault_kinds)
        self._records: list[R] = []
        self._inflight = 0

    # -- lifecycle (the subclass serves) ---------------------------------------------------------

    def start(self) -> Self:
        """Serve in daemon threads; returns self."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and join the threads (bounded)."""
        raise NotImplementedError

    def restart(self) -> Self:
        """``stop()`` then ``start()`` (servers that can restart keep their port and data)."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def root(self) -> Path:
        """The folder served from (downloads) or written to (uploads)."""
        return self._root

    def url(self, name: str) -> str:
        """URL of ``name`` (percent-quoted, "/" kept)."""
        return f"{self.base_url}/{urllib.parse.quote(name.lstrip('/'))}"

    # -- faults ----------------------------------------------------------------------------------

    def inject(self, name_glob: str, fault: Fault) -> None:
        """Apply ``fault`` to requests whose path (no leading "/") matches the fnmatch glob."""
        with self._lock:
            self._faults.add(name_glob, fault)

    def clear_faults(self) -> None:
        """Forget all injected faults, used up or not."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str, packet: str | None = None) -> Fault | None:
        with self._lock:
            return self._faults.take(path, packet)

    # -- request log -----------------------------------------------------------------------------

    def _begin(self, rec: R) -> None:
        with self._lock:
            self._records.append(rec)
            self._inflight += 1

    def _finish(self, rec: R) -> None:
        with self._lock:
            rec.finished = True
            self._inflight -= 1
            self._cond.notify_all()

    @property
    def requests(self) -> list[R]:
        """Snapshot (copies) of the logged requests, oldest first."""
        with self._lock:
            return [rec.copy() for rec in self._records]

    def _matching(self, name_glob: str) -> list[R]:
        glob = name_glob.lstrip("/")
        return [rec for rec in self._records if fnmatch.fnmatchcase(rec.path.lstrip("/"), glob)]

    def reset_log(self) -> None:
        """Forget the logged requests (requests in flight keep counting, but are not listed)."""
        with self._lock:
            self._records.clear()

    def _stopped_now(self) -> bool:
        return False

    def wait_requests(self, count: int, timeout: float = 10.0) -> list[R]:
        """Wait until ``count`` logged requests have finished; returns the log snapshot."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(rec.finished for rec in self._records) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped_now():
                    raise TimeoutError(f"fewer than {count} requests finished in {timeout} s")
                self._cond.wait(left)
            return [rec.copy() for rec in self._records]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being answered (idle keep-alive connections do not count)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"server still busy after {timeout} s")
                self._cond.wait(left)
