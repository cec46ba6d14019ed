"""Running a download job: its files in flight (started in order, a few at once), each one's
end recorded, and the last one's end and the job's in one write."""

from __future__ import annotations

import asyncio
import functools
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
                # (in_flight first: the scan of every file is O(files), so only when it can end)
                if not in_flight and all(
                    x.transferred or x.completed for x in rec.files if x is not f
                ):
                    # the job's last file: its row and the job's end go in one commit
                    await self._end_transfer_with(rec, f, mark)
                    continue
                await records.change_patiently(rec, functools.partial(mark, f), [f])
                self._events.notify_file(rec, f)
                if not stopping and cursor < len(rec.files):
                    widen(f)
                if cursor < len(rec.files) and self._scheduler.should_yield(rec.id, rec.priority):
                    stopping = True  # let the files in flight finish, then give up the slot
                    raise YieldSlice

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
        if first is not None:
            raise first

    async def _end_transfer_with(
        self, rec: JobRecord, last: FileRecord, mark: Callable[[FileRecord], None]
    ) -> None:
        """The last file's end and the job's: one write (the file marked in the same change)."""

        def record() -> None:
            mark(last)
            rec.transfer_completed = time.time()
            rec.first_failure_at = None
            rec.retry_at = None

        await self._records.set_state_patiently(rec, Event.ALL_TRANSFERRED, [last], also=record)
        self._events.notify_file(rec, last)
        self._events.notify_final(rec)
