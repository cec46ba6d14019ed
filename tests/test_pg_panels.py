"""The notebook's views of a shared PostgreSQL queue from a client's kernel: the queue panel's
worker column and the cluster panel, fed by real managers holding leases (a manager running a
throttled transfer, a claimer holding a batch of a shared job's files)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from _support.helpers import wait_until

import bitsnb
from bitsnb import BitsError
from bitsnb._cluster import ActivityRates
from bitsnb._codes import E_INVALIDARG
from bitsnb._store_api import StoreURL
from bitsnb.notebook import cluster_panel, queue_panel
from bitsnb.notebook._pump import default_pump
from bitsnb.testing import Fault, FileServer

psycopg = pytest.importorskip("psycopg")
from bitsnb._store_pg import PgStore  # noqa: E402

TIMEOUT = 30.0
CLAIMER = "claimer-host:7:cccc"  # another machine's manager: only expiry frees its batch
MIB = 1 << 20


def test_rates_from_readings() -> None:
    """Rates from the bytes moved between two readings; a drop is 0; errors make a row."""
    now = [0.0]
    rates = ActivityRates(clock=lambda: now[0])
    first = rates.update({"h:1:a": (1, 4, 1000)}, {"h:2:b": 2})
    assert [(r.worker, r.jobs, r.files, r.bytes_per_second, r.errors) for r in first] == [
        ("h:1:a", 1, 4, 0.0, 0),
        ("h:2:b", 0, 0, 0.0, 2),
    ]
    now[0] = 2.0
    second = rates.update({"h:1:a": (1, 3, 5000)}, {})
    assert second[0].bytes_per_second == 2000.0 and second[0].host == "h"
    now[0] = 3.0
    assert rates.update({"h:1:a": (0, 0, 0)}, {})[0].bytes_per_second == 0.0


def test_cluster_panel_and_worker_column(
    url: str, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """A manager runs a throttled job, a claimer holds a batch of a shared job: the client's
    queue panel names each job's holder, the cluster panel shows both workers (jobs, files,
    the runner's rate), and a worker that closes leaves both views."""
    server.add_random_file("slow.bin", 4 * MIB, seed=5)
    server.inject("slow.bin", Fault.throttle(400_000))
    quiet = bitsnb.Policy(max_active_jobs=0)
    claimer = PgStore(StoreURL(url), CLAIMER, 5.0)
    with bitsnb.Manager(store=url, policy=quiet) as client:
        shared = client.create_job("shared")
        shared.add_file_set([(server.url(f"s{i}.bin"), dest / f"s{i}.bin") for i in range(5)])
        shared.resume()
        token, batch = claimer.claim_files(shared.id, 3, 60.0)
        assert [f.index for f in batch] == [0, 1, 2]
        slow = client.create_job("slow")
        slow.add_file(server.url("slow.bin"), dest / "slow.bin")

        runner = bitsnb.Manager(store=url, policy=policy)
        try:
            runner.get_job(slow.id).resume()
            wait_until(lambda: str(slow.id) in client.job_workers(), TIMEOUT)
            holder = client.job_workers()[str(slow.id)]
            assert holder.startswith(f"{socket.gethostname()}:{os.getpid()}:")
            assert client.job_workers()[str(shared.id)] == CLAIMER

            queue = queue_panel(client)
            try:
                wait_until(lambda: queue.workers.get(str(slow.id)) == holder, TIMEOUT)
                assert f'<td title="{holder}">{holder}</td>' in queue.table.value
                assert f">{CLAIMER}</td>" in queue.table.value
            finally:
                queue.close()

            panel = cluster_panel(client, interval=0.2)
            try:
                by = {r.worker: r for r in panel.rows}
                assert (by[CLAIMER].jobs, by[CLAIMER].files) == (1, 3)
                assert (by[holder].jobs, by[holder].files) == (1, 1)
                assert panel in default_pump()  # read again every interval
                # the runner saves its progress every checkpoint: a rate shows between reads
                wait_until(
                    lambda: any(r.worker == holder and r.bytes_per_second > 0 for r in panel.rows),
                    TIMEOUT,
                )
                assert "2 workers holding work" in panel.text()
                assert CLAIMER in panel.html() and holder in panel.table.value
            finally:
                runner.close()  # its lease given back: it leaves the cluster
            wait_until(lambda: holder not in {r.worker for r in panel.rows}, TIMEOUT)
            assert "1 worker holding work" in panel.text()
            assert str(slow.id) not in client.job_workers()
            panel.close()
            assert panel.closed and panel not in default_pump()
        finally:
            if not runner.closed:
                runner.close()
        claimer.give_back_files(shared.id, token)
        assert client.job_workers() == {}
    claimer.close()


def test_cluster_panel_refuses_sqlite(tmp_path: Path) -> None:
    """A SQLite file has no cluster: E_INVALIDARG, nothing opened."""
    with pytest.raises(BitsError) as err:
        cluster_panel(str(tmp_path / "jobs.db"))
    assert err.value.code == E_INVALIDARG and "PostgreSQL" in str(err.value)
    assert not (tmp_path / "jobs.db").exists()


def test_cluster_panel_of_an_idle_queue(url: str) -> None:
    """Nobody holds anything: no rows, a readable line; the URL works as well as a manager."""
    panel = cluster_panel(url, interval=0.2)
    try:
        assert panel.rows == [] and "0 workers holding work" in panel.text()
        assert "no worker holds anything" in panel.table.value
    finally:
        panel.close()
