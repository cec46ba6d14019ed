"""The one fault vocabulary of bitsnb's test servers: ``FaultKind``, ``Fault`` and its book-keeping.

``FileServer`` (downloads) and ``UploadServer`` (BITS uploads) both take ``Fault`` objects in
``inject(name_glob, fault)``; a fault hits ``times`` matching requests (-1 = forever), then is
spent. Each server applies the kinds that make sense for it and refuses the others at
``inject`` (``ValueError``), so a test never waits for a fault that cannot happen.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["CodeFormat", "Fault", "FaultBook", "FaultKind", "format_code"]

FaultKind = Literal[
    "drop_after",
    "status",
    "ignore_range",
    "stall",
    "stall_after",
    "close_before_headers",
    "wrong_length",
    "no_length",
    "change_before",
    "weak_etag",
    "no_validators",
    "bits_error",
    "extra_headers",
    "throttle",
    "corrupt",
]
"""Every misbehaviour a test server can be told to show (see the ``Fault`` constructors)."""

CodeFormat = Literal["hex", "bare", "decimal", "signed"]
"""How a ``bits_error`` fault writes its HRESULT: 0x8020001F, 8020001f, 2149580831, -2145386465."""

_DEFAULT_EXTRA = (("X-Bitsnb-Unexpected", "1"), ("BITS-Future-Extension", "ignore-me"))


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour; it hits ``times`` matching requests (-1 = forever), then is spent.

    Build it with the classmethods below, e.g. ``Fault.drop_after(1000, times=2)``.
    """

    kind: FaultKind
    nbytes: int = 0
    seconds: float = 0.0
    code: int = 0  # HTTP status (status, bits_error)
    retry_after: float | None = None
    delta: int = 0
    times: int = 1
    hresult: int = 0  # bits_error: the BITS-Error-Code sent
    context: int = 0  # bits_error: the BITS-Error-Context sent
    fmt: CodeFormat = "hex"
    headers: tuple[tuple[str, str], ...] = ()
    seed: int = 0  # corrupt: which byte, and how

    def __post_init__(self) -> None:
        if self.times == 0 or self.times < -1:
            raise ValueError(f"times must be >= 1 or -1 (forever), not {self.times}")
        if self.nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        if self.seconds < 0:
            raise ValueError("seconds must be >= 0")
        if self.kind in ("status", "bits_error") and not 100 <= self.code <= 599:
            raise ValueError(f"invalid HTTP status code {self.code}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")

    def with_times(self, times: int) -> Fault:
        """Return a copy of this fault that hits ``times`` requests (-1 = forever)."""
        return dataclasses.replace(self, times=times)

    @classmethod
    def drop_after(cls, nbytes: int, *, times: int = 1) -> Fault:
        """Cut the connection after ``nbytes`` of body, without an answer to follow.

        Downloads: headers and the first ``nbytes`` of the response body are sent. Uploads: the
        server reads ``nbytes`` of the request body (kept, as after a real network cut), then
        closes; with ``nbytes`` >= the body only the Ack is lost.
        """
        return cls("drop_after", nbytes=nbytes, times=times)

    @classmethod
    def status(cls, code: int, retry_after: float | None = None, *, times: int = 1) -> Fault:
        """Answer with status ``code`` and a small body (no BITS headers; the request is not
        processed), plus ``Retry-After`` when given: ``Fault.status(503, 2)`` is "busy"."""
        return cls("status", code=code, retry_after=retry_after, times=times)

    @classmethod
    def ignore_range(cls, *, times: int = 1) -> Fault:
        """Answer 200 with the whole file even if a Range was requested."""
        return cls("ignore_range", times=times)

    @classmethod
    def stall(cls, seconds: float, *, times: int = 1) -> Fault:
        """Wait ``seconds`` (interruptible by stop) before sending anything, then answer."""
        return cls("stall", seconds=seconds, times=times)

    @classmethod
    def stall_after(cls, nbytes: int, seconds: float, *, times: int = 1) -> Fault:
        """Send ``nbytes`` of body, stall ``seconds`` (interruptible by stop), then close."""
        return cls("stall_after", nbytes=nbytes, seconds=seconds, times=times)

    @classmethod
    def close_before_headers(cls, *, times: int = 1) -> Fault:
        """Close the connection without answering."""
        return cls("close_before_headers", times=times)

    @classmethod
    def wrong_length(cls, delta: int, *, times: int = 1) -> Fault:
        """Advertise Content-Length = real + ``delta``, send the real bytes, then close."""
        return cls("wrong_length", delta=delta, times=times)

    @classmethod
    def no_length(cls, *, times: int = 1) -> Fault:
        """Send the body with ``Transfer-Encoding: chunked`` and no Content-Length."""
        return cls("no_length", times=times)

    @classmethod
    def throttle(cls, bytes_per_second: int, *, times: int = 1) -> Fault:
        """Send the body at about ``bytes_per_second`` (a slow server or link), whole."""
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0")
        return cls("throttle", nbytes=bytes_per_second, times=times)

    @classmethod
    def corrupt(cls, seed: int = 0, *, times: int = 1) -> Fault:
        """Send the body with one byte changed (its place and new value drawn from ``seed``):
        same length, same validators, same digest headers; only a hash can tell."""
        return cls("corrupt", seed=seed, times=times)

    @classmethod
    def change_before(cls, *, times: int = 1) -> Fault:
        """Change the target file (new ETag and Last-Modified) before answering."""
        return cls("change_before", times=times)

    @classmethod
    def weak_etag(cls, *, times: int = 1) -> Fault:
        """Answer with a weak ETag (``W/"..."``)."""
        return cls("weak_etag", times=times)

    @classmethod
    def no_validators(cls, *, times: int = 1) -> Fault:
        """Answer with neither ETag nor Last-Modified."""
        return cls("no_validators", times=times)

    @classmethod
    def bits_error(
        cls,
        hresult: int,
        *,
        status: int = 500,
        context: int = 0x5,
        fmt: CodeFormat = "hex",
        times: int = 1,
    ) -> Fault:
        """Uploads: an error Ack (HTTP ``status``) with ``BITS-Error-Code`` = ``hresult``
        written as ``fmt`` and ``BITS-Error-Context`` = ``context``; the packet is not
        processed."""
        return cls(
            "bits_error", code=status, hresult=hresult, context=context, fmt=fmt, times=times
        )

    @classmethod
    def extra_headers(cls, headers: Mapping[str, str] | None = None, *, times: int = 1) -> Fault:
        """Answer normally, with ``headers`` added (default: a few unknown ``X-``/``BITS-``
        headers a client must ignore)."""
        extra = _DEFAULT_EXTRA if headers is None else tuple(headers.items())
        return cls("extra_headers", headers=extra, times=times)


def format_code(code: int, fmt: CodeFormat) -> str:
    """An HRESULT in one of the forms servers use in the wild."""
    unsigned = code & 0xFFFFFFFF
    if fmt == "hex":
        return f"0x{unsigned:08X}"
    if fmt == "bare":
        return f"{unsigned:08x}"
    if fmt == "decimal":
        return str(unsigned)
    return str(unsigned - (1 << 32) if unsigned & 0x80000000 else unsigned)


@dataclass(slots=True)
class _Entry:
    glob: str
    packet: str | None
    fault: Fault
    remaining: int


class FaultBook:
    """Injected faults in order, matched by path glob (and, for uploads, packet type).

    Not locked itself: the server that owns it calls it under its own lock.
    """

    def __init__(self, kinds: frozenset[str]) -> None:
        self._kinds = kinds
        self._entries: list[_Entry] = []

    def add(self, name_glob: str, fault: Fault, packet: str | None = None) -> None:
        """Queue *fault* for requests whose path (no leading "/") matches the fnmatch glob."""
        if fault.kind not in self._kinds:
            raise ValueError(
                f"this server cannot inject {fault.kind!r}; it knows {sorted(self._kinds)}"
            )
        key = None if packet is None else packet.strip().lower()
        self._entries.append(_Entry(name_glob.lstrip("/"), key, fault, fault.times))

    def clear(self) -> None:
        """Forget every fault, used up or not."""
        self._entries.clear()

    def take(self, path: str, packet: str | None = None) -> Fault | None:
        """The first live fault matching *path* (and *packet*), one hit used; None if none."""
        kind = None if packet is None else packet.lower()
        for entry in self._entries:
            if entry.remaining == 0 or not fnmatch.fnmatchcase(path, entry.glob):
                continue
            if entry.packet is not None and entry.packet != kind:
                continue
            if entry.remaining > 0:
                entry.remaining -= 1
            if entry.remaining == 0:
                self._entries.remove(entry)
            return entry.fault
        return None
