"""Many files in one save on PostgreSQL: by ``COPY`` (new rows straight into ``files``, a mix of
new and changed rows through a staging table), every field back as written; job ids compared
byte by byte (a store made with the database's locale is rewritten once, rows kept)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

import bitsnb
from bitsnb._records import FileRecord, JobRecord

psycopg = pytest.importorskip("psycopg")
from bitsnb._store_pg import PgStore  # noqa: E402
from bitsnb._store_pg_copy import COPY_FROM  # noqa: E402


def _file(i: int) -> FileRecord:
    """A file with every kind of field set on some rows and left empty on others."""
    return FileRecord(
        index=i,
        remote_name=f"http://h/é{i}?q=a\tb",
        local_name=f"/d/f {i}",
        temp_name=f"/d/.f{i}.tmp",
        bytes_total=None if i % 3 else i * 10,
        bytes_transferred=i % 7,
        transferred=i % 5 == 0,
        etag=None if i % 2 else f'"e{i}"',
        last_modified="Tue, 01 Dec 2026 10:00:00 GMT" if i % 4 == 0 else None,
        ranges=[(0, 9), (20, None)] if i % 6 == 0 else None,
        known_hash="sha256:" + "ab" * 32 if i % 8 == 0 else None,
        validation_state=i % 9 != 0,
    )


def _job(store: PgStore) -> JobRecord:
    rec = JobRecord(id=uuid.uuid4(), display_name="many", type=bitsnb.JobType.DOWNLOAD, owner="me")
    store.insert_job(rec)
    return rec


def test_many_new_files_then_a_mix_of_changed_and_new(opened: Callable[[str], PgStore]) -> None:
    """A save of many new files, then one of changed old files and more new ones: loaded back
    field by field as written (the second save replaces rows, it does not add copies)."""
    s = opened("h:1:a")
    rec = _job(s)
    first = [_file(i) for i in range(3 * COPY_FROM)]
    assert s.save_job(rec, first)
    loaded = s.load_job(rec.id)
    assert loaded is not None and loaded.files == first
    changed = [
        FileRecord(**{**f.__dict__, "bytes_transferred": 99, "transferred": True, "hash": "md5:x"})
        for f in first[COPY_FROM:]
    ]
    more = [_file(i) for i in range(len(first), len(first) + COPY_FROM)]
    assert s.save_job(rec, changed + more)
    loaded = s.load_job(rec.id)
    assert loaded is not None and loaded.files == first[:COPY_FROM] + changed + more
    assert loaded.version == 3


def test_a_refused_save_writes_none_of_its_files(opened: Callable[[str], PgStore]) -> None:
    """A save of many files on a stale version: False, and no file row was written."""
    s = opened("h:1:a")
    rec = _job(s)
    stale = JobRecord(**{**rec.__dict__, "version": 0})
    assert not s.save_job(stale, [_file(i) for i in range(2 * COPY_FROM)])
    loaded = s.load_job(rec.id)
    assert loaded is not None and loaded.files == [] and loaded.version == 1


def test_ids_of_a_locale_ordered_store_become_byte_ordered(
    url: str, opened: Callable[[str], PgStore]
) -> None:
    """A store whose ids compare by the database's locale (as phase one made them): the next
    open rewrites them to ``COLLATE "C"``; its jobs and files are all still there."""
    s = opened("h:1:a")
    rec = _job(s)
    assert s.save_job(rec, [_file(i) for i in range(5)])
    s.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('ALTER TABLE jobs ALTER COLUMN id TYPE TEXT COLLATE "default"')
        conn.execute('ALTER TABLE files ALTER COLUMN job_id TYPE TEXT COLLATE "default"')
    again = opened("h:1:b")
    loaded = again.load_job(rec.id)
    assert loaded is not None and [f.index for f in loaded.files] == list(range(5))
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT a.attname, c.collname FROM pg_attribute a JOIN pg_collation c"
            " ON c.oid = a.attcollation WHERE (a.attrelid, a.attname) IN"
            " (('jobs'::regclass, 'id'), ('files'::regclass, 'job_id')) ORDER BY 1"
        ).fetchall()
    assert rows == [("id", "C"), ("job_id", "C")]
