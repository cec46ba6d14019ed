"""A host's connection slots: a first-come-first-served semaphore whose limit changes live.

``asyncio.Semaphore`` has a fixed count; a host's limit is ``max_connections_per_host`` on one
machine, but on a shared PostgreSQL store it is this manager's share of the cluster's slots
(``_cluster_limits``), which grows and shrinks while connections wait. Lowering the limit takes
nothing from a connection that holds a slot: it only keeps new ones waiting until the count in
use is under the new limit. ``wanted`` (held + waiting) is the demand a share is sized by.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType

__all__ = ["HostSlots"]


class HostSlots:
    """Connection slots of one host: ``limit`` at once, waiters served in arrival order."""

    def __init__(
        self,
        limit: int,
        *,
        on_starved: Callable[[], None] | None = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self._limit = max(0, limit)
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.on_starved = on_starved  # called when a caller waits on a limit of 0 (no share yet)
        self.on_drained = on_drained  # called when a limit lowered under the use is met again

    def __repr__(self) -> str:
        return f"HostSlots(limit={self._limit}, in_use={self._in_use}, waiting={self.waiting})"

    @property
    def limit(self) -> int:
        """How many slots may be held at once."""
        return self._limit

    @property
    def in_use(self) -> int:
        """How many slots are held now (may exceed a limit lowered since they were taken)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """How many callers wait for a slot."""
        return sum(1 for f in self._waiters if not f.done())

    @property
    def wanted(self) -> int:
        """Slots held plus slots waited for: the demand a cluster share is sized by."""
        return self._in_use + self.waiting

    def locked(self) -> bool:
        """True if ``acquire`` would wait now."""
        return self._in_use >= self._limit or any(not f.done() for f in self._waiters)

    def set_limit(self, limit: int) -> None:
        """Change the limit now; waiters that now fit are let in, first come first."""
        self._limit = max(0, limit)
        self._wake()

    async def acquire(self) -> None:
        """Wait for a slot (first come, first served)."""
        if not self.locked():
            self._in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._limit == 0 and self.on_starved is not None:
            self.on_starved()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted as we were cancelled: hand it on
            raise
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def release(self) -> None:
        """Give a slot back; the next waiter that fits gets it."""
        if self._in_use <= 0:
            raise ValueError("HostSlots released more often than acquired")
        self._in_use -= 1
        if self._in_use == self._limit and self.on_drained is not None:
            self.on_drained()  # held above a lowered limit until now: the share can go back
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self._limit:
            fut = self._waiters.popleft()
            if fut.done():  # cancelled while waiting
                continue
            self._in_use += 1
            fut.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
