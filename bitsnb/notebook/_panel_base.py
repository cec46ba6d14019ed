"""What both panels share: the ``Panel`` base (inbox, pump side, lock, close, text fallback,
display id), the buttons, the after-cell hook and ``show``.

Threads: widgets are built on the caller's thread (the kernel's main thread). The manager's
loop thread only writes notes into an ``Inbox``; the shared ``Pump`` thread copies job state
into widget traits, batched per widget with ``hold_sync()``, at most every ``INTERVAL`` seconds
and promptly (after ``MIN_GAP``) on state changes. Button clicks and the filter run on the
main thread. A per-panel lock keeps the two writers apart. The manager stays the source of
truth: a panel only shows what it reads from jobs, so a new panel shows the live queue.

Saved notebooks: a panel shown with ``show()`` is displayed with a display id, and its
``text/plain`` and ``text/html`` are re-published at the end, after every cell (an IPython
``post_run_cell`` hook) and, for a job panel, when it reaches a settled state (SUSPENDED,
ERROR, TRANSFERRED, ACKNOWLEDGED, CANCELLED), so a notebook saved or
executed without a live widget front end (nbclient, nbviewer, GitHub) shows the job's final
state, not the state at display time. (A front end re-creates the widget's view on each
update, so the queue panel, whose jobs change state all the time, waits for the cell's end.)
"""

from __future__ import annotations

import contextlib
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]

from .._errors import BitsError
from .._protocols import JobControl, ManagerView
from .._states import useful_calls
from ._pump import INTERVAL, MIN_GAP, Changes, Inbox, Pump, default_pump
from ._text import (
    TRACK_COLOUR,
)

BUTTONS: tuple[tuple[str, str, str], ...] = (
    # (method, label, icon)
    ("suspend", "Suspend", "pause"),
    ("resume", "Resume", "play"),
    ("cancel", "Cancel", "times"),
    ("complete", "Complete", "check"),
)
LABEL = {method: label for method, label, _ in BUTTONS}


CALL_ERRORS = (RuntimeError, TimeoutError, BitsError)


def widget_tree(root: Any) -> Iterator[Any]:
    """*root*, its children (recursively) and their style and layout models."""
    stack = [root]
    while stack:
        w = stack.pop()
        yield w
        for attr in ("style", "layout"):
            sub = getattr(w, attr, None)
            if isinstance(sub, widgets.Widget):
                yield sub
        stack.extend(getattr(w, "children", ()))


# -- display ids and the after-cell hook ------------------------------------------------------
_displayed: weakref.WeakSet[Panel] = weakref.WeakSet()
_hook_lock = threading.Lock()
_hooked: list[object] = []  # the shell whose post_run_cell runs _after_cell


def _after_cell(*_args: object) -> None:
    """After every cell (kernel main thread, under that cell's parent header): re-publish every
    displayed panel whose text changed, so the saved notebook holds the current state."""
    for panel in list(_displayed):
        try:
            panel.sync_display()
        except Exception:  # a broken panel must not break the user's cells
            _displayed.discard(panel)


def show(panel: Panel) -> None:
    """Display *panel* in the running kernel with a display id, so that its saved text and
    HTML follow the job (see the module docstring)."""
    from IPython import get_ipython
    from IPython.display import display

    handle = display(panel, display_id=True)  # type: ignore[no-untyped-call]
    panel.attach_display(handle)
    _displayed.add(panel)
    shell = get_ipython()
    with _hook_lock:
        if shell is not None and shell not in _hooked:
            shell.events.register("post_run_cell", _after_cell)
            _hooked.append(shell)


def offered(job: JobControl) -> frozenset[str]:
    """The calls a panel offers as buttons: valid ones (``allowed_calls``) that change
    something (no Suspend on a SUSPENDED job, no Resume on a running one)."""
    return job.allowed_calls & useful_calls(job.state, job.type)


class Panel(widgets.VBox):  # type: ignore[misc]
    """What both panels share: the inbox, the pump, the lock, close(), the text fallback and the
    display id."""

    def _setup(self, mgr: ManagerView, job_id: uuid.UUID | None, pump: Pump | None) -> None:
        self._ui_lock = threading.RLock()
        self._pump = pump if pump is not None else default_pump()
        self._mgr: ManagerView | None = mgr
        self._inbox = Inbox(self._pump.wake, job_id)
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        self._finished = False
        self._last_tick = 0.0
        self._held: list[Any] = []
        self._display: Any = None
        self._published: tuple[str, str] | None = None  # last sent from any thread
        self._published_cell: tuple[str, str] | None = None  # last sent from a running cell
        self._publish_due = False
        self._bundled: tuple[str, str] | None = None  # text and HTML of the last mimebundle
        self.renders = 0
        self.publishes = 0

    def _subscribe(self) -> bool:
        """Listen to the manager; False when it is already closed."""
        mgr = self._mgr
        if mgr is None or mgr.closed:
            return False
        try:
            self._unsubscribe = mgr.subscribe(self._inbox)
        except RuntimeError:  # closed meanwhile
            return False
        return True

    @property
    def closed(self) -> bool:
        """True after close()."""
        return bool(getattr(self, "_closed", True))

    @property
    def live(self) -> bool:
        """True while the panel follows the manager (not closed, not finished)."""
        return not self.closed and not self._finished

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        """Batch every trait change of this render into one message per changed widget."""
        with contextlib.ExitStack() as stack:
            for w in self._held:
                stack.enter_context(w.hold_sync())
            yield
        self.renders += 1

    # -- the pump's side ----------------------------------------------------------------------
    def _intervals(self) -> tuple[float, float]:
        return INTERVAL, MIN_GAP

    def pump_due(self, now: float) -> float:
        """Next tick: INTERVAL after the last, or MIN_GAP after it when a state changed."""
        if not self.live:
            return now
        interval, gap = self._intervals()
        return self._last_tick + (gap if self._inbox.urgent else interval)

    def pump_tick(self, now: float) -> bool:
        """Apply what the inbox holds; False once the panel is closed or finished."""
        if not self.live:
            return False
        self._last_tick = now
        changes = self._inbox.take()
        mgr = self._mgr
        if mgr is None or mgr.closed:
            self._finish("The manager is closed; this panel no longer updates.")
            return False
        keep = self._tick(changes)
        if self._publish_due:
            self.publish()
        return keep

    def _tick(self, changes: Changes) -> bool:
        raise NotImplementedError

    def _final_render(self, reason: str | None) -> None:
        raise NotImplementedError

    def _finish(self, reason: str | None) -> None:
        """Show the final state, stop listening and drop every reference to the manager."""
        with self._ui_lock:
            if self._finished or self._closed:
                return
            self._finished = True
            self._stop_listening()
            try:
                self._final_render(reason)
            finally:
                self._mgr = None
        self._pump.discard(self)
        self.publish()

    def _stop_listening(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def close(self) -> None:
        """Stop updating, unsubscribe and close every widget of the panel."""
        lock = getattr(self, "_ui_lock", None)
        if lock is not None:
            with lock:
                if not self._closed:
                    self._closed = True
                    self._stop_listening()
                    self._mgr = None
                    self._drop_refs()
                    for w in list(widget_tree(self))[1:]:
                        w.close()
            self._pump.discard(self)
            _displayed.discard(self)
        super().close()

    def _drop_refs(self) -> None:
        pass

    # -- display id -----------------------------------------------------------------------------
    def attach_display(self, handle: Any) -> None:
        """Remember the ``DisplayHandle`` this panel was shown with (``show()``) and, as what
        is on screen, the bundle ``display()`` sent: the pump may have rendered a newer state
        since, and taking that as shown would keep it from ever being published."""
        with self._ui_lock:
            self._display = handle
            shown = self._bundled if self._bundled is not None else (self.text(), self.html())
            self._published = self._published_cell = shown

    def publish(self, *, from_cell: bool = False) -> bool:
        """Re-publish the panel's text and HTML under its display id when they changed;
        True when an update was sent. Any thread: the kernel routes it to the running cell.

        An update sent from the pump thread while no cell runs is dropped by the front end,
        so what a cell last published is tracked apart (*from_cell*): the next cell's
        after-hook sends again whatever differs from that.
        """
        self._publish_due = False
        handle = self._display
        if handle is None or self.closed:
            return False
        # Under the UI lock: the pump thread and the cell's thread both publish, and an update
        # read before a newer one but sent after it would leave the older state in the notebook.
        with self._ui_lock:
            shown = (self.text(), self.html())
            if shown == (self._published_cell if from_cell else self._published):
                return False
            self._published = shown
            if from_cell:
                self._published_cell = shown
            try:
                handle.update(self)
            except Exception:  # no kernel any more (interpreter exit)
                return False
            self.publishes += 1
            return True

    def sync_display(self) -> None:
        """Read the job(s) now and re-publish: after a cell, and when a helper stops waiting
        (both on the kernel's main thread, inside the running cell)."""
        if self.live:
            self.refresh()
        self.publish(from_cell=True)

    def refresh(self) -> None:
        raise NotImplementedError

    # -- text fallback --------------------------------------------------------------------------
    def text(self) -> str:
        """The panel as plain text: one line per job."""
        raise NotImplementedError

    def html(self) -> str:
        """The panel as static HTML (what a notebook viewer without widgets shows)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        try:
            return self.text()
        except Exception:  # half-built or torn down
            return f"<{type(self).__name__}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        lock = getattr(self, "_ui_lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            data = super()._repr_mimebundle_(**kwargs)
            if isinstance(data, dict):
                data["text/plain"] = repr(self)
                try:
                    data["text/html"] = self.html()
                except Exception:  # half-built: the widget and the text still show
                    pass
                else:
                    self._bundled = (data["text/plain"], data["text/html"])
        return data


def bar_html(fraction: float | None, colour: str, width: str = "100%", height: str = "8px") -> str:
    """A themed bar: the state's colour on the theme's track colour; empty when unknown."""
    pct = 0.0 if fraction is None else max(0.0, min(1.0, fraction)) * 100.0
    return (
        f'<div style="background:{TRACK_COLOUR};width:{width};height:{height};'
        f'border-radius:2px;overflow:hidden"><div style="width:{pct:.1f}%;height:100%;'
        f'background:{colour}"></div></div>'
    )
