"""Rules of a segmented download (no IO): the segment table, where to split, when to add.

A file fetched over several connections is a table of segments that tile ``[0, size)``; each
is ``(start, done, end)``: bytes ``[start, done)`` are written, ``[done, end)`` are left. The
engine splits the largest remaining range for a new connection, hands the tail of a straggler
to a connection that is free, and adds a connection only while one more raised the file's
rate by ``GAIN`` over a measuring window (more connections than make it faster cost CPU and
the server's patience, and gain nothing on a fast path).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "GAIN",
    "MIN_TAKEOVER",
    "Table",
    "check_table",
    "contiguous_end",
    "done_bytes",
    "gained",
    "may_add",
    "sender_holds",
    "split_point",
    "takeover_point",
]

Table = list[tuple[int, int, int]]
"""Segments as (start, done, end), sorted, tiling [0, size)."""

GAIN = 1.10
"""One more connection stays only if the file's rate rose by at least this factor."""

MIN_TAKEOVER = 1024 * 1024
"""The smallest tail worth a new request when a free connection takes over from a straggler."""

_WORTH_SECONDS = 0.5  # a busy connection is helped only if it has longer than this to go

IDLE_ROUND_TRIPS = 2.0
"""A body that brought nothing for this many round trips, with nothing unread, is held back
by its sender (slow start and a full window both bring data every round trip; nginx's
``limit_rate 10m`` at 50 ms sent 2.1 MB every 0.21 s, idle up to 0.18 s between)."""

_MIN_IDLE = 0.03  # seconds: a loopback round trip is microseconds; the scheduler's noise is not


def check_table(rows: Iterable[Sequence[int]], size: int) -> Table | None:
    """The table *rows* as tuples if they tile ``[0, size)`` with ``start ≤ done ≤ end``;
    None for anything else (a damaged or foreign row: the file starts again)."""
    table: Table = []
    at = 0
    for row in rows:
        if len(row) != 3:
            return None
        start, done, end = (int(x) for x in row)
        if start != at or not start <= done <= end or start == end:
            return None
        table.append((start, done, end))
        at = end
    return table if at == size and table else None


def done_bytes(table: Iterable[tuple[int, int, int]]) -> int:
    """Bytes written, over every segment."""
    return sum(done - start for start, done, _ in table)


def contiguous_end(table: Iterable[tuple[int, int, int]]) -> int:
    """Where the written prefix of the file ends (every byte before it is on disk)."""
    at = 0
    for start, done, end in table:
        if start != at:
            break
        at = done
        if done < end:
            break
    return at


def split_point(done: int, end: int, min_segment: int) -> int | None:
    """Where to split a segment's remaining ``[done, end)`` in two for another connection
    (halves, on a 64 KiB boundary); None when fewer than two minimum segments are left."""
    left = end - done
    if left < 2 * min_segment:
        return None
    cut = done + left // 2
    cut -= cut % 65536
    return cut if done < cut < end else None


def takeover_point(
    done: int, end: int, slow_rate: float, fast_rate: float, min_tail: int = MIN_TAKEOVER
) -> int | None:
    """Where a free connection at *fast_rate* takes over the tail of a busy one's ``[done,
    end)`` (at *slow_rate*) so that both end together: most of it from a straggler, half from
    an equal; None when the owner ends soon anyway or the tail is not worth a request."""
    left = end - done
    if slow_rate > 0 and left / slow_rate < _WORTH_SECONDS:
        return None
    if fast_rate <= 0:
        fast_rate = max(slow_rate, 1.0)  # no rate of its own yet: count it an equal
    tail = int(left * fast_rate / (fast_rate + max(0.0, slow_rate)))
    if tail < min_tail:
        return None
    return end - tail


def may_add(left: int, min_segment: int, active: int, cap: int) -> bool:
    """Whether one more connection may be tried: under the cap, and enough of the file left."""
    return active < cap and left >= 2 * min_segment


def gained(
    before: float, after: float, had: int | None = None, added: int = 1, own: float | None = None
) -> bool:
    """Whether the rate with *added* more connections (*after*) beat *before* by ``GAIN``;
    with *had* (the connections before them), whether it did so clearly enough to say so
    from a short window: by half a connection's share of *before* for each one added (as
    where each connection is capped). With *own* (the added ones' own rate), the rise must
    be theirs: a lull in the window before, not a trial at 100 KB/s beside 3 MB/s, once kept
    a crawling trial whose tail then took four more requests (one CI run)."""
    need = GAIN if had is None else max(GAIN, 1.0 + 0.5 * max(1, added) / max(1, had))
    return after >= need * before and (own is None or own >= (need - 1.0) * before)


def sender_holds(idle: float, rtt: float | None, unread: int) -> bool:
    """Whether a connection is held back by its sender, not by the path or by us: nothing
    came for *idle* seconds (``IDLE_ROUND_TRIPS`` round trips of *rtt*, the path's lowest: the
    receiver's own estimate counts those gaps in and grew from 0.05 to 0.15 s) while
    nothing of it waits *unread* (a reader that stopped would show a full queue). A server
    that caps each connection sends its allowance and waits (``IDLE_ROUND_TRIPS``), so one
    more connection gets more of the path."""
    if unread > 0 or rtt is None or rtt <= 0:
        return False
    return idle >= max(_MIN_IDLE, IDLE_ROUND_TRIPS * rtt)
