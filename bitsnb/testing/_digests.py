"""The digest headers ``FileServer`` can send with a file: kinds, their algorithms, the fields.

Computed with hashlib, zlib and awscrt over the served file (or the response's own bytes), right
or, on request, each with its first byte flipped.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import zlib
from collections.abc import Iterable
from typing import IO, Literal, get_args

from awscrt import checksums  # type: ignore[import-untyped]

__all__ = ["DIGEST_KINDS", "DigestBook", "DigestKind", "digest_fields"]

DigestKind = Literal[
    "repr-sha-256",
    "repr-sha-512",
    "digest-sha-256",
    "amz-sha256",
    "amz-sha1",
    "amz-crc32",
    "amz-crc32c",
    "amz-crc64nvme",
    "goog-crc32c",
    "goog-md5",
    "content-sha-256",
    "content-md5",
]
"""Digest headers ``FileServer.send_digests`` can add: ``repr-*`` (RFC 9530 Repr-Digest, sent
when the request has Want-Repr-Digest), ``digest-*`` (RFC 3230 Digest), ``amz-*`` (S3's
x-amz-checksum-*, sent when the request has ``x-amz-checksum-mode: ENABLED``), ``goog-*``
(GCS's x-goog-hash) of the whole file; ``content-*`` (RFC 9530 Content-Digest, Content-MD5) of
the response's own bytes."""
DIGEST_KINDS: tuple[DigestKind, ...] = get_args(DigestKind)

# kind → (algorithm, scope); the algorithms computed here with hashlib, zlib and awscrt
_DIGEST_ALGS: dict[str, str] = {
    "repr-sha-256": "sha256",
    "repr-sha-512": "sha512",
    "digest-sha-256": "sha256",
    "amz-sha256": "sha256",
    "amz-sha1": "sha1",
    "amz-crc32": "crc32",
    "amz-crc32c": "crc32c",
    "amz-crc64nvme": "crc64nvme",
    "goog-crc32c": "crc32c",
    "goog-md5": "md5",
    "content-sha-256": "sha256",
    "content-md5": "md5",
}

_BLOCK = 1 << 20  # files are read in 1 MiB blocks


def _digest_of(alg: str, fh: IO[bytes], start: int, length: int) -> bytes:
    """The digest of *length* bytes of *fh* from *start* (CRCs big-endian, as S3/GCS send)."""
    crc = {"crc32": (zlib.crc32, 4), "crc32c": (checksums.crc32c, 4)}
    crc["crc64nvme"] = (checksums.crc64nvme, 8)
    h = None if alg in crc else hashlib.new(alg)
    value = 0
    fh.seek(start)
    left = length
    while left > 0:  # bounded: each pass reads ≥ 1 byte or stops
        block = fh.read(min(_BLOCK, left))
        if not block:
            break
        left -= len(block)
        if h is not None:
            h.update(block)
        else:
            value = crc[alg][0](block, value)
    if h is not None:
        return h.digest()
    return int(value).to_bytes(crc[alg][1], "big")


class DigestBook:
    """Which files get which digest headers, by name glob (the caller holds the lock)."""

    def __init__(self) -> None:
        self._rules: list[tuple[str, tuple[DigestKind, ...], bool]] = []

    def set(self, name_glob: str, kinds: Iterable[DigestKind], wrong: bool) -> None:
        """Send *kinds* for files matching *name_glob* (replacing that glob's rule; none: stop)."""
        chosen = tuple(kinds)
        for kind in chosen:
            if kind not in _DIGEST_ALGS:
                raise ValueError(f"unknown digest kind {kind!r}; known: {DIGEST_KINDS}")
        glob = name_glob.lstrip("/")
        self._rules = [d for d in self._rules if d[0] != glob]
        if chosen:
            self._rules.append((glob, chosen, wrong))

    def for_name(self, name: str) -> tuple[tuple[DigestKind, ...], bool]:
        """The kinds for *name* (the first matching rule) and whether to send them wrong."""
        for glob, kinds, wrong in self._rules:
            if fnmatch.fnmatchcase(name, glob):
                return kinds, wrong
        return (), False


def digest_fields(
    kinds: Iterable[DigestKind],
    wrong: bool,
    *,
    want_repr: bool,
    want_amz: bool,
    fh: IO[bytes],
    size: int,
    start: int,
    length: int,
) -> list[tuple[str, str]]:
    """The header fields for *kinds* (right, or each one's first byte flipped): the whole
    file's digests, and the ``content-*`` ones of the *length* bytes sent from *start*."""
    fields: dict[str, list[str]] = {}
    for kind in kinds:
        family = kind.split("-", 1)[0]
        if (family == "repr" and not want_repr) or (family == "amz" and not want_amz):
            continue
        alg = _DIGEST_ALGS[kind]
        whole = family != "content"
        raw = _digest_of(alg, fh, 0 if whole else start, size if whole else length)
        if wrong:
            raw = bytes([raw[0] ^ 0xFF]) + raw[1:]
        b64 = base64.b64encode(raw).decode()
        if family in ("repr", "content") and kind != "content-md5":
            header = "Repr-Digest" if family == "repr" else "Content-Digest"
            fields.setdefault(header, []).append(f"{kind.split('-', 1)[1]}=:{b64}:")
        elif kind == "content-md5":
            fields["Content-MD5"] = [b64]
        elif family == "digest":
            fields.setdefault("Digest", []).append(f"SHA-256={b64}")
        elif family == "amz":
            fields[f"x-amz-checksum-{alg}"] = [b64]
        else:
            fields.setdefault("x-goog-hash", []).append(f"{alg}={b64}")
    return [(k, ", ".join(v)) for k, v in fields.items()]
