"""What one file's fetch shares between its runs (one connection, several): the job's context,
the signals that stop a body (yield, restart), and the verdicts on a response."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import httpx

from . import _codes
from ._buckets import Throttle
from ._enums import ErrorContext
from ._failures import TransferFailure
from ._http_rules import retry_after
from ._records import FileRecord
from ._validators import strong_etag

__all__ = [
    "YIELD_MID_FILE_BYTES",
    "FileContext",
    "Restart",
    "YieldSlice",
    "invalid_response",
    "response_retry_after",
    "strong_etag",
    "worth_yielding",
]

YIELD_MID_FILE_BYTES = 16 * 1024 * 1024


class YieldSlice(Exception):
    """The scheduler asked the running job to give up its slot (time slice or pre-emption)."""


class Restart(Exception):
    """The remote file changed or cannot be resumed: start the file again from zero."""


@dataclass
class FileContext:
    """What the engine needs from the job for one file, and how it reports back."""

    headers: dict[str, str] = field(default_factory=dict)
    auth: httpx.Auth | None = None
    proxy: str | None = None
    trust_env: bool = True
    dynamic_content: bool = False
    on_connected: Callable[[], None] = lambda: None
    on_progress: Callable[[FileRecord], None] = lambda f: None
    on_checkpoint: Callable[[FileRecord, int], None] = lambda f, durable: None
    on_restart: Callable[[FileRecord], None] = lambda f: None
    on_validators: Callable[[FileRecord], None] = lambda f: None
    # a segmented download's first table: True once the store holds it (False: not split)
    save_segments: Callable[[FileRecord], bool] = lambda f: False
    should_yield: Callable[[], bool] = lambda: False
    foreground: bool = False  # a FOREGROUND job: it does not wait for a per-host slot
    throttle: Throttle | None = None  # the bandwidth budgets the body's bytes are taken from
    # a body starts (the bandwidth loop samples its connection); returns the call for its end
    watch: Callable[[httpx.Response], Callable[[], None]] = lambda resp: _unwatched
    # whether a segmented file may open one more connection (the yield controller's count)
    may_add_connection: Callable[[], bool] = lambda: True
    # a file's turn to open connections: under a cap, only as many files at once as it needs
    admit: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext
    # the file's body is all in (its fsync follows): a cap's turn for it ends here
    on_received: Callable[[], None] = lambda: None


def _unwatched() -> None:
    """Nothing was watched."""


def response_retry_after(resp: httpx.Response) -> float | None:
    return retry_after(resp.headers.get("retry-after"), time.time())


def invalid_response(message: str, *, transient: bool) -> TransferFailure:
    return TransferFailure(
        _codes.BG_E_INVALID_SERVER_RESPONSE,
        ErrorContext.REMOTE_FILE,
        transient=transient,
        message=message,
    )


def worth_yielding(f: FileRecord) -> bool:
    """Give up a slot mid-file only when much of the file is left; else finish it first."""
    if f.bytes_total is None:
        return True
    return f.bytes_total - f.bytes_transferred > YIELD_MID_FILE_BYTES
