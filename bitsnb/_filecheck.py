"""A transfer's integrity checks: the hashes one file keeps as its bytes stream in, and the
verdicts on the whole file's digest and on each response's Content-Digest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import _codes
from ._enums import ErrorContext
from ._failures import TransferFailure
from ._integrity import BackgroundHasher, Digest, Hasher, Release, new_hasher
from ._records import FileRecord
from ._tempfile import truncate_temp

__all__ = [
    "Check",
    "Partial",
    "check_content",
    "feeder",
    "update_all",
    "validation_failure",
    "verify",
]


def validation_failure(f: FileRecord, message: str) -> TransferFailure:
    """BG_E_VALIDATION_FAILED for *f* (fatal: the job goes to ERROR; resume() fetches it again)."""
    return TransferFailure(
        _codes.BG_E_VALIDATION_FAILED,
        ErrorContext.REMOTE_FILE,
        transient=False,
        message=f"{f.local_name}: {message}",
        protocol="http",
    )


@dataclass
class Partial:
    """A hash of a file's first *hashed* bytes, as they are on disk."""

    algorithm: str
    hasher: Hasher
    hashed: int


class Check:
    """The hashes one file's transfer keeps: the whole file's and the current response's."""

    def __init__(self, expected: Digest | None, partial: Partial | None) -> None:
        self.expected = expected  # the whole file's digest (a known hash or the server's)
        self.whole = partial  # the whole file's hash so far (None until a body starts)
        self.content: Digest | None = None  # the current response's Content-Digest
        self.content_hasher: Hasher | None = None
        self.sound = True  # False once a hasher may have missed bytes (not kept for later)

    def hashers(self) -> list[Hasher]:
        out = [self.whole.hasher] if self.whole is not None else []
        if self.content_hasher is not None:
            out.append(self.content_hasher)
        return out


def update_all(hashers: list[Hasher], view: memoryview) -> None:
    for h in hashers:
        h.update(view)


def feeder(
    hashers: list[Hasher], keep: Callable[[], Release] | None
) -> Callable[[memoryview], None]:
    """What hashes each view of a body: with *keep* (the transport lends views it can keep
    valid), a hasher on its own thread is handed the view itself, no copy; the rest hash it
    in place, before the next view is taken."""
    kept = [h for h in hashers if isinstance(h, BackgroundHasher)] if keep is not None else []
    rest = [h for h in hashers if h not in kept]
    if keep is None or not kept:
        return lambda view: update_all(rest, view)
    keeper = keep

    def feed(view: memoryview) -> None:
        for h in rest:
            h.update(view)
        for k in kept:
            k.update_kept(view, keeper)

    return feed


def check_content(f: FileRecord, check: Check) -> None:
    """A response's Content-Digest against the bytes it brought (a mismatch: the file again)."""
    expected, hasher = check.content, check.content_hasher
    check.content = check.content_hasher = None
    if expected is None or hasher is None:
        return
    got = hasher.digest()
    if got != expected.value:
        check.whole = None
        check.sound = False
        truncate_temp(f)
        f.validation_state = False
        raise validation_failure(
            f,
            f"{expected.algorithm} mismatch in this response's bytes: expected "
            f"{expected.value.hex()} ({expected.source}), got {got.hex()}",
        )


def verify(f: FileRecord, check: Check) -> None:
    """Every byte is in: the whole file's hash against what it should be (a mismatch
    empties the temporary file and raises BG_E_VALIDATION_FAILED)."""
    whole, expected = check.whole, check.expected
    if whole is None or whole.hashed != f.bytes_transferred:
        if expected is not None and f.bytes_transferred == 0:
            whole = Partial(expected.algorithm, new_hasher(expected.algorithm), 0)
        else:
            return  # nothing was asked for
    got = whole.hasher.digest()
    f.hash = f"{whole.algorithm}:{got.hex()}"
    if expected is not None and got != expected.value:
        truncate_temp(f)
        f.validation_state = False
        raise validation_failure(
            f,
            f"{expected.algorithm} mismatch: expected {expected.value.hex()} "
            f"({expected.source}), got {got.hex()}",
        )
    f.validation_state = True
