"""Where a job's files are (``paths``) and the temporary files abandoned jobs leave (``cleanup``)."""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import BitsError
from ._format import format_bytes
from ._helpers_manager import default_manager
from ._sync import Job, Manager

# -- where the files are, and what is left behind ---------------------------------------------


def paths(job: Job | Path) -> list[Path]:
    """The local paths of *job*'s files, in the order they were added (where they are once the
    job is complete); for the ``Path`` ``download()`` returns from its cache, that path."""
    if isinstance(job, Path):
        return [job]
    return [Path(f.local_name) for f in job.files]


_TEMP_NAME = re.compile(r"^\.BIT[0-9A-F]{12}\.tmp$")


@dataclass(frozen=True)
class CleanupReport:
    """What ``cleanup()`` found: the orphaned temporary files, their size, whether they were
    removed (False for ``dry_run``), and the ones that could not be removed."""

    paths: list[Path]
    bytes: int
    removed: bool
    failed: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        verb = "removed" if self.removed else "would remove"
        n = len(self.paths)
        if not n:
            return "no orphaned temporary files"
        head = f"{verb} {n} temporary file{'s' if n != 1 else ''} ({format_bytes(self.bytes)})"
        lines = [head, *(f"  {p}" for p in self.paths[:20])]
        if n > 20:
            lines.append(f"  … and {n - 20} more")
        if self.failed:
            lines.append(f"could not remove {len(self.failed)}: {self.failed[0]} …")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def __len__(self) -> int:
        return len(self.paths)


def cleanup(
    folders: Iterable[str | os.PathLike[str]] | None = None,
    *,
    manager: Manager | None = None,
    dry_run: bool = False,
    min_age: float = 60.0,
) -> CleanupReport:
    """Remove the hidden temporary files (``.BIT<hex>.tmp``) that no live job owns.

    A download writes into a temporary file beside its destination; Complete renames it and
    Cancel deletes it, but a job that was forgotten (its store deleted, a crash before
    cancelling, a job removed from another machine) leaves it behind. A temporary file is
    orphaned when no job of *manager*'s store that is still in the queue (not ACKNOWLEDGED or
    CANCELLED) names it. *folders* defaults to every folder the store's jobs (finished ones
    too) write to. Files changed in the last *min_age* seconds are kept: they may belong to a
    job being set up elsewhere. ``dry_run=True`` only lists them.
    """
    mgr = manager if manager is not None else default_manager()
    try:
        jobs = list(mgr.enum_jobs(all_users=True, include_finished=True))
    except BitsError:  # not allowed to see the other users' jobs
        jobs = list(mgr.enum_jobs(include_finished=True))
    claimed: set[str] = set()
    seen_folders: set[str] = set()
    for job in jobs:
        live = not job.state.is_final
        for f in job.files:
            seen_folders.add(os.path.dirname(os.path.abspath(f.local_name)))
            if live:
                claimed.add(os.path.abspath(f.temporary_name))
    wanted = (
        sorted(seen_folders)
        if folders is None
        else [os.path.abspath(os.fspath(f)) for f in folders]
    )
    now = time.time()
    found: list[Path] = []
    size = 0
    failed: list[Path] = []
    for folder in wanted:
        for name in sorted(glob.glob(os.path.join(glob.escape(folder), ".BIT*.tmp"))):
            if not _TEMP_NAME.match(os.path.basename(name)) or name in claimed:
                continue
            try:
                st = os.stat(name)
            except OSError:
                continue
            if now - st.st_mtime < min_age:
                continue
            if not dry_run:
                try:
                    os.remove(name)
                except OSError:
                    failed.append(Path(name))
                    continue
            found.append(Path(name))
            size += st.st_size
    return CleanupReport(found, size, not dry_run, failed)
