"""Count the comm messages widgets send, without a front end (for tests and the benchmark).

``with counting_comms() as log:`` makes every widget created inside use a ``CountingComm``
that records each message (which comm, what kind, from which thread) instead of sending it,
the way ipywidgets' own tests use a DummyComm.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["CommLog", "CountingComm", "Message", "counting_comms", "model_ids"]


@dataclass(frozen=True)
class Message:
    """One message a widget sent: its comm, method ('update', ...), keys, thread and time."""

    comm_id: str
    method: str
    keys: tuple[str, ...]
    thread: str
    at: float


class CommLog:
    """Thread-safe record of every message and of how many comms were opened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[Message] = []
        self.opened = 0

    def record(self, comm_id: str, data: Any) -> None:
        """Note one message (called from whichever thread sent it)."""
        method = str(data.get("method", "")) if isinstance(data, dict) else ""
        state = data.get("state", {}) if isinstance(data, dict) else {}
        msg = Message(
            comm_id,
            method,
            tuple(sorted(state)) if isinstance(state, dict) else (),
            threading.current_thread().name,
            time.monotonic(),
        )
        with self._lock:
            self.messages.append(msg)

    def count(self, comm_ids: Iterable[str] | None = None, since: float | None = None) -> int:
        """Messages sent (by these comms, after *since*)."""
        return len(self.times(comm_ids, since))

    def times(
        self, comm_ids: Iterable[str] | None = None, since: float | None = None
    ) -> list[float]:
        """When each message was sent (by these comms, after *since*), in the order recorded."""
        ids = None if comm_ids is None else set(comm_ids)
        with self._lock:
            msgs = list(self.messages)
        return [
            m.at
            for m in msgs
            if (ids is None or m.comm_id in ids) and (since is None or m.at >= since)
        ]

    def threads(self) -> set[str]:
        """Names of the threads that sent messages."""
        with self._lock:
            return {m.thread for m in self.messages}


class CountingComm:
    """Stands in for a kernel comm: ``send`` records instead of publishing."""

    kernel = "counting"  # ipywidgets only sends when the comm has a kernel

    def __init__(self, log: CommLog, **kwargs: Any) -> None:
        self.comm_id = str(kwargs.get("comm_id") or uuid.uuid4().hex)
        self._log = log
        log.opened += 1

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to open."""

    def on_msg(self, callback: Any) -> None:
        """Front-end messages never come."""

    def send(self, data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        """Record the message."""
        self._log.record(self.comm_id, data)

    def close(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to close."""


@contextmanager
def counting_comms() -> Iterator[CommLog]:
    """Widgets created inside use ``CountingComm``s that write into the yielded log."""
    import comm

    log = CommLog()
    original = comm.create_comm

    def create(**kwargs: Any) -> CountingComm:
        return CountingComm(log, **kwargs)

    comm.create_comm = create  # type: ignore[assignment]
    try:
        yield log
    finally:
        comm.create_comm = original


def model_ids(root: Any) -> set[str]:
    """The comm ids of *root*, its descendants and their style and layout models."""
    from ._panels import widget_tree

    return {w.model_id for w in widget_tree(root) if getattr(w, "comm", None) is not None}
