"""What every part of the PostgreSQL store stands on: its connection pool's settings, the
mapping of psycopg's errors to bitsnb's, the lock every public call holds (``locked``), and
``PgBase``, the attributes and one-statement helpers the store's parts share.

No statement waits on another manager's row lock: claims skip locked rows and any other wait
past ``STATEMENT_LOCK_TIMEOUT_MS`` is ``StoreBusyError``, retried by the caller as for a locked
SQLite file.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow

from . import _codes
from ._errors import BitsError, StoreBusyError
from ._store import retry_busy
from ._store_api import StoreURL

__all__ = ["STATEMENT_LOCK_TIMEOUT_MS", "PgBase", "configure", "locked", "store_error"]

# how long one statement waits for a row another transaction holds before StoreBusyError
STATEMENT_LOCK_TIMEOUT_MS = 50

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="PgBase")


def store_error(where: StoreURL, exc: Exception) -> BitsError:
    """psycopg's (or the pool's) exception as bitsnb's: busy or unreachable is
    ``StoreBusyError`` (the caller retries), the rest a ``BitsError`` with its code."""
    text = str(exc).strip()
    if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.DeadlockDetected):
        return StoreBusyError(f"the store {where} is busy ({text})")
    if isinstance(exc, pg_errors.SerializationFailure | psycopg_pool.PoolTimeout):
        return StoreBusyError(f"the store {where} is busy ({text})")
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return BitsError(_codes.E_ACCESSDENIED, f"cannot write the store {where} ({text})")
    if isinstance(exc, psycopg.OperationalError):  # the server went away, or is restarting
        return StoreBusyError(f"the store {where} cannot be reached ({text})")
    if isinstance(exc, psycopg.DataError | OverflowError):
        return BitsError(
            _codes.E_INVALIDARG, f"a value is too large for the store {where} ({text})"
        )
    return BitsError(_codes.E_INVALIDARG, f"cannot use the store {where} ({text})")


def locked(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """A public call of the store: under its lock, every failure as a ``BitsError``."""

    @functools.wraps(method)
    def call(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            try:
                return method(self, *args, **kwargs)
            except (psycopg.Error, psycopg_pool.PoolTimeout, OverflowError) as exc:
                raise store_error(self.path, exc) from exc

    return call


def configure(conn: psycopg.Connection[Any]) -> None:
    """Each pooled connection's settings."""
    # no JIT: the store's statements are short, and the planner's guess for a large read
    # (the job table of 100,000 jobs) spent 1.6 s compiling a 0.3 s query
    conn.execute(f"SET lock_timeout = {STATEMENT_LOCK_TIMEOUT_MS}; SET jit = off")


class PgBase:
    """The attributes the store's parts share (set by ``PgStore.__init__``) and its
    one-statement helpers."""

    path: StoreURL
    writer: str
    busy_timeout: float
    lock: threading.RLock
    damaged: dict[uuid.UUID, str]
    _pool: psycopg_pool.ConnectionPool[psycopg.Connection[TupleRow]]

    def patiently(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Call the store method *fn*, retrying while the store is busy or unreachable, for up
        to the busy timeout. Blocks the calling thread: never call it on the loop."""
        return retry_busy(self.busy_timeout, fn, *args, **kwargs)

    def _one(self, sql: str, params: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()
