"""Integrity rules (no IO): known hashes, the digests servers send, and the hashers for both.

A *known hash* is pooch's ``"alg:hex"`` (a bare hex string is sha256). Servers say what a file
should hash to in several headers, of two scopes:

- the whole representation (checks a resumed file too): RFC 9530 ``Repr-Digest``, RFC 3230
  ``Digest``, S3's ``x-amz-checksum-*`` and GCS's ``x-goog-hash``;
- the bytes of this one response (a 206 covers its range only): RFC 9530 ``Content-Digest`` and
  ``Content-MD5``.

``Repr-Digest`` and ``Content-Digest`` are RFC 9651 structured-field dictionaries, parsed with
``http-sf``; RFC 3230's ``Digest`` and ``x-goog-hash`` are plain ``name=base64`` lists.

CRCs come from libraries, not from code here: CRC32 (S3's ``crc32``) from ``zlib``; CRC32C and
CRC64NVME from ``awscrt`` (``awscrt.checksums``), the AWS Common Runtime that botocore and the
AWS CLI use to make and check exactly these S3 checksums: one well-kept package, maintained by
AWS, with hardware-accelerated (SSE4.2/PCLMUL/ARM CRC) code for both and an incremental API;
``crc32c`` or ``google-crc32c`` would cover CRC32C only, and no other maintained package has
CRC64NVME. xxh64/xxh128 are offered when the optional ``xxhash`` package is installed.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import importlib.util
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# awscrt and http-sf are imported where first used: together they cost ~90 ms at import, paid
# by every process that imports bitsnb, while most transfers never see a CRC or a
# structured-field digest.

__all__ = [
    "KNOWN_ALGORITHMS",
    "REQUEST_HEADERS",
    "BackgroundHasher",
    "Digest",
    "Hasher",
    "Release",
    "content_digest",
    "digest_fields",
    "digest_request_headers",
    "known_digest",
    "new_hasher",
    "parse_checksums",
    "parse_known_hash",
    "representation_digest",
    "streaming_hasher",
]

# what a client sends to be told digests: RFC 9530 §4 preferences, and S3's checksum mode
REQUEST_HEADERS: Mapping[str, str] = {
    "Want-Repr-Digest": "sha-256=10, sha-512=3",
    "x-amz-checksum-mode": "ENABLED",
}
_PRESIGNED = re.compile(r"[?&]x-amz-(signature|credential)=", re.IGNORECASE)


def digest_request_headers(url: str) -> dict[str, str]:
    """The headers that ask a server for digests of *url*.

    S3 refuses a presigned URL's request that carries an ``x-amz-*`` header its signature
    does not cover ("headers present in the request which were not signed"), so a presigned
    URL is asked with ``Want-Repr-Digest`` only.
    """
    headers = dict(REQUEST_HEADERS)
    if _PRESIGNED.search(url):
        del headers["x-amz-checksum-mode"]
    return headers


Scope = Literal["representation", "content"]


class Hasher(Protocol):
    """What bitsnb hashes with: hashlib's interface, as far as it uses it."""

    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    """A CRC as a hasher: *fn(data, previous)*; the digest is the value, big-endian (as S3
    and GCS send it)."""

    def __init__(self, fn: Callable[[Any, int], int], width: int) -> None:
        self._fn = fn
        self._width = width
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


def _hashlib(name: str) -> Callable[[], Hasher]:
    return lambda: hashlib.new(name)


def _crc32() -> Hasher:
    return _Crc(zlib.crc32, 4)


def _crc32c() -> Hasher:
    from awscrt import checksums  # type: ignore[import-untyped]

    return _Crc(checksums.crc32c, 4)


def _crc64nvme() -> Hasher:
    from awscrt import checksums

    return _Crc(checksums.crc64nvme, 8)


_HASHERS: dict[str, Callable[[], Hasher]] = {
    "sha256": _hashlib("sha256"),
    "sha512": _hashlib("sha512"),
    "sha1": _hashlib("sha1"),
    "md5": _hashlib("md5"),
    "blake2b": _hashlib("blake2b"),
    "crc32": _crc32,
    "crc32c": _crc32c,
    "crc64nvme": _crc64nvme,
}
_SIZES = {"sha256": 32, "sha512": 64, "sha1": 20, "md5": 16, "blake2b": 64}

if importlib.util.find_spec("xxhash") is not None:  # optional
    _xxhash: Any = importlib.import_module("xxhash")
    _HASHERS["xxh64"] = _xxhash.xxh64
    _HASHERS["xxh128"] = _xxhash.xxh128
    _SIZES["xxh64"] = 8
    _SIZES["xxh128"] = 16

KNOWN_ALGORITHMS = frozenset(_SIZES)
"""The algorithms a known hash may name (pooch's, and xxhash's when it is installed)."""

# how strong a server's digest is: the strongest one sent is the one checked
_STRENGTH = ("sha512", "sha256", "sha1", "crc64nvme", "md5", "crc32c", "crc32")

# header names of algorithms → ours (RFC 9530's registry, RFC 3230's, S3's, GCS's)
_RFC9530 = {"sha-256": "sha256", "sha-512": "sha512", "md5": "md5", "sha": "sha1"}
_RFC3230 = {"sha-256": "sha256", "sha-512": "sha512", "sha": "sha1", "md5": "md5"}
_AMZ = {
    "x-amz-checksum-sha256": "sha256",
    "x-amz-checksum-sha1": "sha1",
    "x-amz-checksum-crc32": "crc32",
    "x-amz-checksum-crc32c": "crc32c",
    "x-amz-checksum-crc64nvme": "crc64nvme",
}
_GOOG = {"crc32c": "crc32c", "md5": "md5"}
_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True)
class Digest:
    """What some bytes should hash to: the algorithm (our name), the digest, who said so."""

    algorithm: str
    value: bytes
    source: str  # "known hash", "Repr-Digest", "x-amz-checksum-crc32c", ...
    scope: Scope = "representation"

    @property
    def text(self) -> str:
        """``alg:hex``, as known hashes are written."""
        return f"{self.algorithm}:{self.value.hex()}"


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hasher for one of our algorithm names (KeyError for another)."""
    return _HASHERS[algorithm]()


def parse_known_hash(text: str) -> str:
    """Check a known hash and return it as ``alg:hex`` (lower case); ValueError if malformed.

    ``"sha256:…"``, ``"md5:…"``…; a bare hex string is sha256 (pooch's rule).
    """
    if not isinstance(text, str):
        raise ValueError(f"a known hash is a string, not {type(text).__name__}")
    alg, sep, hexpart = text.strip().partition(":")
    if not sep:
        alg, hexpart = "sha256", alg
    alg = alg.strip().lower()
    if alg not in KNOWN_ALGORITHMS:
        raise ValueError(
            f"unknown hash algorithm {alg!r}; bitsnb knows {', '.join(sorted(KNOWN_ALGORITHMS))}"
        )
    hexpart = hexpart.strip()
    if not _HEX.fullmatch(hexpart) or len(hexpart) != 2 * _SIZES[alg]:
        raise ValueError(f"{alg} wants {2 * _SIZES[alg]} hex digits, not {hexpart!r}")
    return f"{alg}:{hexpart.lower()}"


def known_digest(text: str) -> Digest:
    """The Digest of a checked known hash (``parse_known_hash``'s form)."""
    alg, _, hexpart = parse_known_hash(text).partition(":")
    return Digest(alg, bytes.fromhex(hexpart), "known hash")


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _sized(alg: str, value: bytes | None) -> bool:
    width = {"crc32": 4, "crc32c": 4, "crc64nvme": 8}.get(alg, _SIZES.get(alg))
    return value is not None and len(value) == width


def _structured(header: str, value: str, names: Mapping[str, str], scope: Scope) -> list[Digest]:
    """The digests of an RFC 9530 field (an RFC 9651 dictionary of byte sequences)."""
    try:
        import http_sf

        parsed = http_sf.parse(value.encode("latin-1"), tltype="dictionary")
    except Exception:  # http-sf raises ValueError and others on a malformed field: ignore it
        return []
    if not isinstance(parsed, dict):
        return []
    out = []
    for key, member in parsed.items():
        item = member[0] if isinstance(member, tuple) else member
        alg = names.get(str(key))
        if alg is not None and isinstance(item, bytes) and _sized(alg, item):
            out.append(Digest(alg, item, header, scope))
    return out


def _pairs(header: str, value: str, names: Mapping[str, str], scope: Scope) -> list[Digest]:
    """The digests of a comma-separated ``name=base64`` list (RFC 3230, x-goog-hash)."""
    out = []
    for part in value.split(","):
        key, sep, encoded = part.strip().partition("=")
        alg = names.get(key.strip().lower())
        raw = _b64(encoded) if sep else None
        if alg is not None and _sized(alg, raw):
            assert raw is not None
            out.append(Digest(alg, raw, header, scope))
    return out


def _strongest(found: list[Digest]) -> Digest | None:
    ranked = [d for d in found if d.algorithm in _STRENGTH]
    return min(ranked, key=lambda d: _STRENGTH.index(d.algorithm), default=None)


_DIGEST_FIELDS = frozenset(
    name.encode("ascii")
    for name in ("repr-digest", "digest", "content-digest", "content-md5", "x-goog-hash", *_AMZ)
)


def digest_fields(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The digest fields among a response's raw header pairs, names lower-cased: one pass,
    where each lookup in httpx's ``Headers`` decodes and scans every field (ten a response)."""
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.lower()
        if key in _DIGEST_FIELDS:
            k, text = key.decode("ascii"), value.decode("latin-1")
            out[k] = f"{out[k]}, {text}" if k in out else text
    return out


def representation_digest(headers: Mapping[str, str]) -> Digest | None:
    """The strongest digest of the whole representation the server sent (None if none).

    Header names are looked up case-insensitively (*headers* is httpx's ``Headers``, or any
    mapping with lower-case keys).
    """
    found: list[Digest] = []
    if (v := headers.get("repr-digest")) is not None:
        found += _structured("Repr-Digest", v, _RFC9530, "representation")
    if (v := headers.get("digest")) is not None:
        found += _pairs("Digest", v, _RFC3230, "representation")
    for name, alg in _AMZ.items():
        v = headers.get(name)
        # a multipart upload's composite checksum ("…-5") is not the bytes' checksum: skipped
        if v is not None and "-" not in v and _sized(alg, raw := _b64(v)):
            assert raw is not None
            found.append(Digest(alg, raw, name, "representation"))
    if (v := headers.get("x-goog-hash")) is not None:
        found += _pairs("x-goog-hash", v, _GOOG, "representation")
    return _strongest(found)


def content_digest(headers: Mapping[str, str]) -> Digest | None:
    """The strongest digest of this response's own bytes (Content-Digest, Content-MD5)."""
    found: list[Digest] = []
    if (v := headers.get("content-digest")) is not None:
        found += _structured("Content-Digest", v, _RFC9530, "content")
    if (v := headers.get("content-md5")) is not None and _sized("md5", raw := _b64(v)):
        assert raw is not None
        found.append(Digest("md5", raw, "Content-MD5", "content"))
    return _strongest(found)


_SUMS_LINE = re.compile(r"([0-9a-fA-F]+) [ *](.+)")
_BY_LENGTH = {64: "sha256", 128: "sha512", 40: "sha1", 32: "md5"}


def parse_checksums(text: str, source: str = "SHA256SUMS") -> dict[str, str]:
    """The known hashes (``alg:hex``) a ``sha256sum``-style file gives, by file name.

    Lines are ``<hex>  <name>`` (``<hex> *<name>`` in binary mode); blank lines and ``#``
    comments are skipped and a leading ``./`` is dropped. The algorithm follows from the
    length (64 hex digits sha256, 128 sha512, 40 sha1, 32 md5), or is blake2b when *source*'s
    name says ``b2``. ValueError names the first malformed line.
    """
    blake = "b2" in source.rsplit("/", 1)[-1].lower()
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _SUMS_LINE.fullmatch(line.rstrip("\r\n"))
        alg = "blake2b" if blake else _BY_LENGTH.get(len(match.group(1))) if match else None
        if match is None or alg is None:
            raise ValueError(f"{source} line {number} is not '<hex>  <name>': {line[:80]!r}")
        name = match.group(2)
        name = name[2:] if name.startswith("./") else name
        out[name] = parse_known_hash(f"{alg}:{match.group(1)}")
    return out


Release = Callable[[], None]
"""Gives a kept view back to its lender (callable once, from any thread)."""


class BackgroundHasher:
    """A hasher fed from the caller's thread and run on a thread of its own.

    The first *inline* bytes are hashed in place (small files never see a thread). After that
    the bytes go to a worker thread, which hashes them while the caller goes on receiving and
    writing (hashlib releases the GIL on large buffers, so the hash runs on another core):

    - ``update_kept`` hands over the caller's view itself, no copy: the lender (the lean
      transport's receive buffers) keeps it valid until the worker has hashed it and called
      its release; the lender's pool bounds how far the caller gets ahead;
    - ``update`` copies into *block*-sized buffers (for views that are reused once the caller
      moves on); at most *depth* full blocks wait, a caller that gets that far ahead waits.

    The worker is woken once *wake* bytes wait (not per view), hashes until none is left,
    and, idle for *linger* seconds, hashes whatever waits (a partly filled block too), lets
    its buffers go and ends, so a hasher kept for a paused file holds neither memory nor a
    thread. ``digest`` waits for the rest and answers.
    """

    def __init__(
        self,
        hasher: Hasher,
        *,
        inline: int = 8 << 20,
        block: int = 4 << 20,
        depth: int = 3,
        wake: int = 2 << 20,
        linger: float = 0.05,
    ) -> None:
        self._hasher = hasher
        self._inline = inline
        self._block = block
        self._depth = depth
        self._wake = wake
        self._linger = linger
        self._buf: memoryview | None = None  # the block being filled (a bytearray's view)
        self._fill = 0
        self._free: list[memoryview] = []
        # views waiting for the worker, with their release (None: one of our blocks)
        self._pending: collections.deque[tuple[memoryview, Release | None]] = collections.deque()
        self._waiting = 0  # bytes in _pending
        self._own = 0  # of our blocks in _pending
        self._flush = False  # digest() waits: hash everything now
        self._running = False
        self._cond = threading.Condition()

    def update(self, data: bytes | memoryview, /) -> None:
        """Hash *data* (copied once the worker thread is in use: *data* may then be reused)."""
        if self._inline > 0:
            self._inline -= len(data)
            self._hasher.update(data)
            return
        view = memoryview(data).cast("B")
        with self._cond:
            while len(view):
                if self._buf is None:
                    self._buf = (
                        self._free.pop() if self._free else memoryview(bytearray(self._block))
                    )
                    self._fill = 0
                n = min(len(view), self._block - self._fill)
                self._buf[self._fill : self._fill + n] = view[:n]  # a memcpy
                self._fill += n
                view = view[n:]
                if self._fill == self._block:
                    while self._own >= self._depth:  # bounded: wait for the worker
                        self._cond.wait()
                    self._queue_block()

    def update_kept(self, view: memoryview, keep: Callable[[], Release], /) -> None:
        """Hash *view* without copying it: past the inline bytes, *keep()* is called to keep
        it valid, and the release it returns is called once the worker hashed it."""
        if self._inline > 0:
            self._inline -= len(view)
            self._hasher.update(view)
            return
        release = keep()
        with self._cond:
            if self._buf is not None and self._fill:  # copied bytes before it go first
                self._queue_block()
            self._queue(view, release)

    def _queue(self, view: memoryview, release: Release | None) -> None:
        """*view* to the worker, started if need be, woken once enough waits (lock held)."""
        self._pending.append((view, release))
        before = self._waiting
        self._waiting += len(view)
        if before < self._wake <= self._waiting:
            self._cond.notify_all()
        if not self._running:
            self._running = True
            threading.Thread(target=self._work, name="bitsnb-hash", daemon=True).start()

    def _queue_block(self) -> None:
        """The block being filled goes to the worker (lock held)."""
        assert self._buf is not None
        buf, fill = self._buf, self._fill
        self._buf = None
        self._fill = 0
        self._own += 1
        self._queue(buf[:fill], None)

    def _next(self, draining: bool) -> tuple[memoryview, Release | None] | None:
        """The next view to hash, waiting for enough of them (lock held); None: idle, end."""
        while True:
            if self._pending and (draining or self._flush or self._waiting >= self._wake):
                return self._pending[0]
            draining = False
            if self._cond.wait(self._linger):
                continue
            if self._pending:  # idle for a while: hash what waits
                draining = True
            elif self._buf is not None and self._fill:  # and a partly filled block
                self._queue_block()
                draining = True
            else:
                self._running = False
                self._buf = None
                self._free.clear()
                self._cond.notify_all()
                return None

    def _work(self) -> None:
        draining = True
        while True:
            with self._cond:
                item = self._next(draining)
                if item is None:
                    return
            view, release = item
            try:
                self._hasher.update(view)
            finally:
                if release is not None:
                    release()
            with self._cond:
                self._pending.popleft()
                self._waiting -= len(view)
                if release is None:
                    self._own -= 1
                    if len(self._free) < self._depth:
                        self._free.append(memoryview(view.obj))  # the whole block again
                draining = bool(self._pending)
                self._cond.notify_all()

    def digest(self) -> bytes:
        """The digest of everything given so far (waits for the worker to hash the rest)."""
        with self._cond:
            if self._buf is not None and self._fill:
                self._queue_block()
            self._flush = True
            self._cond.notify_all()
            try:
                while self._pending:
                    self._cond.wait()
            finally:
                self._flush = False
            return self._hasher.digest()


def streaming_hasher(algorithm: str) -> Hasher:
    """A hasher for a body that streams in: hashlib's on a thread of its own past the first
    few MiB (``BackgroundHasher``); CRCs and xxhash, fast enough inline, as they are."""
    hasher = new_hasher(algorithm)
    return BackgroundHasher(hasher) if algorithm in _THREADED else hasher


_THREADED = frozenset({"sha256", "sha512", "sha1", "md5", "blake2b"})
