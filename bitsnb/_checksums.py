"""Known hashes for the front ends: checked per file, read from a ``SHA256SUMS`` file, and the
cache that skips a destination already holding the right file.

``bitsnb.download``/``download_many`` and ``bitsnb transfer``/``addfile`` share these rules: a
hash given for a file wins over the checksums file's line for its name; every hash is checked
(``BitsError(E_INVALIDARG)``) before anything is created. A file in place is trusted without
reading it when a job of the store completed it, verified, and it is unchanged since (size,
mtime_ns and inode recorded at complete()); any other file there is hashed once.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Sequence

from ._codes import E_INVALIDARG
from ._enums import JobPriority, JobState
from ._errors import BitsError
from ._filehash import hash_file
from ._integrity import parse_checksums, parse_known_hash
from ._sync import Manager

__all__ = ["Entry", "checked_hash", "in_place", "missing", "read_checksums", "with_hashes"]

log = logging.getLogger("bitsnb.helpers")

Entry = tuple[str, str, str | None]
"""(URL, local path, known hash or None)."""


def _invalid(message: str) -> BitsError:
    return BitsError(E_INVALIDARG, message)


def checked_hash(text: object, what: str) -> str | None:
    """A checked known hash (``alg:hex``), None for a missing one (None, NaN, "")."""
    if text is None or text == "" or (isinstance(text, float) and text != text):
        return None
    try:
        return parse_known_hash(text)  # type: ignore[arg-type]
    except ValueError as exc:
        raise _invalid(f"the known hash of {what} is not valid: {exc}") from None


def _fetch_text(url: str, manager: Manager, timeout: float) -> str:
    """A small remote text file, fetched by a bitsnb job of its own into a private folder."""
    with tempfile.TemporaryDirectory(prefix="bitsnb-sums-") as folder:
        local = os.path.join(folder, "SUMS")
        name = url.rstrip("/").rsplit("/", 1)[-1][:200]
        job = manager.create_job(f"checksums {name}", priority=JobPriority.HIGH)
        try:
            job.add_file(url, local)
            job.resume()
            state = job.wait(timeout)
        except BaseException:
            job.cancel()
            raise
        if state is not JobState.TRANSFERRED:
            err = job.error
            job.cancel()
            detail = f": {err.message or err.description}" if err is not None else ""
            raise BitsError(
                err.code if err is not None else E_INVALIDARG,
                f"could not fetch the checksums file {url!r}{detail}",
            )
        job.complete()
        with open(local, encoding="utf-8", errors="replace") as fh:
            return fh.read()


def read_checksums(
    source: str | os.PathLike[str], manager: Manager | None, timeout: float = 60.0
) -> dict[str, str]:
    """The known hashes of a ``SHA256SUMS``-style file by file name: a local path, or (with a
    *manager* that transfers) a URL."""
    text = os.fspath(source)
    if "://" in text:
        if manager is None:
            raise _invalid(f"the checksums file {text!r} is a URL: give a local file here")
        body = _fetch_text(text, manager, timeout)
    else:
        try:
            with open(text, encoding="utf-8") as fh:
                body = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _invalid(f"cannot read the checksums file {text!r}: {exc}") from None
    try:
        return parse_checksums(body, text)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


def with_hashes(
    pairs: Sequence[tuple[str, str]], given: Sequence[object], sums: dict[str, str] | None
) -> list[Entry]:
    """Each (URL, path) with its known hash: *given*'s (parallel to *pairs*), else the line of
    *sums* for its file name (a name the sums lack is refused)."""
    hashes = [checked_hash(h, u) for h, (u, _) in zip(given, pairs, strict=True)]
    if sums is not None:
        by_base = {os.path.basename(n): h for n, h in sums.items()}
        for i, (url, path) in enumerate(pairs):
            if hashes[i] is None:
                name = os.path.basename(path)
                found = sums.get(name, by_base.get(name))
                if found is None:
                    raise _invalid(f"the checksums file has no line for {name!r} (from {url!r})")
                hashes[i] = found
    return [(u, p, h) for (u, p), h in zip(pairs, hashes, strict=True)]


def in_place(manager: Manager, path: str, known: str) -> bool:
    """Does *path* already hold the file *known* says? Trusted without reading when a job of
    the store completed it, or bitsnb hashed it, and it is unchanged since; any other file
    there is hashed once, and recorded when it matches."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if manager.verified_hash(path) == known:
        return True
    try:
        got = hash_file(path, known.split(":", 1)[0])
    except OSError:
        return False
    if got == known:
        manager.record_hash(path, got, seen=(st.st_size, st.st_mtime_ns, st.st_ino))
        return True
    log.info("%s does not match its known hash (%s): downloading it again", path, got)
    return False


def missing(manager: Manager, entries: Sequence[Entry]) -> list[Entry]:
    """The entries whose destination does not already hold the right file (pooch's cache)."""
    return [e for e in entries if e[2] is None or not in_place(manager, e[1], e[2])]
