"""A job made final on PostgreSQL keeps no lease: when another manager completes or cancels a
job a (killed) manager still holds, the holder's lease goes with the save (the soak on
PostgreSQL found such leases left on ACKNOWLEDGED/CANCELLED jobs, naming dead managers)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

import bitsnb
from bitsnb import JobState
from bitsnb._records import JobRecord

psycopg = pytest.importorskip("psycopg")
from bitsnb._store_pg import PgStore  # noqa: E402


def _lease(url: str, job_id: uuid.UUID) -> tuple[object, object]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT lease_owner, lease_expires FROM jobs WHERE id=%s", (str(job_id),)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize("final", [JobState.CANCELLED, JobState.ACKNOWLEDGED])
def test_a_final_save_takes_the_holders_lease_with_it(
    url: str, opened: Callable[[str], PgStore], final: JobState
) -> None:
    """A holds the job's lease; B's non-final save leaves it to A, B's final save clears it."""
    a = opened("elsewhere:1:a")
    b = opened("elsewhere:2:b")
    rec = JobRecord(id=uuid.uuid4(), display_name="j", type=bitsnb.JobType.DOWNLOAD, owner="me")
    rec.state = JobState.QUEUED
    a.insert_job(rec)
    assert a.claim(rec.id, 30.0) == 1
    rec.display_name = "renamed by B"
    assert b.save_job(rec)
    assert _lease(url, rec.id)[0] == a.writer  # a non-final save is no reason to drop it
    rec.state = final
    assert b.save_job(rec)
    assert _lease(url, rec.id) == (None, None)
