"""The PostgreSQL queue's fast paths: many untouched new files enqueued by a ``COPY`` of the
columns a new file sets (read back as saved), the files' index by local name holding completed
files only (an older store's full index replaced as it opens), and a batch whose lease ran out
taken over by the next claim while the job's cursor is still mid-way (not only past the last
range), its first holder fenced off."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from _support.helpers import wait_until

import bitsnb
from bitsnb._records import FileRecord, JobRecord

psycopg = pytest.importorskip("psycopg")
from bitsnb._store_pg import PgStore  # noqa: E402
from bitsnb._store_pg_copy import COPY_FROM  # noqa: E402


def _job(store: PgStore, state: bitsnb.JobState = bitsnb.JobState.SUSPENDED) -> JobRecord:
    rec = JobRecord(id=uuid.uuid4(), display_name="b", type=bitsnb.JobType.DOWNLOAD, owner="me")
    rec.state = state
    store.insert_job(rec)
    return rec


def _indexes(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename='files'")
        return {str(r[0]) for r in rows}


def _expired(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM bitsnb_batches"
            " WHERE expires < extract(epoch from clock_timestamp())"
        ).fetchone()
    return int(row[0]) if row else 0


def test_untouched_new_files_are_read_back_as_saved(
    url: str, opened: Callable[[str], PgStore]
) -> None:
    s = opened("h:1:a")
    rec = _job(s)
    files = [
        FileRecord(
            i,
            f"http://h/é{i}?a\tb",
            f"/d/f {i}",
            f"/d/.f{i}.tmp",
            known_hash="sha256:" + "cd" * 32 if i % 3 == 0 else None,
        )
        for i in range(2 * COPY_FROM)
    ]
    assert s.save_job(rec, files)
    loaded = s.load_job(rec.id)
    assert loaded is not None and loaded.files == files
    assert all(f.bytes_total is None and f.validation_state for f in loaded.files)


def test_the_index_by_local_name_holds_completed_files_only(
    url: str, opened: Callable[[str], PgStore]
) -> None:
    s = opened("h:1:a")
    assert "files_local_done" in _indexes(url) and "files_local" not in _indexes(url)
    s.close()
    with psycopg.connect(url, autocommit=True) as conn:  # a store as older bitsnb left it
        conn.execute("DROP INDEX files_local_done")
        conn.execute("CREATE INDEX files_local ON files(local_name)")
    again = opened("h:1:b")
    assert "files_local_done" in _indexes(url) and "files_local" not in _indexes(url)
    rec = _job(again)
    done = FileRecord(0, "http://h/0", "/d/0", "/d/.0.tmp", bytes_total=3, bytes_transferred=3)
    done.transferred = done.completed = True
    done.hash, done.placed = "sha256:" + "ab" * 32, (3, 7, 9)
    assert again.save_job(rec, [done])
    assert again.placed_file("/d/0") == ("sha256:" + "ab" * 32, (3, 7, 9))
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            "EXPLAIN SELECT 1 FROM files WHERE local_name='/d/0' AND completed=1"
        ).fetchall()
    assert "files_local_done" in " ".join(str(r[0]) for r in plan)


def test_an_expired_batch_is_taken_over_before_the_last_range(
    url: str,
    opened: Callable[[str], PgStore],
) -> None:
    """A holds the first batch of 100 files past its lease; B's next claim, with most ranges
    still unclaimed, takes A's files first; A's late end writes nothing."""
    a, b = opened("elsewhere:1:a"), opened("elsewhere:2:b")
    rec = _job(a, bitsnb.JobState.QUEUED)
    assert a.save_job(
        rec, [FileRecord(i, f"http://h/{i}", f"/d/{i}", f"/d/.{i}") for i in range(100)]
    )
    token_a, mine = a.claim_files(rec.id, 10, 0.3)
    assert [f.index for f in mine] == list(range(10))
    _, first = b.claim_files(rec.id, 10, 60.0)
    assert [f.index for f in first] == list(range(10, 20))  # A's lease still runs
    wait_until(lambda: _expired(url) == 1, timeout=10, message="A's lease runs out")
    token_t, taken = b.claim_files(rec.id, 10, 60.0)
    assert [f.index for f in taken] == list(range(10))
    for f in mine:
        f.bytes_total = f.bytes_transferred = 1
    assert a.finish_files(rec.id, token_a, mine) == (0, False)
    assert b.finish_files(rec.id, token_t, mine) == (10, False)
