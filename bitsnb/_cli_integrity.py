"""The command line's integrity parts: ``--checksum``/``--checksum-file`` for ``transfer`` and
``addfile``, and ``bitsnb verify JOB``, which hashes a finished job's files again.

``verify`` prints one line per file, as ``sha256sum -c`` does (``PATH: OK``, ``PATH: FAILED
(expected …, got …)``, ``PATH: MISSING``), against the hash the store recorded (the one
computed while the bytes streamed in, else the known hash); any FAILED or MISSING is exit 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._checksums import Entry, missing, read_checksums, with_hashes
from ._cli_output import EXIT_OK, EXIT_TRANSFER_FAILED, Output, safe_text
from ._codes import BG_E_INVALID_STATE, E_INVALIDARG
from ._enums import JobState
from ._errors import BitsError
from ._filehash import hash_file
from ._sync import Job, Manager

__all__ = ["add_checksum_options", "cli_entries", "verify_job"]


def add_checksum_options(p: argparse.ArgumentParser, *, remote_file: bool) -> None:
    """``--checksum ALG:HEX`` (repeatable: one per URL, in order) and ``--checksum-file``."""
    p.add_argument(
        "--checksum",
        action="append",
        metavar="ALG:HEX",
        help="the file's known hash (sha256:..., md5:...; bare hex is sha256), checked as it "
        "streams in; repeat it once per URL, in order",
    )
    where = "a path or a URL" if remote_file else "a local path"
    p.add_argument(
        "--checksum-file",
        metavar="SUMS",
        help=f"a SHA256SUMS-style file ('<hex>  <name>' lines; {where}) for the files' hashes",
    )


def cli_entries(
    args: argparse.Namespace,
    pairs: Sequence[tuple[str, str]],
    mgr: Manager | None,
    *,
    skip_in_place: bool = False,
    fetch: bool = False,
) -> list[Entry]:
    """(URL, path, known hash) for *pairs* from ``--checksum``/``--checksum-file`` (checked
    before anything is created); with *skip_in_place*, files already right are left out; with
    *fetch* (a manager that transfers), the checksums file may be a URL."""
    given: list[str | None] = list(args.checksum or [])
    if given and len(given) != len(pairs):
        raise BitsError(
            E_INVALIDARG,
            f"{len(given)} --checksum values for {len(pairs)} files; give one per URL, in order",
        )
    sums = None
    if args.checksum_file:
        sums = read_checksums(args.checksum_file, mgr if fetch else None)
    entries = with_hashes(pairs, given or [None] * len(pairs), sums)
    if skip_in_place and mgr is not None:
        return missing(mgr, entries)
    return entries


def _where(job: Job, transferred: bool, local: str, temp: str) -> str | None:
    if not transferred:
        return None
    return local if job.state is JobState.ACKNOWLEDGED else temp


def verify_job(job: Job, out: Output) -> int:
    """Hash each transferred file of a finished job again against what the store recorded."""
    if job.state not in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED):
        raise BitsError(
            BG_E_INVALID_STATE,
            f"job {job.display_name!r} is {job.state.name}: verify checks a TRANSFERRED or "
            "ACKNOWLEDGED (completed) job",
        )
    bad = checked = 0
    for f in job.files:
        path = _where(job, f.transferred, f.local_name, f.temporary_name)
        shown = safe_text(f.local_name)
        expected = f.hash or f.known_hash
        if path is None:
            out.line(f"{shown}: not transferred (skipped)")
            continue
        if expected is None:
            out.line(f"{shown}: no hash recorded (skipped)")
            continue
        alg = expected.split(":", 1)[0]
        try:
            got = hash_file(path, alg)
        except FileNotFoundError:
            out.line(f"{shown}: MISSING", style="red")
            bad += 1
            continue
        except OSError as exc:
            out.line(f"{shown}: UNREADABLE ({exc.strerror})", style="red")
            bad += 1
            continue
        checked += 1
        if got == expected:
            out.line(f"{shown}: OK ({alg})")
        else:
            out.line(f"{shown}: FAILED (expected {expected}, got {got})", style="red")
            bad += 1
    if bad:
        out.note(f"verify: {bad} of {len(job.files)} files do not match what was recorded")
        return EXIT_TRANSFER_FAILED
    out.note(f"verify: {checked} of {len(job.files)} files match what was recorded")
    return EXIT_OK
