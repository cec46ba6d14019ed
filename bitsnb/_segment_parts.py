"""What a segmented download is made of: the engine it runs on (a protocol, so that
``_segmented`` never imports ``_engine``), its connections and its segments."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Protocol

import httpx

from . import _codes
from ._enums import ErrorContext
from ._failures import TransferFailure
from ._fetchctx import FileContext
from ._filecheck import Check
from ._models import Policy
from ._records import FileRecord
from ._slots import HostSlots

__all__ = ["Conn", "NoRanges", "Seg", "SegmentHost", "connection_ended"]


class SegmentHost(Protocol):
    """What a segmented download takes from the engine: its policy, clients, host slots,
    request headers, hashing and the count of bytes read back."""

    bytes_rehashed: int

    @property
    def policy(self) -> Policy: ...

    def client(self, proxy: str | None, trust_env: bool) -> httpx.AsyncClient: ...

    def slot(self, url: str) -> HostSlots: ...

    def digest_headers(self, f: FileRecord, ctx: FileContext) -> dict[str, str]: ...

    async def begin_hashes(
        self, fh: IO[bytes], check: Check, headers: Mapping[str, str], offset: int
    ) -> None: ...

    def hash_pool(self) -> concurrent.futures.ThreadPoolExecutor: ...


class NoRanges(Exception):
    """A second connection's Range was answered with the whole file: stay on the ones there."""


@dataclass(eq=False)
class Conn:
    """One connection of a segmented download: the segment it fills and how fast."""

    slot: HostSlots | None  # an extra connection's host slot (None: the download's own)
    seg: Seg | None = None
    began: float | None = None  # when its current response's first body byte came
    bytes: int = 0  # body bytes of its current response
    written: int = 0  # body bytes it wrote over all its responses (a trial's own share)
    rate: float = 0.0  # its rate over its last response
    retire: bool = False  # one connection too many: stop at the next chunk
    reach: int = 0  # where its current response's bytes end (the first one: the file's end)
    skip: int = 0  # bytes of its response to read past: another connection wrote them
    resp: httpx.Response | None = None  # the response it reads now

    def now_rate(self, now: float) -> float:
        """Its rate over the current response (the last one's before a byte came)."""
        if self.began is None or now <= self.began:
            return self.rate
        return self.bytes / (now - self.began)


@dataclass(eq=False)
class Seg:
    """Bytes [start, end) of the file, written up to *done*."""

    start: int
    done: int
    end: int
    owner: Conn | None = None


def connection_ended() -> TransferFailure:
    """Every connection ended and bytes are still missing: a transient failure."""
    return TransferFailure(
        _codes.ERROR_WINHTTP_CONNECTION_ERROR,
        ErrorContext.REMOTE_FILE,
        transient=True,
        message="the connections ended before the file was complete",
    )
