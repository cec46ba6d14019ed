"""Limits that hold across the cluster: this manager's shares of the hosts' connection slots
and of the background bandwidth cap, kept in a shared store (PostgreSQL) and applied here.

Every ``lease_seconds / 3`` — sooner when a connection waits on a host it has no share of
(at once, then every second while it still has none) and when the connections held above a
lowered share are down to it (so the rest goes back now) — one call to the store (``LimitShares.share_limits``, one transaction) says what this
manager wants of each limit — its demand: the connections it holds and waits for — and gets
its share back, which goes into the engine's host slots (``HostSlots.set_limit``) and the
manager bucket (``Budgets.set_cluster_rate``). A manager with nothing to fetch asks for
nothing, so its share goes to the busy ones; one whose refreshes fail past its lease uses no
share at all (the others may have reclaimed it). An idle manager that holds nothing does
not query. A SQLite store (one machine) has no such part: each manager counts its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ._buckets import Budgets
from ._engine import Engine
from ._errors import BitsError
from ._limit_shares import BANDWIDTH, LimitShares, Want, host_key
from ._models import Policy

__all__ = ["ClusterLimits", "shares_limits"]

log = logging.getLogger("bitsnb")

_WOKEN_GAP = 0.25  # seconds: refreshes asked for by waiting connections come at most this often
_STARVED_INTERVAL = 1.0  # seconds between refreshes while connections wait on a share of none


def shares_limits(store: object) -> LimitShares | None:
    """*store* as a keeper of cluster-wide shares, or None (SQLite: each manager its own)."""
    if callable(getattr(store, "share_limits", None)) and callable(
        getattr(store, "give_back_limits", None)
    ):
        return store  # type: ignore[return-value]
    return None


class ClusterLimits:
    """Keeps this manager's shares of the cluster's limits and applies them."""

    def __init__(
        self,
        store: LimitShares,
        engine: Engine,
        budgets: Budgets,
        policy: Policy,
        background_jobs: Callable[[], int],
    ) -> None:
        self._store = store
        self._background_jobs = background_jobs  # running here (an upload holds no host slot)
        self._engine = engine
        self._budgets = budgets
        self._policy = policy
        self._woken = asyncio.Event()
        self._holds = False  # the last refresh left rows of ours in the store
        self._last_ok = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0  # successful refreshes (for tests and benches)

    def start(self) -> None:
        """Host slots from the shares from now on; the refresh loop on the running loop."""
        self._engine.share_hosts(self._woken.set)
        if self._budgets.cap is not None:
            self._budgets.set_cluster_rate(0.0)  # no share before the first refresh
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bitsnb-limits")

    @property
    def interval(self) -> float:
        """Seconds between refreshes: a third of the lease, as job leases are renewed."""
        return self._policy.lease_seconds / 3

    async def aclose(self) -> None:
        """Stop refreshing and give every share back (the others take it at once)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._holds:
            with contextlib.suppress(BitsError):  # unreachable: the rows expire by themselves
                await asyncio.to_thread(self._store.give_back_limits)

    def _wants(self) -> list[Want]:
        """What this manager asks of each limit now."""
        wants: list[Want] = []
        demand = 0
        limit = self._policy.max_connections_per_host
        for origin, slots in self._engine.host_slots().items():
            wanted = slots.wanted
            demand += wanted
            if wanted or slots.limit:
                wants.append(Want(host_key(origin), limit, wanted, slots.in_use, whole=True))
        cap = self._budgets.cap
        if cap:  # None: no cap; 0: background jobs are blocked anyway
            demand = max(demand, self._background_jobs())  # uploads take from the cap too
            wants.append(Want(BANDWIDTH, cap, demand, 0.0, whole=False))
        return wants

    async def refresh(self) -> bool:
        """One refresh: ask, then apply what was granted; False if the store did not answer."""
        wants = self._wants()
        if not wants and not self._holds:
            return True  # idle and holding nothing: no query
        try:
            granted = await asyncio.to_thread(
                self._store.share_limits, wants, self._policy.lease_seconds
            )
        except BitsError as exc:
            log.debug("bitsnb: the cluster's limits were not refreshed: %s", exc)
            if time.monotonic() - self._last_ok > self._policy.lease_seconds:
                self._apply({})  # our shares may be reclaimed by now: use none
            return False
        self._last_ok = time.monotonic()
        self._holds = any(w.demand > 0 or w.in_use > 0 or granted.get(w.key) for w in wants)
        self._apply(granted)
        self.refreshes += 1
        return True

    def _apply(self, granted: dict[str, float]) -> None:
        for origin, slots in self._engine.host_slots().items():
            slots.set_limit(int(granted.get(host_key(origin), 0.0)))
        cap = self._budgets.cap
        share = granted.get(BANDWIDTH, 0.0) if cap else None
        if share != self._budgets.cluster_rate:
            self._budgets.set_cluster_rate(share)

    def _starved(self) -> bool:
        """Connections wait on a host this manager has no share of (the others hold it all)."""
        return any(s.limit == 0 and s.waiting for s in self._engine.host_slots().values())

    async def _run(self) -> None:
        """Refresh every ``interval``, or sooner (at most every ``_WOKEN_GAP``) when woken."""
        while True:
            started = time.monotonic()
            self._woken.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("bitsnb: refreshing the cluster's limits failed")
            wait = min(self.interval, _STARVED_INTERVAL) if self._starved() else self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), wait)
            gap = _WOKEN_GAP - (time.monotonic() - started)
            if gap > 0:
                await asyncio.sleep(gap)
