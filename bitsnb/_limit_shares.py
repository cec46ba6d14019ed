"""How a cluster-wide limit is split among the managers of one shared store (no IO).

A limit (a host's connection slots, the background bandwidth cap) is split in *shares*, one
per manager that wants some, sized by demand: ``limit × my demand / total demand``, in whole
slots at least one each while there are slots enough (the rest one at a time to whoever is
furthest under its exact share, never more slots than a manager wants); with more managers than slots, ``turn`` rotates which ones
get one. A manager takes its new share only out of what the others do not hold (``grant``), and
keeps holding what its connections still use, so the shares held never add up to more than the
limit: a manager that must shrink does at its own refresh, and the others grow at theirs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BANDWIDTH", "LimitShares", "Peer", "Want", "allot", "grant", "host_key"]

BANDWIDTH = "bandwidth"
"""The key of the background bandwidth cap (bytes/s), shared by every manager of the store."""


def host_key(origin: str) -> str:
    """The key of a host's connection slots (its origin, ``scheme://host:port``)."""
    return f"host {origin}"


@dataclass(frozen=True, slots=True)
class Want:
    """What this manager asks of one limit at a refresh."""

    key: str  # ``host_key(origin)`` or ``BANDWIDTH``
    limit: float  # the cluster-wide limit as this manager's policy sets it (slots, bytes/s)
    demand: int  # connections wanted (held + waiting)
    in_use: float  # what it cannot give back now (slots its connections hold; 0 for bandwidth)
    whole: bool  # shares in whole units (slots) rather than fractions (bytes/s)


@dataclass(frozen=True, slots=True)
class Peer:
    """Another live manager's share of a limit, as its last refresh wrote it."""

    owner: str
    demand: int
    held: float
    limit: float


class LimitShares(Protocol):
    """A store that keeps managers' shares of cluster-wide limits (PostgreSQL)."""

    def share_limits(self, wants: Sequence[Want], seconds: float) -> dict[str, float]:
        """Write this manager's shares (leased for *seconds*), reclaim expired ones; return
        the share granted per key."""
        ...

    def give_back_limits(self) -> None:
        """Drop every share this manager holds."""
        ...


def allot(
    limit: float, demands: Mapping[str, int], *, whole: bool, turn: int = 0
) -> dict[str, float]:
    """Each owner's fair share of *limit* by demand (owners without demand get none)."""
    wanting = sorted(o for o, d in demands.items() if d > 0)
    if not wanting or limit <= 0:
        return dict.fromkeys(demands, 0.0)
    shares = dict.fromkeys(demands, 0.0)
    if not whole:
        total = sum(demands[o] for o in wanting)
        for o in wanting:
            shares[o] = limit * demands[o] / total
        return shares
    slots = int(limit)
    if slots <= len(wanting):  # one each for as many as fit, in turns
        start = turn % len(wanting)
        for o in (wanting[start:] + wanting[:start])[:slots]:
            shares[o] = 1.0
        return shares
    for o in wanting:
        shares[o] = 1.0
    _spread(shares, slots - len(wanting), {o: demands[o] for o in wanting})
    return shares


def _spread(shares: dict[str, float], left: int, demands: dict[str, int]) -> None:
    """Hand *left* more slots out one at a time, each to the owner furthest under its exact
    share (``slots × demand / total``), never more than an owner wants."""
    slots = left + sum(int(shares[o]) for o in demands)
    total = sum(demands.values())
    exact = {o: slots * d / total for o, d in demands.items()}
    for _ in range(left):  # bounded: one slot a turn
        room = [o for o, d in demands.items() if shares[o] < d]
        if not room:
            return
        best = max(room, key=lambda o: (exact[o] - shares[o], demands[o], o))
        shares[best] += 1


def grant(me: str, want: Want, peers: Sequence[Peer], turn: int = 0) -> tuple[float, float]:
    """(the share this manager may use now, the share it holds) for *want*: its fair share,
    but no more than the others leave free, and never less held than its connections use."""
    limit = min([want.limit, *(p.limit for p in peers)])
    demands = {p.owner: p.demand for p in peers}
    demands[me] = want.demand
    target = allot(limit, demands, whole=want.whole, turn=turn).get(me, 0.0)
    free = limit - sum(p.held for p in peers)
    granted = max(0.0, min(target, free))
    if want.whole:
        granted = float(math.floor(granted))
    return granted, max(granted, want.in_use)
