"""Running a download job: its files in flight (started in order, a few at once), the ones that
finished together recorded in one write (each only after its bytes were fsynced), and the last
ones' end and the job's in one write."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from . import _codes
from ._engine import Engine, FileContext, TransferFailure, YieldSlice
from ._events import Events
from ._inflight import files_in_flight
from ._models import Policy
from ._persist import Records
from ._records import FileRecord, JobRecord
from ._scheduler import Scheduler
from ._states import Event

__all__ = ["DownloadRun"]

_REFUSALS = frozenset({_codes.http_error(503), _codes.http_error(429)})


class DownloadRun:
    """The files of the download jobs the runner runs."""

    def __init__(
        self,
        policy: Policy,
        records: Records,
        events: Events,
        scheduler: Scheduler,
        engine: Engine,
    ) -> None:
        self._policy = policy
        self._records = records
        self._events = events
        self._scheduler = scheduler
        self._engine = engine

    async def transfer(self, rec: JobRecord, ctx: FileContext) -> None:
        """Fetch the job's files, starting them in order, ``files_in_flight`` at once or more.

        BITS transfers a job's files one after the other; bitsnb starts them in the same order
        but overlaps a few, because one small file at a time leaves the connection idle while
        each file is fsynced and recorded. A host far away gets more in flight, as its round
        trip says (``_inflight``), within ``max_connections_per_host``; one that refuses the
        extra requests (503, 429) gets fewer again. When a file fails, the files before it still
        finish (as they would have one at a time) and the ones after it stop. Files added while
        the job runs are picked up.
        """
        engine, records = self._engine, self._records
        base = self._policy.files_in_flight
        cursor = 0
        stopping = False  # a failure or a slice end: start no new file
        in_flight: dict[asyncio.Task[None], FileRecord] = {}
        again: list[FileRecord] = []  # refused while widened: fetched again, by fewer workers
        cap: int | None = None  # workers at most, once the host refused a wider run

        def next_file() -> FileRecord | None:
            nonlocal cursor
            if again and not stopping:
                return again.pop(0)
            while not stopping and cursor < len(rec.files):
                f = rec.files[cursor]
                cursor += 1
                if not (f.transferred or f.completed):
                    return f
            return None

        def mark(f: FileRecord) -> None:
            f.transferred = True
            rec.touch()

        async def worker() -> None:
            nonlocal stopping
            me = asyncio.current_task()
            assert me is not None
            while (f := next_file()) is not None:
                in_flight[me] = f
                try:
                    async with ctx.admit():  # a cap may want fewer connections than workers
                        await engine.download(f, ctx)
                except TransferFailure as failure:
                    failure.file = f
                    records.try_save(rec, [f])
                    if narrowed(f, failure):
                        return  # this worker ends; the file goes to one that stays
                    raise
                except BaseException:
                    records.try_save(rec, [f])
                    raise
                finally:
                    in_flight.pop(me, None)
                if await record_done(f):
                    continue  # that write was the job's end
                if not stopping and cursor < len(rec.files):
                    widen(f)
                if cursor < len(rec.files) and self._scheduler.should_yield(rec.id, rec.priority):
                    stopping = True  # let the files in flight finish, then give up the slot
                    raise YieldSlice

        # files durable on disk, not yet recorded: the ones that finished together go in one
        # commit (group commit), written by one task while the workers wait for it
        batch: list[tuple[FileRecord, asyncio.Future[bool]]] = []
        flusher: asyncio.Task[None] | None = None

        async def record_done(f: FileRecord) -> bool:
            """Record *f* transferred, with the files that finished beside it; True when that
            write was the job's end."""
            nonlocal flusher
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieve)
            batch.append((f, fut))
            if flusher is None or flusher.done():
                flusher = asyncio.create_task(flush())
            return await asyncio.shield(fut)  # a cancelled worker's file is still recorded

        async def flush() -> None:
            while batch:
                group = batch[:]
                batch.clear()
                files = [f for f, _ in group]
                try:
                    # the job's end only once every file was handed out and none is in
                    # flight: the O(files) check below it ran on any gap, O(files²) in all
                    last = not in_flight and not again and cursor >= len(rec.files)
                    ended = await self._record(rec, files, mark, last=last)
                except BaseException as exc:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for _, fut in group:
                    if not fut.done():
                        fut.set_result(ended)

        pending_files = sum(1 for f in rec.files if not (f.transferred or f.completed))
        tasks: set[asyncio.Task[None]] = set()
        woken = asyncio.Event()  # a worker ended (or failed): look at them
        first: BaseException | None = None

        def spawn() -> None:
            task = asyncio.create_task(worker())
            task.add_done_callback(lambda _: woken.set())
            tasks.add(task)

        def narrowed(f: FileRecord, failure: TransferFailure) -> bool:
            """A host that refuses (503, 429) a request while the run is wider than
            ``files_in_flight``: one worker fewer from now on (bounded: the width only falls,
            never below ``files_in_flight``) and the file fetched again, not an error."""
            nonlocal cap
            live = sum(1 for t in tasks if not t.done())  # this worker among them
            if failure.code not in _REFUSALS or live <= base or stopping:
                return False
            again.append(f)
            cap = max(base, min(cap if cap is not None else live, live - 1))
            return True

        def widen(f: FileRecord) -> None:
            """More workers while files wait and the host's round trip wants more in flight."""
            p = self._policy
            want = files_in_flight(
                p.files_in_flight, engine.host_rtt(f.remote_name), p.max_connections_per_host
            )
            if cap is not None:
                want = min(want, cap)
            left = len(rec.files) - cursor
            for _ in range(min(want - len(tasks), left)):
                spawn()

        for _ in range(max(1, min(self._policy.files_in_flight, pending_files))):
            spawn()
        try:
            while tasks:
                await woken.wait()
                woken.clear()
                done = {t for t in tasks if t.done()}
                tasks -= done
                if again and not stopping and not tasks:
                    spawn()  # a given-back file whose workers all ended meanwhile
                for task in done:
                    exc = None if task.cancelled() else task.exception()
                    if exc is None or isinstance(exc, asyncio.CancelledError):
                        continue
                    if first is None or (
                        isinstance(first, YieldSlice) and not isinstance(exc, YieldSlice)
                    ):
                        first = exc
                    stopping = True
                if first is not None and not isinstance(first, YieldSlice):
                    failed = first.file if isinstance(first, TransferFailure) else None
                    limit = failed.index if failed is not None else -1
                    for task in tasks:
                        f = in_flight.get(task)
                        if f is None or f.index > limit:
                            task.cancel()  # after the failing file: stop it, keep its data
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if flusher is not None:  # files already on disk are recorded before the job moves on
                await asyncio.gather(flusher, return_exceptions=True)
        if first is not None:
            raise first

    async def _record(
        self,
        rec: JobRecord,
        files: list[FileRecord],
        mark: Callable[[FileRecord], None],
        *,
        last: bool,
    ) -> bool:
        """Record *files* transferred in one write; when they are the job's last (*last*: every
        file handed out and none in flight, checked O(files) only then) the job's end goes in
        the same write. True when it did."""
        mine = {id(f) for f in files}
        if last and all(x.transferred or x.completed for x in rec.files if id(x) not in mine):
            await self._end_transfer_with(rec, files, mark)
            return True

        def record() -> None:
            for f in files:
                mark(f)

        await self._records.change_patiently(rec, record, files)
        for f in files:
            self._events.notify_file(rec, f)
        return False

    async def _end_transfer_with(
        self, rec: JobRecord, files: list[FileRecord], mark: Callable[[FileRecord], None]
    ) -> None:
        """The last files' end and the job's: one write (the files marked in the same change)."""

        def record() -> None:
            for f in files:
                mark(f)
            rec.transfer_completed = time.time()
            rec.first_failure_at = None
            rec.retry_at = None

        await self._records.set_state_patiently(rec, Event.ALL_TRANSFERRED, files, also=record)
        for f in files:
            self._events.notify_file(rec, f)
        self._events.notify_final(rec)


def _retrieve(fut: asyncio.Future[bool]) -> None:
    """Take a recording's outcome even when its worker was cancelled (no asyncio warning)."""
    if not fut.cancelled():
        fut.exception()
