"""Completion and temporary files: names, atomic moves into place, folder fsyncs.

A download is written to a hidden temporary file beside its destination (``.BIT<hex>.tmp``,
as BITS names them) and renamed to its final name only by ``complete()``; a rename is durable
once its folder is fsynced. These functions work on records and the file system; the caller
records what they did in the store and moves the job's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import _codes
from ._enums import ErrorContext, JobType
from ._errors import BitsError
from ._records import FileRecord, JobRecord
from ._store_api import JobStore

__all__ = [
    "Completion",
    "FolderSync",
    "default_reply_name",
    "delete_temps",
    "delete_untransferred",
    "fsync_dirs",
    "move_reply",
    "move_transferred",
    "record_hash",
    "temp_name",
    "verified_hash",
]


def temp_name(local: str) -> str:
    """A fresh hidden temporary name in *local*'s folder."""
    folder = os.path.dirname(local)
    return os.path.join(folder, f".BIT{secrets.token_hex(6).upper()}.tmp")


def default_reply_name(rec: JobRecord) -> str:
    """BITS invents a reply name beside the uploaded file when none was set."""
    local = rec.files[0].local_name if rec.files else os.path.join(os.getcwd(), "upload")
    return f"{local}.{rec.id.hex[:8]}.reply"


@dataclass
class Completion:
    """What complete() did: the result code, the folders to fsync, or the move that failed.

    ``finish()`` syncs the folders in the calling thread, then answers or raises.
    """

    code: int
    folders: set[str] = field(default_factory=set)
    error: BitsError | None = None

    def result(self) -> int:
        """The HRESULT, or the move failure raised (once the folders are synced)."""
        if self.error is not None:
            raise self.error
        return self.code

    def finish(self) -> int:
        """Sync the folders in the calling thread, then ``result()``."""
        fsync_dirs(self.folders)
        return self.result()


def _already_moved(f: FileRecord) -> bool:
    """A crash between the rename and the store write left the file moved but not recorded."""
    return not os.path.exists(f.temp_name) and os.path.exists(f.local_name)


def _move(f: FileRecord) -> None:
    """Rename the temporary file to the local name (done already if a crash came between)."""
    try:
        os.replace(f.temp_name, f.local_name)
    except FileNotFoundError:
        if not _already_moved(f):
            raise


def move_transferred(rec: JobRecord) -> Completion:
    """Rename every transferred, not yet completed file into place and mark it completed.

    Stops at the first move that fails (BITS: the job stays TRANSFERRED, renamed files stay
    renamed): the answer then carries the error. Otherwise its code says whether some files
    were not transferred (BG_S_PARTIAL_COMPLETE).
    """
    done = Completion(_codes.S_OK)
    for f in rec.files:
        if f.completed:
            continue
        if not f.transferred:
            done.code = _codes.BG_S_PARTIAL_COMPLETE
            continue
        try:
            if f.temp_name != f.local_name:
                _move(f)
        except OSError as exc:
            done.code = _codes.E_FAIL
            done.error = BitsError(
                _codes.hresult_from_errno(exc.errno),
                f"cannot move {f.temp_name!r} to {f.local_name!r}: {exc.strerror}; fix it and "
                "call complete() again, or cancel()",
                context=ErrorContext.LOCAL_FILE,
            )
            return done
        f.completed = True
        f.placed = _placed(f) if f.hash is not None and f.validation_state else None
        done.folders.add(os.path.dirname(f.local_name))
    return done


def _placed(f: FileRecord) -> tuple[int, int, int] | None:
    """What a verified file is as complete() leaves it (size, mtime_ns, inode), so that
    ``download()`` can later trust it unchanged without hashing it again."""
    try:
        st = os.stat(f.local_name)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def verified_hash(store: JobStore, local_name: str) -> str | None:
    """The hash a job verified for the file it completed at *local_name*, or that bitsnb
    recorded on hashing it there, if the file is still as it was then (same size, mtime_ns and
    inode); None otherwise."""
    try:
        st = os.stat(local_name)
    except OSError:
        return None
    now = (st.st_size, st.st_mtime_ns, st.st_ino)
    for found in (store.placed_file(local_name), store.hashed_file(local_name)):
        if found is not None and found[1] == now:
            return found[0]
    return None


def record_hash(
    store: JobStore, local_name: str, hash_: str, seen: tuple[int, int, int] | None
) -> bool:
    """Record that the file at *local_name* hashes to *hash_*, as it is now (and as *seen*
    says it was when hashed, if given); False, recording nothing, when it is gone or changed."""
    try:
        st = os.stat(local_name)
    except OSError:
        return False
    now = (st.st_size, st.st_mtime_ns, st.st_ino)
    if seen is not None and tuple(seen) != now:
        return False
    store.record_hash(local_name, hash_, now)
    return True


def delete_untransferred(rec: JobRecord) -> None:
    """complete() of a partly transferred job: the files it leaves behind lose their temps."""
    if rec.settings.high_performance:
        return
    for f in rec.files:
        if not f.transferred:
            with contextlib.suppress(OSError):
                os.unlink(f.temp_name)


def delete_temps(rec: JobRecord) -> bool:
    """cancel(): delete the job's temporary files; False when one could not be deleted."""
    ok = True
    reply_temp = rec.settings.reply_temp_name
    if reply_temp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(reply_temp)
    if rec.type is not JobType.DOWNLOAD:
        return ok  # an upload's local file is the user's, never ours to delete
    for f in rec.files:
        if f.completed or rec.settings.high_performance:
            continue
        try:
            os.unlink(f.temp_name)
        except FileNotFoundError:
            pass
        except OSError:
            ok = False
    return ok


def move_reply(rec: JobRecord) -> None:
    """complete() of an upload-reply job: the reply moves from its temporary name into place."""
    s = rec.settings
    if rec.type is not JobType.UPLOAD_REPLY or not s.reply_temp_name or not s.reply_file_name:
        return
    try:
        if os.path.exists(s.reply_temp_name):
            os.replace(s.reply_temp_name, s.reply_file_name)
            _fsync_dir(os.path.dirname(s.reply_file_name))
    except OSError as exc:
        raise BitsError(
            _codes.hresult_from_errno(exc.errno),
            f"cannot move the reply to {s.reply_file_name!r}: {exc.strerror}",
            context=ErrorContext.LOCAL_FILE,
        ) from exc


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dirs(folders: Iterable[str]) -> None:
    """Make the renames in *folders* durable."""
    for folder in folders:
        _fsync_dir(folder)


class FolderSync:
    """Folder fsyncs off the loop, shared between the complete() calls that need them.

    A rename is durable once an fsync of its folder *started after it* has finished. So at most
    one fsync per folder runs; callers arriving while it runs wait for the next one, which
    starts when it ends and serves all of them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._running: set[str] = set()
        self._next: dict[str, asyncio.Future[None]] = {}

    async def sync(self, folders: Iterable[str]) -> None:
        """Return once every folder in *folders* was synced after this call began."""
        waits = [self._ticket(folder) for folder in folders]
        for fut in waits:
            await asyncio.shield(fut)

    def _ticket(self, folder: str) -> asyncio.Future[None]:
        fut = self._next.get(folder)
        if fut is None:
            fut = self._next[folder] = self._loop.create_future()
            if folder not in self._running:
                self._start(folder)
        return fut

    def _start(self, folder: str) -> None:
        waiters = self._next.pop(folder)
        self._running.add(folder)
        job = self._loop.run_in_executor(None, _fsync_dir, folder)

        def done(_: asyncio.Future[None]) -> None:
            self._running.discard(folder)
            if not waiters.done():
                waiters.set_result(None)
            if folder in self._next:  # callers came while it ran: their own sync now
                self._start(folder)

        job.add_done_callback(done)
