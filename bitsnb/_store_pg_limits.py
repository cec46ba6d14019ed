"""Managers' shares of cluster-wide limits in PostgreSQL: one row per manager and limit
(a host's connection slots, the background bandwidth cap) with its demand, the share it
holds and its lease's expiry. A refresh is one short transaction per manager (every few
seconds, not per request): expired shares are reclaimed, the others' rows read, this
manager's rows written; refreshes take turns under one advisory lock, so the shares held
never add up to more than the limit (``_limit_shares.grant``). Each manager writes only its
own rows: no row is hot.

Not under the store's ``lock``: a refresh runs off the loop and may wait for another's turn,
which must not hold up the loop's own store calls (the pool is thread-safe).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
import psycopg_pool

from ._limit_shares import Peer, Want, grant
from ._store_pg_conn import PgBase, store_error
from ._store_pg_rows import DB_NOW

__all__ = ["LIMITS_DDL", "LIMITS_LOCK", "PgLimits"]

LIMITS_DDL = """
CREATE TABLE IF NOT EXISTS bitsnb_limits (
    key TEXT COLLATE "C" NOT NULL, owner TEXT COLLATE "C" NOT NULL, demand BIGINT NOT NULL,
    held DOUBLE PRECISION NOT NULL, lim DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL, PRIMARY KEY (key, owner)
)
"""
LIMITS_LOCK = 0x6269_7473_6C6D  # "bitslm": one refresh at a time, cluster-wide
_TURN_WAIT_MS = 2000  # a refresh waits this long for another's turn before it is busy
_PEERS = (
    "SELECT key, owner, demand, held, lim FROM bitsnb_limits WHERE key = ANY(%s) AND owner <> %s"
)
_WRITE = (
    "INSERT INTO bitsnb_limits (key, owner, demand, held, lim, expires)"
    f" SELECT k, %s, d, h, l, {DB_NOW} + %s"
    " FROM unnest(%s::text[], %s::bigint[], %s::float8[], %s::float8[]) AS t(k, d, h, l)"
    " ON CONFLICT (key, owner) DO UPDATE SET demand = EXCLUDED.demand, held = EXCLUDED.held,"
    " lim = EXCLUDED.lim, expires = EXCLUDED.expires"
)


class PgLimits(PgBase):
    """The store's part that keeps managers' shares of cluster-wide limits."""

    _limits_ready = False  # the table exists (made by the first refresh of this store)

    def share_limits(self, wants: Sequence[Want], seconds: float) -> dict[str, float]:
        """Write this manager's shares of *wants* (leased for *seconds*), drop its others and
        every expired one; return the share granted per key (what it may use until the next
        refresh). ``StoreBusyError`` when the store is busy or cannot be reached."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {_TURN_WAIT_MS}")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LIMITS_LOCK,))
                if not self._limits_ready:
                    conn.execute(LIMITS_DDL)
                row = conn.execute(f"SELECT {DB_NOW}").fetchone()
                now = float(row[0]) if row else 0.0
                conn.execute("DELETE FROM bitsnb_limits WHERE expires < %s", (now,))
                keys = [w.key for w in wants]
                peers: dict[str, list[Peer]] = {k: [] for k in keys}
                for key, owner, demand, held, lim in conn.execute(_PEERS, (keys, self.writer)):
                    peers[key].append(Peer(owner, int(demand), float(held), float(lim)))
                turn = int(now / seconds) if seconds > 0 else 0
                granted: dict[str, float] = {}
                rows: list[tuple[str, int, float, float]] = []
                for w in wants:
                    granted[w.key], held = grant(self.writer, w, peers[w.key], turn)
                    if held > 0 or w.demand > 0:
                        rows.append((w.key, int(w.demand), float(held), float(w.limit)))
                conn.execute(
                    "DELETE FROM bitsnb_limits WHERE owner = %s AND NOT key = ANY(%s)",
                    (self.writer, [r[0] for r in rows]),
                )
                if rows:
                    columns = [list(c) for c in zip(*rows, strict=True)]
                    conn.execute(_WRITE, (self.writer, seconds, *columns))
            self._limits_ready = True
            return granted
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise store_error(self.path, exc) from exc

    def give_back_limits(self) -> None:
        """Drop every share this manager holds (it closes, or wants nothing more)."""
        if not self._limits_ready:
            return
        try:
            with self._pool.connection() as conn:
                conn.execute("DELETE FROM bitsnb_limits WHERE owner = %s", (self.writer,))
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise store_error(self.path, exc) from exc
