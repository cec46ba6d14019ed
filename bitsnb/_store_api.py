"""What the core needs of a job store, as a ``typing.Protocol``, and how a store is named.

Two stores fit ``JobStore``: ``_store.Store`` (SQLite, the embedded default) and
``_store_pg.PgStore`` (PostgreSQL, shared by managers on many machines). The core types against
the protocol only; a call is a plain method call on the object ``_store_open`` chose (no layer
in between, so the SQLite path costs what it did). Vocabulary only: nothing here runs.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from . import _codes
from ._errors import BitsError
from ._jobtable import JobTable
from ._records import FileRecord, JobRecord

__all__ = ["PG_SCHEMES", "JobStore", "StoreURL", "url_scheme"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

PG_SCHEMES = frozenset({"postgresql", "postgres"})
_URL_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


def url_scheme(text: str) -> str | None:
    """The scheme of a store string that looks like a URL (``scheme://…``), else None."""
    match = _URL_LIKE.match(text)
    return match.group(1).lower() if match else None


class StoreURL:
    """A store named by URL (``postgresql://user@host/db``): ``str()`` hides the password."""

    __slots__ = ("scheme", "url")

    def __init__(self, url: str) -> None:
        scheme = url_scheme(url)
        if scheme not in PG_SCHEMES:
            raise BitsError(
                _codes.E_INVALIDARG,
                f"unknown store scheme {scheme!r}: give the path of a SQLite file or a"
                " postgresql:// URL",
            )
        self.scheme = scheme
        self.url = url

    def __str__(self) -> str:
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))

    def __repr__(self) -> str:
        return f"StoreURL({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoreURL) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


class JobStore(Protocol):
    """A store's operations as the core calls them: blocking calls that answer in a few ms
    (a busy store is ``StoreBusyError``, retried by the caller), made from the manager's loop
    thread and, for a new job's insert, from the blocking API's thread under ``lock``."""

    writer: str
    busy_timeout: float
    damaged: dict[uuid.UUID, str]

    @property
    def lock(self) -> AbstractContextManager[Any]: ...

    def patiently(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R: ...
    def close(self) -> None: ...
    def insert_job(self, rec: JobRecord) -> None: ...
    def save_job(
        self, rec: JobRecord, files: Iterable[FileRecord] = (), *, release: bool = False
    ) -> bool: ...
    def start(self, rec: JobRecord, seconds: float) -> bool: ...
    def delete_files(self, job_id: uuid.UUID, first_index: int) -> None: ...
    def version_of(self, job_id: uuid.UUID) -> int | None: ...
    def load_job(self, job_id: uuid.UUID) -> JobRecord | None: ...
    def load_jobs(self, include_finished: bool = False) -> list[JobRecord]: ...
    def job_table(self, include_finished: bool = False, owner: str | None = None) -> JobTable: ...
    def file_workers(self, job_id: uuid.UUID) -> dict[int, str]: ...
    def job_workers(self) -> dict[str, str]: ...
    def placed_file(self, local_name: str) -> tuple[str, tuple[int, int, int]] | None: ...
    def hashed_file(self, local_name: str) -> tuple[str, tuple[int, int, int]] | None: ...
    def record_hash(self, local_name: str, hash_: str, placed: tuple[int, int, int]) -> None: ...
    def changed_by_others(self, since_ns: int) -> tuple[list[JobRecord], int]: ...
    def count_jobs(self, owner: str | None = None) -> int: ...
    def prune_finished(self, before: float) -> int: ...
    def claim(self, job_id: uuid.UUID, seconds: float) -> int | None: ...
    def renew_leases(self, seconds: float) -> None: ...
    def release(self, job_id: uuid.UUID | None = None) -> None: ...
    def holds(self, job_id: uuid.UUID) -> bool: ...
    def leased_by_others(self) -> set[uuid.UUID]: ...
    def lost_leases(self) -> set[uuid.UUID]: ...
