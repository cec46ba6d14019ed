"""Shares of cluster-wide limits: host slots whose limit changes live, how a limit is split by
demand, the rule that keeps the shares held within the limit, the shares' rows in a real
PostgreSQL (one refresh per manager, expired shares reclaimed, shares given back), and SQLite
left as it was (each manager counts its own)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _support.helpers import wait_until

import bitsnb
from bitsnb._cluster_limits import shares_limits
from bitsnb._limit_shares import BANDWIDTH, Peer, Want, allot, grant, host_key
from bitsnb._slots import HostSlots
from bitsnb._store import Store
from bitsnb.testing import FileServer

if TYPE_CHECKING:
    from bitsnb._store_pg import PgStore

HOST = host_key("http://127.0.0.1:8000")


# -- host slots --------------------------------------------------------------------------------
def test_host_slots_serve_waiters_in_order_and_follow_a_new_limit() -> None:
    async def main() -> list[int]:
        slots = HostSlots(1)
        order: list[int] = []

        async def take(i: int) -> None:
            async with slots:
                order.append(i)
                await asyncio.sleep(0)

        await slots.acquire()  # held: the others queue
        tasks = [asyncio.create_task(take(i)) for i in range(4)]
        await asyncio.sleep(0)
        assert slots.waiting == 4 and slots.wanted == 5 and slots.locked()
        slots.set_limit(3)  # two more at once, first come first
        await asyncio.sleep(0)
        assert slots.in_use == 3
        slots.set_limit(0)  # lowering takes nothing back...
        assert slots.in_use == 3
        slots.release()
        await asyncio.gather(*tasks[:2])
        assert slots.in_use == 0 and slots.waiting == 2  # ...but lets nobody new in
        slots.set_limit(1)
        await asyncio.gather(*tasks)
        assert slots.in_use == 0 and not slots.locked()
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_slots_held_above_a_lowered_limit_say_when_they_are_down_to_it() -> None:
    async def main() -> list[int]:
        drained: list[int] = []
        slots = HostSlots(3, on_drained=lambda: drained.append(slots.in_use))
        for _ in range(3):
            await slots.acquire()
        slots.release()  # within the limit: nothing to say
        assert drained == []
        slots.set_limit(1)  # a smaller share: two held, one allowed
        slots.release()
        return drained

    assert asyncio.run(main()) == [1]  # the share's rest can go back now


def test_a_waiter_cancelled_or_granted_while_cancelled_leaks_no_slot() -> None:
    async def main() -> None:
        starved: list[bool] = []
        slots = HostSlots(0, on_starved=lambda: starved.append(True))
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        assert starved == [True]  # a connection waits on no share: the refresh is asked for
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.waiting == 0 and slots.in_use == 0
        late = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.set_limit(1)  # granted, then cancelled before it ran: handed on, not kept
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert slots.in_use == 0
        with pytest.raises(ValueError):
            slots.release()

    asyncio.run(main())


# -- splitting a limit -------------------------------------------------------------------------
def test_a_limit_is_split_by_demand_one_slot_each_and_never_more_than_wanted() -> None:
    assert allot(8, {"a": 6, "b": 2, "c": 0}, whole=True) == {"a": 6.0, "b": 2.0, "c": 0.0}
    assert allot(4, {"a": 9, "b": 1}, whole=True) == {"a": 3.0, "b": 1.0}
    shares = allot(10, {"a": 30, "b": 10, "c": 1}, whole=True)
    assert shares == {"a": 7.0, "b": 2.0, "c": 1.0}
    assert allot(3, {"a": 1, "b": 1}, whole=True) == {"a": 1.0, "b": 1.0}  # wants no more
    # more managers than slots: one each for as many as fit, the turn rotating who
    got = [allot(2, {"a": 5, "b": 5, "c": 5}, whole=True, turn=t) for t in range(3)]
    assert all(sum(s.values()) == 2 for s in got)
    assert {o for s in got for o, n in s.items() if n} == {"a", "b", "c"}
    bw = allot(3e6, {"a": 2, "b": 1, "c": 0}, whole=False)
    assert bw == pytest.approx({"a": 2e6, "b": 1e6, "c": 0.0})
    assert allot(5, {"a": 0}, whole=True) == {"a": 0.0}


def test_a_share_is_taken_only_from_what_the_others_leave_free() -> None:
    want = Want(HOST, 4, demand=4, in_use=0, whole=True)
    # b holds all four: a gets nothing until b's own refresh gives two back
    assert grant("a", want, [Peer("b", 4, 4.0, 4)]) == (0.0, 0.0)
    assert grant("a", want, [Peer("b", 4, 2.0, 4)]) == (2.0, 2.0)
    # a's connections still use three: its share falls to two, it holds three until they end
    assert grant("a", Want(HOST, 4, 4, 3, whole=True), [Peer("b", 4, 1.0, 4)]) == (2.0, 3.0)
    # the lowest limit among the live managers counts
    assert grant("a", Want(HOST, 8, 1, 0, whole=True), [Peer("b", 1, 0.0, 2)]) == (1.0, 1.0)


def test_the_shares_held_never_add_up_to_more_than_the_limit() -> None:
    """Managers refreshing in random order, connections coming and going between refreshes:
    what they hold (and use) stays within the limit at every step."""
    rng = random.Random(16)
    for limit in (1, 2, 3, 7):
        owners = ["a", "b", "c", "d"]
        held = dict.fromkeys(owners, 0.0)
        allowed = dict.fromkeys(owners, 0)
        in_use = dict.fromkeys(owners, 0)
        demand = dict.fromkeys(owners, 0)
        for step in range(2000):
            me = rng.choice(owners)
            for o in owners:  # connections end, new ones start within each local limit
                in_use[o] = rng.randint(
                    0, min(in_use[o], allowed[o]) if rng.random() < 0.5 else in_use[o]
                )
                in_use[o] = max(in_use[o], min(allowed[o], in_use[o] + rng.randint(0, 2)))
                demand[o] = max(in_use[o], rng.choice([0, 0, 1, 3, 6]))
            peers = [
                Peer(o, demand[o], held[o], limit)
                for o in owners
                if (o != me and held[o] > 0) or (o != me and demand[o] > 0)
            ]
            got, held[me] = grant(
                me, Want(HOST, limit, demand[me], in_use[me], whole=True), peers, step
            )
            allowed[me] = int(got)
            assert sum(held.values()) <= limit, (limit, step, held)
            assert all(in_use[o] <= max(held[o], allowed[o]) for o in owners)


# -- the shares' rows in PostgreSQL ------------------------------------------------------------
def _host(demand: int, in_use: int = 0, limit: int = 4) -> Want:
    return Want(HOST, limit, demand, in_use, whole=True)


def test_refreshes_share_a_host_and_the_cap_by_demand(opened: Callable[[str], PgStore]) -> None:
    a, b, c = opened("a"), opened("b"), opened("c")
    bw = 3e6
    assert a.share_limits([_host(6), Want(BANDWIDTH, bw, 6, 0, whole=False)], 5) == {
        HOST: 4.0,
        BANDWIDTH: bw,  # alone: all of it
    }
    # b and c want some too: nothing is free until a gives back at its own refresh
    assert b.share_limits([_host(3), Want(BANDWIDTH, bw, 3, 0, whole=False)], 5) == {
        HOST: 0.0,
        BANDWIDTH: 0.0,
    }
    c.share_limits([_host(3), Want(BANDWIDTH, bw, 3, 0, whole=False)], 5)
    got_a = a.share_limits([_host(6, in_use=4), Want(BANDWIDTH, bw, 6, 0, whole=False)], 5)
    assert got_a[HOST] == 2.0 and got_a[BANDWIDTH] == pytest.approx(bw / 2)
    # a's four connections still run: it holds four until they end
    assert b.share_limits([_host(3)], 5)[HOST] == 0.0
    got_a = a.share_limits([_host(6, in_use=2), Want(BANDWIDTH, bw, 6, 0, whole=False)], 5)
    got_b = b.share_limits([_host(3), Want(BANDWIDTH, bw, 3, 0, whole=False)], 5)
    got_c = c.share_limits([_host(3), Want(BANDWIDTH, bw, 3, 0, whole=False)], 5)
    assert (got_a[HOST], got_b[HOST], got_c[HOST]) == (2.0, 1.0, 1.0)
    rates = got_a[BANDWIDTH] + got_b[BANDWIDTH] + got_c[BANDWIDTH]
    assert rates == pytest.approx(bw)
    # a manager with nothing to fetch gives its share back: the busy ones get it
    a.share_limits([_host(0)], 5)
    assert b.share_limits([_host(3)], 5)[HOST] == 2.0  # 4 × 3 / (3 + 3) of the now-free four
    b.give_back_limits()
    assert c.share_limits([_host(3)], 5)[HOST] == 3.0


def test_an_expired_share_is_reclaimed(opened: Callable[[str], PgStore]) -> None:
    dead, live = opened("dead"), opened("live")
    assert dead.share_limits([_host(4, in_use=4)], 0.5) == {HOST: 4.0}
    assert live.share_limits([_host(4)], 5) == {HOST: 0.0}
    # the dead manager refreshes no more: its rows expire and the next refresh reclaims them
    wait_until(lambda: live.share_limits([_host(4)], 5) == {HOST: 4.0}, 10, "share reclaimed")


# -- SQLite: each manager counts its own -------------------------------------------------------
def test_sqlite_keeps_each_managers_own_host_slots(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    s = Store(store, "w")
    try:
        assert shares_limits(s) is None  # no shares to keep: the manager runs no refresh
    finally:
        s.close()
    server.connection_rate = 200_000  # each file ~0.3 s: the three requests overlap
    policy.max_connections_per_host = 3
    policy.files_in_flight = 3
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("j")
        job.add_file_set(
            [
                (server.add_random_file(f"{i}.bin", 60_000, seed=i), dest / f"{i}.bin")
                for i in range(6)
            ]
        )
        job.resume()
        assert job.wait(timeout=60) is bitsnb.JobState.TRANSFERRED
        job.complete()
    assert server.peak_concurrent == 3  # the whole limit at once, from the first request


def test_a_manager_whose_refreshes_fail_past_its_lease_uses_no_share(url: str) -> None:
    """The store does not answer (another session holds the refreshes' lock): once the lease
    has passed without a refresh, the manager's host slots and cap share fall to none, and
    come back with the next refresh that goes through."""
    import psycopg

    from bitsnb._buckets import Budgets
    from bitsnb._cluster_limits import ClusterLimits
    from bitsnb._engine import Engine
    from bitsnb._store_api import StoreURL
    from bitsnb._store_pg import PgStore
    from bitsnb._store_pg_limits import LIMITS_LOCK

    policy = bitsnb.Policy(lease_seconds=1.0, max_connections_per_host=2)
    bitsnb.Manager(store=url).close()
    store = PgStore(StoreURL(url), "me", 5.0)

    async def main() -> None:
        engine = Engine(policy)
        budgets = Budgets(1e6)
        limits = ClusterLimits(store, engine, budgets, policy, lambda: 1)
        engine.share_hosts(lambda: None)
        slots = engine.slot("http://127.0.0.1:1/a")
        waiter = asyncio.create_task(slots.acquire())  # a connection wants the host
        await asyncio.sleep(0)
        try:
            assert await limits.refresh()
            assert slots.limit == 1 and budgets.cluster_rate == 1e6  # all it wants
            await waiter
            slots.release()
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("SELECT pg_advisory_lock(%s)", (LIMITS_LOCK,))
                assert not await limits.refresh()  # waited 2 s for its turn: past the lease
                assert slots.limit == 0 and budgets.cluster_rate == 0
            assert await limits.refresh()
            assert budgets.cluster_rate == 1e6
        finally:
            await limits.aclose()
            await engine.aclose()

    try:
        asyncio.run(main())
    finally:
        store.close()
