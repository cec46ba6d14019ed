"""A segmented download: one file over one or more connections, each writing its segment at its
offsets of the one temporary file, its table kept in the store so that a crash resumes every
segment (the rules of where to split are in ``_segments``, of when to add in ``_segment_ramp``)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import IO

import httpx

from . import _codes
from ._enums import ErrorContext
from ._failures import TransferFailure, local_failure, network_failure
from ._fetchctx import (
    FileContext,
    Restart,
    YieldSlice,
    invalid_response,
    response_retry_after,
    worth_yielding,
)
from ._filecheck import Check, feeder
from ._files import open_private
from ._fsyncs import run_through
from ._http_rules import BadLength, is_transient_status, parse_content_length, parse_content_range
from ._integrity import digest_fields
from ._records import FileRecord
from ._segment_hash import PrefixHash
from ._segment_parts import Conn, NoRanges, Seg, SegmentHost, connection_ended
from ._segment_ramp import Ramp
from ._segments import (
    contiguous_end,
    done_bytes,
    may_add,
    sender_holds,
    split_point,
    takeover_point,
)
from ._slots import HostSlots
from ._tcpinfo import response_socket, tcp_info
from ._tempfile import create_temp, preallocate, pwrite_all
from ._transport import body_views, keep_view
from ._validate import redact_url
from ._validators import if_range_value
from ._wireahead import held_ahead

__all__ = ["Split"]


_MAX_REQUESTS = 1024  # requests one connection of a segmented download makes, at most
_MAX_RESTARTS = 8  # times a segmented download starts a connection anew when none is left


class Split:
    """One file fetched over one or more connections, each writing its segment at its offset
    in one temporary file (``os.pwrite``: no part files, nothing copied after).

    It starts on one connection; it measures the file's rate and, while the connections tried
    last paid (``_segment_ramp``) and two minimum segments are left, splits the largest
    remaining range for more (within the per-file and per-host limits, never
    waiting for a host slot). A connection that ends its segment takes a segment nobody has,
    else half of the largest range left, else the tail of a straggler. The first split is saved
    in the store (``save_segments``) before the file is preallocated, so that a crash resumes
    every segment from the table and never takes the file's size for its progress; checkpoints
    save the table as far as an fdatasync covered it. The whole file's hash is fed in order:
    the connection writing at the hashed prefix's end hashes as it writes, and whatever other
    connections wrote is read back once the prefix reaches it.
    """

    def __init__(
        self,
        engine: SegmentHost,
        f: FileRecord,
        ctx: FileContext,
        check: Check,
        table: list[tuple[int, int, int]],
        *,
        split: bool,
    ) -> None:
        assert f.bytes_total is not None
        self.engine, self.f, self.ctx, self.check = engine, f, ctx, check
        self.policy = engine.policy
        self.total = f.bytes_total
        self.segs = [Seg(a, b, c) for a, b, c in table]
        self.split = split  # the store holds a table: the file is (to be) preallocated
        self.fd = -1
        self.conns: dict[asyncio.Task[None], Conn] = {}
        self.cap = max(1, self.policy.max_connections_per_file)
        self.ranges_ok = True  # False once a Range was answered with the whole file
        self.primary_free = True
        self.failure: BaseException | None = None
        self.restarts = 0
        self.hash = PrefixHash(engine, check)
        self.syncing: asyncio.Task[None] | None = None
        self.cp_at = time.monotonic()
        self.cp_bytes = f.bytes_transferred
        self.ramp: Ramp[Conn] = Ramp(self.policy.segment_window)

    # -- the run ------------------------------------------------------------------------------
    async def run(self, first: httpx.Response | None) -> None:
        """Fetch every segment (from *first*, the response already open, if given)."""
        fh = await self._open(first)
        try:
            self.fd = fh.fileno()
            if first is not None:
                await self.engine.begin_hashes(
                    fh, self.check, digest_fields(first.headers.raw), self.segs[0].done
                )
                self._start(self.segs[0], None, first)
            else:
                self.hash.ready(contiguous_end(self._table()))
                await self._start_pending()
            try:
                await self._loop()
                await self._finish()
            except BaseException:
                await self._stop()
                raise
        finally:
            self.f.connections = 0
            fh.close()

    async def _open(self, first: httpx.Response | None) -> IO[bytes]:
        f = self.f
        try:
            if first is None:
                try:
                    fh = open_private(f.temp_name)
                except FileNotFoundError:
                    raise Restart from None
                size = os.fstat(fh.fileno()).st_size
                if any(d > size for s, d, _ in ((s.start, s.done, s.end) for s in self.segs)):
                    fh.close()
                    raise Restart  # the table claims bytes the file does not hold
                try:
                    if size > self.total:  # nothing past the end may stay in the file
                        os.ftruncate(fh.fileno(), self.total)
                    await asyncio.to_thread(preallocate, fh.fileno(), self.total)
                except BaseException:
                    fh.close()
                    raise
                return fh
            offset = self.segs[0].done
            if offset == 0:
                (await create_temp(f.temp_name)).close()
            fh = open_private(f.temp_name)  # read and write: hashes read segments back
            fh.truncate(offset)
            f.bytes_transferred = offset
            return fh
        except OSError as exc:
            raise local_failure(exc, f.temp_name) from exc

    async def _loop(self) -> None:
        tick = max(0.02, min(0.1, self.policy.segment_window / 5))
        while True:  # bounded: ends when every segment is written, or raises
            self._reap()
            if all(s.done >= s.end for s in self.segs):
                return
            if not self.conns:
                self.restarts += 1
                if self.failure is not None or self.restarts > _MAX_RESTARTS:
                    raise self.failure or connection_ended()
                await self._start_pending()
            self._checkpoint_due()
            self.hash.more(self.fd, contiguous_end(self._table()))
            await self._maybe_add()
            if self.conns:
                await asyncio.wait(list(self.conns), timeout=tick)

    def _reap(self) -> None:
        for task in [t for t in self.conns if t.done()]:
            conn = self.conns.pop(task)
            self.f.connections = len(self.conns)
            self.ramp.ended(conn, conn.written)
            exc = None if task.cancelled() else task.exception()
            if exc is None:
                continue
            if isinstance(exc, NoRanges):
                self.ranges_ok, self.ramp.adding, self.cap = False, False, 1
                continue
            transient = isinstance(exc, httpx.HTTPError) or (
                isinstance(exc, TransferFailure) and exc.transient
            )
            if transient and self.conns:
                # an extra connection the host refused or dropped: its segment goes back to
                # the others, and this file tries no more connections than it has
                self.ramp.adding = False
                self.cap = max(1, len(self.conns))
                continue
            if isinstance(exc, httpx.HTTPError):
                exc = network_failure(exc)
            raise exc

    def _start(self, seg: Seg, slot: HostSlots | None, resp: httpx.Response | None) -> Conn:
        conn = Conn(slot, seg)
        seg.owner = conn
        if slot is None:
            self.primary_free = False
        task = asyncio.create_task(self._work(conn, resp))
        self.conns[task] = conn
        self.f.connections = len(self.conns)
        return conn

    async def _start_pending(self) -> None:
        """A connection for each segment nobody fills (the download's own slot first, then free
        host slots, within the per-file cap)."""
        for seg in self.segs:
            if seg.owner is not None or seg.done >= seg.end or len(self.conns) >= self.cap:
                continue
            if self.primary_free:
                self._start(seg, None, None)
                continue
            slot = await self._free_slot() if self.ranges_ok else None
            if slot is None:
                return
            self._start(seg, slot, None)

    async def _free_slot(self) -> HostSlots | None:
        """A host slot taken at once, or None when the host has none free (or files wait)."""
        sem = self.engine.slot(self.f.remote_name)
        if sem.locked():
            return None
        await sem.acquire()  # free: it does not wait
        return sem

    def _table(self) -> list[tuple[int, int, int]]:
        return [(s.start, s.done, s.end) for s in self.segs]

    # -- one connection -------------------------------------------------------------------------
    async def _work(self, conn: Conn, resp: httpx.Response | None) -> None:
        try:
            for _ in range(_MAX_REQUESTS):
                seg = conn.seg
                if seg is None or conn.retire:
                    return
                if seg.done >= seg.end:
                    seg.owner = None
                    conn.seg = self._next_for(conn)
                    continue
                if resp is not None:
                    first, resp = resp, None
                    conn.reach = self.total  # the file's first response: the rest of it
                    try:
                        await self._stream(conn, first)
                    finally:
                        await first.aclose()
                else:
                    await self._request(conn, seg)
            raise connection_ended()
        finally:
            if conn.seg is not None:
                self._give_back(conn.seg)
                conn.seg = None
            if conn.slot is None:
                self.primary_free = True
            else:
                conn.slot.release()

    def _give_back(self, seg: Seg) -> None:
        """*seg* has no connection now: an untouched one joins the segment before it."""
        seg.owner = None
        i = self.segs.index(seg)
        if i > 0 and seg.done == seg.start:
            self.segs[i - 1].end = seg.end
            del self.segs[i]

    def _next_for(self, conn: Conn) -> Seg | None:
        """A free connection's next segment: one nobody fills, else half of the largest range
        left, else the tail of a straggler (None: nothing worth a request)."""
        for seg in self.segs:
            if seg.owner is None and seg.done < seg.end:
                seg.owner = conn
                return seg
        if not self.ranges_ok or conn.retire:
            return None
        now = time.monotonic()
        # a connection whose response has not begun has no rate yet, not a rate of 0: taken
        # for a straggler, its whole range went to a second request while the server sent it
        # to the first as well (a resume fetched a 4.6 MB segment twice, 2 runs in 60)
        rates = {
            id(s): s.owner.now_rate(now)
            for s in self.segs
            if s.owner is not None and s.owner.began is not None
        }
        busy = [s for s in self.segs if id(s) in rates and s.done < s.end]
        if not busy:
            return None
        # the range that would end last: halved while large, else its tail taken so both end
        # together (most of a straggler's)
        last = max(busy, key=lambda s: (s.end - s.done) / max(1.0, rates[id(s)]))
        cut = split_point(last.done, last.end, self.policy.min_segment_bytes)
        if cut is None:
            cut = takeover_point(last.done, last.end, rates[id(last)], conn.rate)
        return self._cut(last, cut, conn) if cut is not None else None

    def _cut(self, seg: Seg, cut: int, owner: Conn | None) -> Seg:
        new = Seg(cut, cut, seg.end, owner)
        seg.end = cut
        self.segs.insert(self.segs.index(seg) + 1, new)
        return new

    def _extend(self, conn: Conn, seg: Seg) -> bool:
        """Whether *conn*, at its segment's end, goes on into the next range: one nobody fills
        that its response carries on into (the first response is the rest of the file).
        What another connection wrote there is read past (``conn.skip``), at most a second of
        this connection's rate: a retired trial's rest otherwise took a new connection once
        the first reached the cut, whose slow start cost 1.5 s at 150 ms."""
        i = self.segs.index(seg)
        if conn.retire or i + 1 >= len(self.segs):
            return False
        nxt = self.segs[i + 1]
        if nxt.owner is not None or nxt.start != seg.end or conn.reach < nxt.end:
            return False
        skip = nxt.done - nxt.start
        if skip > max(2 * self.policy.min_segment_bytes, conn.now_rate(time.monotonic())):
            return False
        conn.skip += skip
        seg.done, seg.end = nxt.done, nxt.end
        del self.segs[i + 1]
        return True

    async def _request(self, conn: Conn, seg: Seg) -> None:
        f, ctx = self.f, self.ctx
        client = self.engine.client(ctx.proxy, ctx.trust_env)
        headers = self.engine.digest_headers(f, ctx)
        headers["Range"] = f"bytes={seg.done}-{seg.end - 1}"
        headers["If-Range"] = if_range_value(f.etag, f.last_modified) or ""
        conn.reach = seg.end
        async with client.stream("GET", f.remote_name, headers=headers, auth=ctx.auth) as resp:
            if self._accept(resp, seg):
                ctx.on_connected()
                await self._stream(conn, resp)
                return
            # the whole file for a Range: fine for the one connection left, not for more
            if len(self.conns) > 1:
                raise NoRanges
            self.ranges_ok, self.ramp.adding, self.cap = False, False, 1
            whole = Seg(0, 0, self.total, conn)
            self.segs = [whole]
            conn.seg, conn.reach = whole, self.total
            f.bytes_transferred = 0
            ctx.on_connected()
            await self._stream(conn, resp)

    def _accept(self, resp: httpx.Response, seg: Seg) -> bool:
        """True for a 206 of *seg*'s range, False for the same file whole; else raises."""
        status, etag = resp.status_code, resp.headers.get("etag")
        modified = resp.headers.get("last-modified")
        # without an ETag, the Last-Modified is the validator
        by_date = not self.f.etag and modified != self.f.last_modified
        if status == 206:
            content_range = resp.headers.get("content-range")
            span = parse_content_range(content_range)
            if span is None or span.first != seg.done or span.last is None:
                raise invalid_response(f"bad Content-Range {content_range!r}", transient=True)
            if (
                (span.total is not None and span.total != self.total)
                or (etag and etag != self.f.etag)
                or (modified and by_date)
            ):
                raise Restart
            return True
        if status == 200:
            try:
                size = parse_content_length(resp.headers.get("content-length"))
            except BadLength as exc:
                raise invalid_response(f"bad Content-Length: {exc}", transient=True) from None
            if etag != self.f.etag or by_date or size != self.total:
                raise Restart  # If-Range failed: the file changed
            return False
        if status == 416:
            raise Restart
        raise TransferFailure(
            _codes.http_error(status),
            ErrorContext.REMOTE_FILE,
            transient=is_transient_status(status),
            message=f"HTTP {status} for {redact_url(str(resp.url))}",
            retry_after=response_retry_after(resp),
        )

    async def _stream(self, conn: Conn, resp: httpx.Response) -> None:
        """Write *resp*'s body at its segment's offsets until the segment (which may shrink
        or grow meanwhile) is full or the body ends."""
        seg = conn.seg
        assert seg is not None
        f, ctx, fd = self.f, self.ctx, self.fd
        whole = self.check.whole
        throttle = ctx.throttle
        conn.began, conn.bytes, conn.skip, conn.resp = None, 0, 0, resp
        lean = body_views(resp)
        chunks = lean or resp.aiter_raw()
        # the whole file's hasher on its own thread is lent the views themselves (no copy)
        keep = None if lean is None else (lambda: keep_view(resp))
        feed = feeder([whole.hasher] if whole is not None else [], keep)
        # every segment's connection is paced like a single one: without it a segmented
        # background file neither yielded (4.2 of 12.5 MB/s beside a curl in the WAN
        # testbed) nor held a cap on the wire
        unwatch = ctx.watch(resp)
        try:
            async for chunk in chunks:
                if conn.began is None:
                    conn.began = time.monotonic()
                data = memoryview(chunk)
                got = len(data)
                for _ in range(3):  # bounded: a skip, a write, and one more after an extension
                    if conn.skip and data:
                        k = min(conn.skip, len(data))
                        conn.skip -= k
                        data = data[k:]
                    if not data:
                        break
                    pos = seg.done
                    n = min(len(data), seg.end - pos)
                    if n > 0:
                        view = data[:n]
                        pwrite_all(fd, view, pos)
                        if whole is not None and self.hash.inline_at(pos):
                            feed(view)
                            whole.hashed += n
                        seg.done = pos + n
                        conn.bytes += n
                        conn.written += n
                        f.bytes_transferred += n
                        data = data[n:]
                    if seg.done < seg.end or not self._extend(conn, seg):
                        break
                if throttle is not None and throttle.limited:
                    await throttle.take(got - len(data))
                ctx.on_progress(f)
                if ctx.should_yield() and worth_yielding(f):
                    raise YieldSlice
                if seg.done >= seg.end or conn.retire:
                    break
        except OSError as exc:
            raise local_failure(exc, f.temp_name) from exc
        finally:
            unwatch()
            conn.resp = None
        conn.rate = conn.now_rate(time.monotonic())

    # -- more connections -----------------------------------------------------------------------
    async def _maybe_add(self) -> None:
        """Measure the file's rate and act on what the ramp says (``_segment_ramp``): retire
        connections on trial that did not pay, or try more."""
        flowing = all(c.began is not None for c in self.conns.values())
        ramp = self.ramp
        # a hold is looked for (two system calls a connection) only while a trial may start
        may_grow = flowing and ramp.adding and not ramp.to_add and len(self.conns) < self.cap
        step = ramp.step(
            time.monotonic(),
            self.f.bytes_transferred,
            time.thread_time(),
            flowing=flowing,
            conns=len(self.conns),
            held=may_grow and self._held(),
            trial_got=sum(c.written for c in ramp.trials),
        )
        for conn in step.retire:
            conn.retire = True
        if step.cap is not None:
            self.cap = step.cap
        if step.add:
            await self._add(step.add)

    def _held(self) -> bool:
        """Whether a connection is held back by its sender now (``sender_holds``)."""
        for resp in [c.resp for c in self.conns.values() if c.resp is not None]:
            sock = response_socket(resp)
            info = None if sock is None else tcp_info(sock)
            if sock is not None and info is not None:
                rtt = info.min_rtt or info.rtt or None
                if sender_holds(info.last_data_recv, rtt, held_ahead(sock, resp)):
                    return True
        return False

    async def _add(self, count: int) -> None:
        """One more connection on trial, on half the largest range left, while the yield
        controller, the per-file cap and the host's free slots allow; of *count* - 1 more, one
        follows it alone once it flows and the rest together once that one flows too (the host
        took two more, so one that allows one or two more refuses one; one by one, the doubling
        to eight of a capped file took 0.75 s a step at 50 ms)."""
        together = count > 1 and len(self.ramp.trials) >= 2  # two of this step's flow
        conn = await self._add_one()
        if conn is None:
            self.ramp.to_add = 0
            return
        self.ramp.started(conn, count)
        for _ in range(count - 1 if together else 0):
            conn = await self._add_one()
            if conn is None:
                break
            self.ramp.started(conn, self.ramp.to_add)

    async def _add_one(self) -> Conn | None:
        if not self.ctx.may_add_connection():  # the yield controller wants no more now
            return None
        left = [s for s in self.segs if s.done < s.end]
        if not left or not self.ranges_ok:
            return None
        biggest = max(left, key=lambda s: s.end - s.done)
        min_seg = self.policy.min_segment_bytes
        if not may_add(biggest.end - biggest.done, min_seg, len(self.conns), self.cap):
            return None
        if self.engine.slot(self.f.remote_name).locked():
            return None  # the host's slots are taken: measure again, try later
        if not self.split:
            new = await self._first_split()
        else:
            cut = split_point(biggest.done, biggest.end, min_seg)
            new = self._cut(biggest, cut, None) if cut is not None else None
        if new is None or new.owner is not None or new.done >= new.end:
            return None
        slot = await self._free_slot()
        if slot is None:
            return None
        if new.owner is not None:  # taken while the slot was had
            slot.release()
            return None
        return self._start(new, slot, None)

    async def _first_split(self) -> Seg | None:
        """Split the one segment in two: the table goes to the store (as far as an fdatasync
        covered the first), then the file is preallocated; None if the store did not take it."""
        if self.syncing is not None:
            await asyncio.wait([self.syncing])
        durable = self.segs[0].done
        try:
            await asyncio.to_thread(os.fdatasync, self.fd)
        except OSError as exc:
            raise local_failure(exc, self.f.temp_name) from exc
        seg = self.segs[0]
        cut = split_point(seg.done, seg.end, self.policy.min_segment_bytes)
        if cut is None or len(self.segs) != 1:
            return None
        table = [(0, durable, cut), (cut, cut, self.total)]
        self.f.segments = table
        if not self.ctx.save_segments(dataclasses.replace(self.f, bytes_transferred=durable)):
            self.f.segments = None
            self.ramp.adding = False
            return None
        self.split = True
        new = self._cut(seg, cut, None)
        try:
            await asyncio.to_thread(preallocate, self.fd, self.total)
        except OSError as exc:
            raise local_failure(exc, self.f.temp_name) from exc
        return new

    # -- checkpoints, hashes, the end -----------------------------------------------------------
    def _checkpoint_due(self) -> None:
        if self.syncing is not None:
            if not self.syncing.done():
                return
            syncing, self.syncing = self.syncing, None
            syncing.result()  # a failed sync (disk full) surfaces here
        now, got = time.monotonic(), self.f.bytes_transferred
        p = self.policy
        if got - self.cp_bytes < p.checkpoint_bytes and now - self.cp_at < p.checkpoint_interval:
            return
        self.cp_at, self.cp_bytes = now, got
        self.syncing = asyncio.create_task(self._checkpoint(self._table()))

    async def _checkpoint(self, table: list[tuple[int, int, int]]) -> None:
        try:
            await asyncio.to_thread(os.fdatasync, self.fd)
        except OSError as exc:
            raise local_failure(exc, self.f.temp_name) from exc
        if self.split:
            self.f.segments = table
            self.ctx.on_checkpoint(dataclasses.replace(self.f, segments=table), done_bytes(table))
        else:
            self.ctx.on_checkpoint(self.f, table[0][1])

    async def _finish(self) -> None:
        """Every byte is written: hash the rest, sync, and the file needs no table."""
        try:
            await self.hash.finish(self.fd, self.total)
            if self.syncing is not None:
                await self.syncing
                self.syncing = None
            await asyncio.to_thread(os.fsync, self.fd)
        except OSError as exc:
            raise local_failure(exc, self.f.temp_name) from exc
        self.f.bytes_transferred = self.total
        self.f.segments = None

    async def _stop(self) -> None:
        """Stopped (a failure, a slice end, cancel): the connections end, and the table kept is
        what the disk holds. A second cancel meanwhile waits for that: ``run`` closes the
        descriptor after it, which the hash read-back and the syncs use on their threads."""
        await run_through(self._stop_now())

    async def _stop_now(self) -> None:
        for task in self.conns:
            task.cancel()
        if self.conns:
            await asyncio.gather(*self.conns, return_exceptions=True)
        self.conns.clear()
        waits = self.hash.pending() + ([self.syncing] if self.syncing else [])
        if waits:
            await asyncio.wait(waits)  # the descriptor stays open while a thread uses it
        if self.syncing is not None and not self.syncing.cancelled():
            self.syncing.exception()  # retrieved, so asyncio does not warn about it
        if not self.split:
            self.f.bytes_transferred = self.segs[0].done
            return
        table = self._table()
        try:
            await asyncio.to_thread(os.fdatasync, self.fd)
        except OSError:
            table = self.f.segments or table  # the last table a sync covered
        self.f.segments = table
        self.f.bytes_transferred = done_bytes(table)
