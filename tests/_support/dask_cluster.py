"""A real ``distributed.LocalCluster`` of worker processes, for the tests that run ``serve()``
(import it after ``pytest.importorskip("distributed")``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import distributed

__all__ = ["local_client"]


@contextmanager
def local_client(n_workers: int = 2) -> Iterator[distributed.Client]:
    """A client of a LocalCluster of *n_workers* processes (one thread each, no dashboards,
    on 127.0.0.1); cluster and client closed at the end."""
    with (
        distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            worker_dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c
