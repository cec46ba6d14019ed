"""The hand-over between the manager's loop thread and the widgets.

The loop thread never touches a widget: a panel's listener (an ``Inbox``) only records which
jobs changed, under a lock, and wakes the ``Pump`` when a state changed. The pump is one daemon
thread shared by every panel; it asks each panel when it wants its next tick (every
``INTERVAL`` seconds, or ``MIN_GAP`` after the last one when a state changed) and runs it, so
a panel sends at most about 1 / INTERVAL batches a second, plus prompt ones on state changes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .._protocols import JobEventView

if TYPE_CHECKING:
    from collections.abc import Callable


__all__ = ["INTERVAL", "MIN_GAP", "Changes", "Inbox", "Pump", "PumpClient", "default_pump"]

log = logging.getLogger("bitsnb.notebook")

INTERVAL = 0.25
"""Seconds between a panel's regular refreshes (at most 4 a second)."""

MIN_GAP = 0.1
"""Seconds a state change waits at least after the panel's previous refresh (bursts coalesce)."""

_URGENT_KINDS = frozenset({"state", "created", "removed"})


@dataclass
class Changes:
    """What happened since the pump last looked: job ids changed, created and removed."""

    changed: set[uuid.UUID] = field(default_factory=set)
    created: set[uuid.UUID] = field(default_factory=set)
    removed: set[uuid.UUID] = field(default_factory=set)
    urgent: bool = False

    def __bool__(self) -> bool:
        return bool(self.changed or self.created or self.removed or self.urgent)


class Inbox:
    """A manager listener that only takes notes (thread-safe); the pump reads them.

    ``job_id`` restricts it to one job. It holds no reference to a panel or a widget, so the
    manager's listener list keeps nothing of the UI alive.
    """

    def __init__(self, wake: Callable[[], None], job_id: uuid.UUID | None = None) -> None:
        self._wake = wake
        self._job_id = job_id
        self._lock = threading.Lock()
        self._pending = Changes()
        self.events = 0

    def __call__(self, event: JobEventView) -> None:
        """Called on the manager's loop thread for every job event."""
        if self._job_id is not None and event.job_id != self._job_id:
            return
        urgent = event.kind in _URGENT_KINDS
        with self._lock:
            self.events += 1
            pending = self._pending
            pending.changed.add(event.job_id)
            if event.kind == "created":
                pending.created.add(event.job_id)
                pending.removed.discard(event.job_id)
            elif event.kind == "removed":
                pending.removed.add(event.job_id)
                pending.created.discard(event.job_id)
            wake = urgent and not pending.urgent
            pending.urgent = pending.urgent or urgent
        if wake:
            self._wake()

    def poke(self) -> None:
        """Ask for a prompt refresh (from any thread), e.g. after the filter changed."""
        with self._lock:
            self._pending.urgent = True
        self._wake()

    @property
    def urgent(self) -> bool:
        """True when a state change waits to be shown."""
        return self._pending.urgent

    def take(self) -> Changes:
        """Everything recorded so far; the inbox starts empty again."""
        with self._lock:
            taken, self._pending = self._pending, Changes()
        return taken


class PumpClient(Protocol):
    """A panel as the pump sees it."""

    def pump_due(self, now: float) -> float:
        """The monotonic time at which the panel wants its next tick."""
        ...

    def pump_tick(self, now: float) -> bool:
        """Copy pending changes into the widgets; False when the panel is done for good."""
        ...


class Pump:
    """One daemon thread that ticks every registered panel when it is due.

    The thread starts with the first panel and ends when the last one leaves. A failing tick
    is logged and drops that panel only.
    """

    def __init__(self, name: str = "bitsnb-panels") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._wake_event = threading.Event()
        self._clients: dict[int, PumpClient] = {}
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def add(self, client: PumpClient) -> None:
        """Start ticking *client* (and the thread, if it is not running)."""
        with self._lock:
            self._clients[id(client)] = client
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()
        self._wake_event.set()

    def discard(self, client: PumpClient) -> None:
        """Stop ticking *client*."""
        with self._lock:
            self._clients.pop(id(client), None)
        self._wake_event.set()

    def wake(self) -> None:
        """Re-check due times now (thread-safe, cheap: called from the loop thread)."""
        self._wake_event.set()

    @property
    def thread(self) -> threading.Thread | None:
        """The pump thread while any panel is registered."""
        return self._thread

    def __contains__(self, client: object) -> bool:
        return id(client) in self._clients

    def _main(self) -> None:
        while True:
            self._wake_event.clear()
            with self._lock:
                clients = list(self._clients.values())
                if not clients:
                    self._thread = None
                    return
            now = time.monotonic()
            due: list[tuple[float, PumpClient]] = []
            for client in clients:
                try:
                    due.append((client.pump_due(now), client))
                except Exception:
                    log.exception("bitsnb panel failed; it stops updating")
                    self.discard(client)
            if not due:
                continue
            first = min(d for d, _ in due)
            if first > now:
                self._wake_event.wait(first - now)
                continue
            for when, client in due:
                if when > now:
                    continue
                self.ticks += 1
                try:
                    keep = client.pump_tick(now)
                except Exception:
                    log.exception("bitsnb panel failed; it stops updating")
                    keep = False
                if not keep:
                    self.discard(client)


_default: Pump | None = None
_default_lock = threading.Lock()


def default_pump() -> Pump:
    """The pump shared by every panel of this process."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Pump()
        return _default
