"""The soak's PostgreSQL soundness check finds what it looks for: a sound store is ``ok``; a file
row without a job and a lease left on a final job are both named."""

from __future__ import annotations

from pathlib import Path

import bitsnb
from bitsnb import JobState

from ._store_check import store_soundness, store_states


def test_the_postgresql_check_names_orphans_and_left_leases(url: str, tmp_path: Path) -> None:
    """Write a sound store through bitsnb, then break it by hand, one way at a time."""
    import psycopg

    policy = bitsnb.Policy(max_active_jobs=0)
    with bitsnb.Manager(store=url, policy=policy) as mgr:
        job = mgr.create_job("checked")
        job.add_file("http://127.0.0.1:9/a.bin", str(tmp_path / "a.bin"))
        job.cancel()
    assert store_states(url) == {job.id: JobState.CANCELLED}
    assert store_soundness(url) == "ok"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO files (job_id, idx, remote_name, local_name, temp_name)"
            " SELECT 'no-such-job', idx, remote_name, local_name, temp_name FROM files"
        )
        conn.execute(
            "UPDATE jobs SET lease_owner='gone', lease_expires=0, lease_token=1 WHERE id=%s",
            (str(job.id),),
        )
    found = store_soundness(url)
    assert "file rows without a job: 1" in found, found
    assert "jobs still leased after every manager closed: 1" in found, found
