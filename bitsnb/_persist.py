"""The queue's records in memory, kept equal to the store: a record changes only once the store
accepted the change.

Every change to a job goes through ``Records.change``: it applies the change, writes the row
(and the files named), and when the write raises — another process holds the lock, a value
the store refuses — puts the record back as it was before raising. One move is recorded by the
next write rather than its own (``move_in_memory``: CONNECTING → TRANSFERRING, which a restart
treats alike). A write that loses to
another process's newer version takes that version instead (``take_newer``, supplied by the
replication part). State changes go through ``set_state``, which asks ``_states`` for the move.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ._enums import JobState
from ._errors import StoreBusyError
from ._events import Events
from ._records import FileRecord, JobRecord
from ._states import Event, allowed, transition
from ._store_api import JobStore

__all__ = ["STARTABLE", "Records", "await_patiently", "call_patiently", "copy_record"]

# states a job may be (re)started from; leaving them gives up the transfer lease
STARTABLE = frozenset({JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING})
_CONFLICT_RETRIES = 5
_T = TypeVar("_T")


async def await_patiently(timeout: float, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` on the loop, retried after short sleeps while another process holds the
    store's write lock (each try waits a few ms at most), for up to *timeout* seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            return fn(*args)
        except StoreBusyError:
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)


def call_patiently(timeout: float, call: Callable[[], _T]) -> _T:
    """``call()`` (which runs a store operation on the loop and waits for it) from another
    thread, retried while the store is busy: the waiting happens here, never on the loop."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            return call()
        except StoreBusyError:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)


class _Snapshot:
    """A record's fields and the named files' fields, to put back if the write fails.

    Copies of the instances' ``__dict__``: a few hundred nanoseconds a record, where
    ``copy.copy`` of the dataclasses cost microseconds on every write.
    """

    __slots__ = ("fields", "file_fields", "files", "rec", "settings")

    def __init__(self, rec: JobRecord, files: Iterable[FileRecord]) -> None:
        self.rec = rec
        self.fields = rec.__dict__.copy()
        self.settings = rec.settings.__dict__.copy()
        self.files = list(rec.files)
        self.file_fields = [(f, f.__dict__.copy()) for f in files]

    def restore(self) -> None:
        self.rec.__dict__.update(self.fields)
        self.rec.settings.__dict__.update(self.settings)
        self.rec.files[:] = self.files
        for live, saved in self.file_fields:
            live.__dict__.update(saved)


def copy_record(rec: JobRecord, fresh: JobRecord) -> None:
    """Make *rec* (the object handles point at) hold *fresh*'s values."""
    for name in JobRecord.__dataclass_fields__:
        setattr(rec, name, getattr(fresh, name))


class Records:
    """The jobs this manager knows, by id, and the one way to change them."""

    def __init__(self, store: JobStore, events: Events) -> None:
        self.store = store
        self.jobs: dict[uuid.UUID, JobRecord] = {}
        self._events = events
        # set by the manager once its parts exist: is the job transferring here, and how to
        # take another process's newer version of a job (see ``Replication.take_newer``)
        self.running_here: Callable[[uuid.UUID], bool] = lambda job_id: False
        self.take_newer: Callable[[JobRecord, JobRecord], None] = copy_record
        self.merge_control: Callable[[JobRecord, JobRecord], None] = copy_record

    # -- writing ----------------------------------------------------------------------------------
    def save(
        self, rec: JobRecord, files: Iterable[FileRecord] = (), *, release: bool = False
    ) -> bool:
        """Write *rec* (and *files*) as they are in memory; False when another process's newer
        version won (then *rec* holds that version, or ours merged with it while we transfer).

        Raises ``BitsError`` (``StoreBusyError`` while another process writes) and writes
        nothing; use ``change`` so that memory is put back too.
        """
        files = list(files)
        for _ in range(_CONFLICT_RETRIES):
            if self.store.save_job(rec, files, release=release):
                return True
            fresh = self.store.load_job(rec.id)
            if fresh is None:
                return False
            if not self.running_here(rec.id):
                self.take_newer(rec, fresh)  # not ours to run: the store's version wins
                return False
            self.merge_control(rec, fresh)  # ours to run: its control fields, our progress
        return False

    def change(
        self,
        rec: JobRecord,
        apply: Callable[[], object],
        files: Iterable[FileRecord] = (),
        *,
        release: bool = False,
    ) -> bool:
        """Apply *apply()* to *rec* (and *files*), then write them; if the write raises, put
        *rec* and *files* back as they were and raise. False as for ``save``."""
        files = list(files)
        snapshot = _Snapshot(rec, files)
        try:
            apply()
            return self.save(rec, files, release=release)
        except BaseException:
            snapshot.restore()
            raise

    async def change_patiently(
        self,
        rec: JobRecord,
        apply: Callable[[], object],
        files: Iterable[FileRecord] = (),
        *,
        release: bool = False,
    ) -> bool:
        """``change``, retried while another process holds the store's lock: the loop keeps
        running between tries, for up to the store's busy timeout."""
        files = list(files)
        return await await_patiently(
            self.store.busy_timeout, lambda: self.change(rec, apply, files, release=release)
        )

    def set_state(
        self,
        rec: JobRecord,
        event: Event,
        files: Iterable[FileRecord] = (),
        *,
        also: Callable[[], object] | None = None,
    ) -> None:
        """Move *rec* by *event* (the state table decides), with *also()* applied in the same
        write; a job that leaves the running states gives up its lease in that write."""
        new = transition(rec.state, event, rec.type)

        def apply() -> None:
            if also is not None:
                also()
            rec.state = new
            rec.touch()

        self.change(rec, apply, files, release=new not in STARTABLE)
        self._events.emit(rec, "state")

    async def set_state_patiently(
        self,
        rec: JobRecord,
        event: Event,
        files: Iterable[FileRecord] = (),
        *,
        also: Callable[[], object] | None = None,
    ) -> None:
        """``set_state``, retried while another process holds the store's lock."""
        new = transition(rec.state, event, rec.type)

        def apply() -> None:
            if also is not None:
                also()
            rec.state = new
            rec.touch()

        await self.change_patiently(rec, apply, files, release=new not in STARTABLE)
        self._events.emit(rec, "state")

    def start(self, rec: JobRecord, lease_seconds: float) -> bool:
        """Move a queued job to CONNECTING and take its lease in one write; False (and *rec* as
        it was) when the row changed elsewhere or another process holds the lease."""
        state = rec.state
        if state in (JobState.CONNECTING, JobState.TRANSFERRING):
            state = transition(state, Event.TAKE_OVER, rec.type)  # a stopped process's job
        if not allowed(state, Event.START, rec.type):
            return False
        new = transition(state, Event.START, rec.type)
        snapshot = _Snapshot(rec, ())
        rec.state = new
        rec.touch()
        try:
            started = self.store.start(rec, lease_seconds)
        except BaseException:
            snapshot.restore()
            raise
        if not started:
            snapshot.restore()
            return False
        self._events.emit(rec, "state")
        return True

    def move_in_memory(self, rec: JobRecord, event: Event) -> None:
        """The one move recorded by the next write instead of its own: CONNECTING →
        TRANSFERRING (a restart treats the two alike, so nothing is lost if that write never
        comes; a write of its own would cost one commit per job started)."""
        new = transition(rec.state, event, rec.type)
        rec.state = new
        self._events.emit(rec, "state")

    def try_save(self, rec: JobRecord, files: Iterable[FileRecord]) -> bool:
        """A save that may be skipped (a checkpoint, a file's validators): False, with nothing
        changed, when the store is busy; the next one records the same facts."""
        try:
            return self.save(rec, files)
        except StoreBusyError:
            return False

    # -- reading ----------------------------------------------------------------------------------
    def refresh(self, rec: JobRecord) -> bool:
        """Bring *rec* up to date with the store before an application call changes it; False
        when the job is no longer in the store."""
        if self.running_here(rec.id):
            return True  # we are transferring it: ours is the newest
        version = self.store.version_of(rec.id)
        if version == rec.version:
            return True
        fresh = self.store.load_job(rec.id) if version is not None else None
        if fresh is None:
            return False
        self.take_newer(rec, fresh)
        return True
