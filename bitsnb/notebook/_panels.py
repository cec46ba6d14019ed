"""The ipywidgets panels: ``JobPanel`` (one job, with buttons) and ``QueuePanel`` (many jobs).

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

Destructive buttons ask first: Cancel on a job that holds data and Complete on a job whose files
are not all transferred turn into "Confirm …" and say what they will do; the second click does it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]

from .._codes import BG_S_PARTIAL_COMPLETE, S_OK
from .._enums import JobState, JobType
from .._errors import BitsError
from .._format import RateEstimator, format_bytes, format_eta, format_rate
from .._models import ErrorInfo, FileProgress, JobProgress, JobTimes
from .._protocols import JobControl, JobView, ManagerView
from .._states import useful_calls
from ._pump import INTERVAL, MIN_GAP, Changes, Inbox, Pump, default_pump
from ._text import (
    ACTIVE_STATES,
    FILTERS,
    STATE_COLOUR,
    TRACK_COLOUR,
    Estimate,
    bar_style,
    elapsed_text,
    error_summary,
    escape,
    estimate,
    files_text,
    finished_text,
    job_line,
    progress_text,
    queue_text,
    state_counts,
)

__all__ = ["JobPanel", "JobSnapshot", "QueuePanel", "confirm_text", "show"]

_BUTTONS: tuple[tuple[str, str, str], ...] = (
    # (method, label, icon)
    ("suspend", "Suspend", "pause"),
    ("resume", "Resume", "play"),
    ("cancel", "Cancel", "times"),
    ("complete", "Complete", "check"),
)
_LABEL = {method: label for method, label, _ in _BUTTONS}
_STALE_NOTE = (
    "Live while this kernel runs. After a kernel restart this panel stops updating; the jobs "
    "wait in the queue and go on as soon as bitsnb is imported again (re-run the cell)."
)
_SETTLED = frozenset(
    {
        JobState.SUSPENDED,
        JobState.ERROR,
        JobState.TRANSFERRED,
        JobState.ACKNOWLEDGED,
        JobState.CANCELLED,
    }
)
BIG_QUEUE = 1000
"""Above this many jobs the queue panel refreshes once a second (state changes after 0.5 s)."""


@dataclass(frozen=True)
class JobSnapshot:
    """What a panel last read from a job (what it shows; also its text fallback).

    ``files`` holds the files' progress only while some size is unknown (to estimate the
    total); ``folder`` is where Complete moves the files (read while TRANSFERRED or ERROR);
    ``retry_at`` is when a TRANSIENT_ERROR job retries by itself (epoch seconds);
    ``verified`` how many files were checked against a hash and matched (read once the job is
    TRANSFERRED or ACKNOWLEDGED).
    """

    id: uuid.UUID
    display_name: str
    state: JobState
    progress: JobProgress
    error: ErrorInfo | None
    times: JobTimes | None = None
    files: tuple[FileProgress, ...] | None = None
    type: JobType = JobType.DOWNLOAD
    attempts: int = 0
    retry_at: float | None = None
    folder: str | None = None
    verified: int | None = None

    @classmethod
    def of(cls, job: JobView, *, detail: bool = True) -> JobSnapshot:
        """Read *job* now (plain attribute reads: safe from any thread). *detail* also reads
        the files when a size is unknown or the job waits for Complete."""
        state = job.state
        error = job.error if state in (JobState.ERROR, JobState.TRANSIENT_ERROR) else None
        p = job.progress
        times = job.times
        files: tuple[FileProgress, ...] | None = None
        folder = None
        need_files = detail and p.bytes_total is None and p.files_total > 1
        wants_folder = state in (JobState.TRANSFERRED, JobState.ERROR)
        done = state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED)
        verified = None
        if need_files or (detail and (wants_folder or done)):
            infos = job.files
            if need_files:
                files = tuple(f.progress for f in infos)
            if wants_folder and infos:
                folder = _common_folder([f.local_name for f in infos])
            if done:
                verified = sum(1 for f in infos if f.hash is not None and f.validation_state)
        attempts = int(getattr(job, "error_count", 0) or 0)
        retry_at = None
        if state is JobState.TRANSIENT_ERROR:
            delay = getattr(job, "minimum_retry_delay", None)
            if isinstance(delay, int | float):
                retry_at = times.modification.timestamp() + float(delay)
        return cls(
            job.id,
            job.display_name,
            state,
            p,
            error,
            times,
            files,
            job.type,
            attempts,
            retry_at,
            folder,
            verified,
        )

    @functools.cached_property
    def estimate(self) -> Estimate:
        """The share done, exact or estimated (see ``_text.estimate``); computed once."""
        return estimate(self.progress, self.files)

    def error_line(self, now: float | None = None) -> str:
        """The error said once (with the retry countdown for TRANSIENT_ERROR), or ''."""
        if self.error is None:
            return ""
        retry_in = None
        if self.retry_at is not None:
            retry_in = self.retry_at - (time.time() if now is None else now)
        return error_summary(
            self.error,
            job_type=self.type,
            retry_in=retry_in,
            attempts=self.attempts,
            transient=self.state is JobState.TRANSIENT_ERROR,
        )


def _verified_text(snap: JobSnapshot) -> str:
    """'verified' when every file matched its hash, 'k of n files verified' for some, else ''."""
    n, total = snap.verified, snap.progress.files_total
    if not n:
        return ""
    return "verified" if n == total else f"{n} of {total} files verified"


def _common_folder(paths: Sequence[str]) -> str:
    folders = {os.path.dirname(p) for p in paths}
    try:
        return os.path.commonpath(list(folders))
    except ValueError:  # different drives
        return sorted(folders)[0]


def _folder_text(folder: str | None) -> str:
    if not folder:
        return "place"
    try:
        rel = os.path.relpath(folder)
    except ValueError:
        rel = folder
    shown = rel if not rel.startswith("..") and len(rel) < len(folder) else folder
    return shown.rstrip(os.sep) + os.sep


def confirm_text(method: str, snap: JobSnapshot) -> str | None:
    """What a destructive button would do, when it deserves a second click (else None).

    Cancel on a job with data deletes it; Complete before every file is transferred keeps only
    the transferred ones.
    """
    p = snap.progress
    if snap.state.is_final:
        return None
    if method == "cancel" and (p.bytes_transferred > 0 or p.files_transferred > 0):
        verb = "uploaded" if snap.type is not JobType.DOWNLOAD else "downloaded"
        return (
            f"Cancel deletes the {format_bytes(p.bytes_transferred)} already {verb} "
            f"({files_text(p)} done) and ends the job."
        )
    if method == "complete" and snap.state is not JobState.TRANSFERRED:
        if p.files_transferred == 0:
            return f"Complete now ends the job without any of its {files_text(p)}."
        return (
            f"Complete now keeps only the {p.files_transferred} of {p.files_total} files "
            f"transferred (moved into {_folder_text(snap.folder)}) and drops the rest."
        )
    return None


_CALL_ERRORS = (RuntimeError, TimeoutError, BitsError)


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
_displayed: weakref.WeakSet[_Panel] = weakref.WeakSet()
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


def show(panel: _Panel) -> None:
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


def _offered(job: JobControl) -> frozenset[str]:
    """The calls a panel offers as buttons: valid ones (``allowed_calls``) that change
    something (no Suspend on a SUSPENDED job, no Resume on a running one)."""
    return job.allowed_calls & useful_calls(job.state, job.type)


class _Panel(widgets.VBox):  # type: ignore[misc]
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
        """Remember the ``DisplayHandle`` this panel was shown with (``show()``)."""
        self._display = handle
        self._published = self._published_cell = (self.text(), self.html())

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
        data = super()._repr_mimebundle_(**kwargs)
        if isinstance(data, dict):
            data["text/plain"] = repr(self)
            try:
                data["text/html"] = self.html()
            except Exception:  # half-built: the widget and the text still show
                pass
        return data


def _bar_html(fraction: float | None, colour: str, width: str = "100%", height: str = "8px") -> str:
    """A themed bar: the state's colour on the theme's track colour; empty when unknown."""
    pct = 0.0 if fraction is None else max(0.0, min(1.0, fraction)) * 100.0
    return (
        f'<div style="background:{TRACK_COLOUR};width:{width};height:{height};'
        f'border-radius:2px;overflow:hidden"><div style="width:{pct:.1f}%;height:100%;'
        f'background:{colour}"></div></div>'
    )


class JobPanel(_Panel):
    """A live panel for one job: name, state, progress bar, files, bytes, time, speed, ETA,
    error and buttons.

    ``bitsnb.notebook.job_panel(job)`` or ``job.panel()`` builds one; display it (or just
    ``job``) in a cell. *compact* draws it on one line, as tqdm does. Buttons call the job's
    methods (Cancel on a job with data and a partial Complete ask for a second click); a
    ``BitsError`` shows up in the panel. *completes* says that the caller completes the job
    once it is TRANSFERRED (``bitsnb.download``), so the panel does not ask the user to.
    """

    def __init__(
        self,
        job: JobControl,
        *,
        pump: Pump | None = None,
        rate: RateEstimator | None = None,
        compact: bool = False,
        completes: bool = False,
    ) -> None:
        self.compact = compact
        self.completes = completes
        name_label = widgets.HTML(
            layout=widgets.Layout(margin="0 0.5em 0 0", flex="0 1 auto", overflow="hidden")
        )
        state_label = widgets.Label(
            style={"font_weight": "bold"},
            layout=widgets.Layout(margin="0 0.5em 0 0", flex="0 0 auto"),
            tooltip=_STALE_NOTE,
        )
        bar = widgets.FloatProgress(
            value=0.0,
            min=0.0,
            max=100.0,
            layout=widgets.Layout(
                width="auto", flex="1 1 8em", min_width="6em" if compact else "0"
            ),
        )
        files_label = widgets.Label(layout=widgets.Layout(margin="0 0.75em 0 0", flex="0 0 auto"))
        stats_label = widgets.Label(layout=widgets.Layout(flex="0 1 auto"))
        error_label = widgets.HTML(layout=widgets.Layout(display="none"))
        message_label = widgets.HTML(layout=widgets.Layout(display="none"))
        buttons = {
            method: widgets.Button(
                description="" if compact else label,
                icon=icon,
                disabled=True,
                tooltip=f"{label}: job.{method}()",
                layout=widgets.Layout(
                    width="auto", flex="0 0 auto", padding="0 0.6em" if compact else ""
                ),
            )
            for method, label, icon in _BUTTONS
        }
        wrap = widgets.Layout(flex_flow="row wrap", align_items="center", width="100%")
        if compact:
            children = [
                widgets.HBox(
                    [name_label, state_label, bar, files_label, stats_label, *buttons.values()],
                    layout=widgets.Layout(
                        flex_flow="row nowrap", align_items="center", width="100%"
                    ),
                ),
                error_label,
                message_label,
            ]
        else:
            children = [
                widgets.HBox([name_label, state_label, files_label, stats_label], layout=wrap),
                widgets.HBox([bar], layout=widgets.Layout(width="100%")),
                error_label,
                widgets.HBox(list(buttons.values()), layout=wrap),
                message_label,
            ]
        super().__init__(children=children)
        self.name_label = name_label
        self.state_label = state_label
        self.bar = bar
        self.files_label = files_label
        self.stats_label = stats_label
        self.error_label = error_label
        self.message_label = message_label
        self.buttons = buttons
        self._setup(job.manager, job.id, pump)
        self._job: JobControl | None = job
        self._rate = rate if rate is not None else RateEstimator()
        self._style: str | None = None
        self._snapshot = JobSnapshot.of(job)
        self._allowed: frozenset[str] = frozenset()
        self._eta = ""
        self._speed = ""
        self._stats = ""
        self._armed: str | None = None
        self._note = ""  # the hint or warning shown under the buttons (plain text)
        self._click_html = ""  # what the last click answered (HTML), until the state changes
        self._message_shown = ""
        self._held = [
            name_label,
            state_label,
            state_label.style,
            bar,
            bar.style,
            files_label,
            stats_label,
            error_label,
            error_label.layout,
            message_label,
            message_label.layout,
            *buttons.values(),
        ]
        for method, button in buttons.items():
            button.on_click(lambda _button, method=method: self._on_click(method))
        subscribed = self._subscribe()
        with self._ui_lock:
            self._render(self._snapshot, _offered(job))
        if not subscribed:
            self._finish("The manager is closed; this panel no longer updates.")
        elif self._snapshot.state.is_final:
            self._finish(None)
        else:
            self._pump.add(self)

    # -- reading --------------------------------------------------------------------------------
    @property
    def job(self) -> JobControl | None:
        """The job shown (None once the panel finished or closed)."""
        return self._job

    @property
    def snapshot(self) -> JobSnapshot:
        """What the panel shows now."""
        return self._snapshot

    @property
    def state_style(self) -> str:
        """The bar style in use ('', 'info', 'success', 'warning' or 'danger')."""
        return str(self.bar.bar_style)

    @property
    def error_text(self) -> str:
        """The error line shown, as plain text ('' outside the error states)."""
        return self._snapshot.error_line()

    @property
    def speed(self) -> str:
        """The speed shown ('' when unknown)."""
        return self._speed

    @property
    def eta(self) -> str:
        """The ETA shown ('' when unknown)."""
        return self._eta

    @property
    def armed(self) -> str | None:
        """The button waiting for its confirming second click ('cancel', 'complete' or None)."""
        return self._armed

    def _extra(self) -> str:
        snap = self._snapshot
        if snap.state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED, JobState.CANCELLED):
            return _verified_text(snap)
        return " ".join(x for x in (self._speed, f"ETA {self._eta}" if self._eta else "") if x)

    def text(self) -> str:
        """One line: name, state, percent, bytes, files, speed and ETA (and the error)."""
        snap = self._snapshot
        return job_line(snap, est=snap.estimate, times=snap.times, extra=self._extra())

    def html(self) -> str:
        """The panel as static HTML: name, state, a themed bar, the numbers and the error."""
        snap = self._snapshot
        colour = STATE_COLOUR[snap.state]
        est = snap.estimate
        err = snap.error_line()
        err_html = (
            f'<div style="color:{colour};white-space:normal;overflow-wrap:break-word">'
            f"{escape(err)}</div>"
            if err
            else ""
        )
        note = f"<div><i>{escape(self._note)}</i></div>" if self._note else ""
        stale = (
            f'<div style="color:var(--jp-ui-font-color2, #757575);font-size:85%">'
            f"Saved while {snap.state.name}. {escape(_STALE_NOTE)}</div>"
            if not snap.state.is_final and snap.state is not JobState.TRANSFERRED
            else ""
        )
        return (
            '<div class="bitsnb-job" style="font-size:13px;line-height:1.4">'
            f"<b>{escape(snap.display_name)}</b> "
            f'<span style="color:var(--jp-ui-font-color2, #757575)">{str(snap.id)[:8]}</span> '
            f'<b style="color:{colour}">{snap.state.name}</b> '
            f"{escape(files_text(snap.progress))} {escape(self._stats)}"
            f"{_bar_html(est.fraction, colour)}{err_html}{note}{stale}</div>"
        )

    # -- updating -------------------------------------------------------------------------------
    def _tick(self, changes: Changes) -> bool:
        job = self._job
        if job is None:
            return False
        if not changes and self._snapshot.state not in ACTIVE_STATES:
            return True  # idle: nothing to send
        with self._ui_lock:  # read under the lock too, so a click's newer render always wins
            if not self.live:
                return False
            snap = JobSnapshot.of(job)
            self._render(snap, _offered(job))
        if snap.state.is_final:
            self._finish(None)
            return False
        return True

    def _stats_text(self, snap: JobSnapshot, est: Estimate) -> str:
        state, p = snap.state, snap.progress
        if state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED):
            took = finished_text(p, snap.times)
            text = f"{est.percent_text}  {took}" if took else progress_text(p, est)
            return f"{text}  {_verified_text(snap)}".rstrip()
        parts = [progress_text(p, est)]
        if state in ACTIVE_STATES:
            elapsed = elapsed_text(snap.times)
            parts.append(f"{elapsed}<{self._eta or '?'}" if elapsed else "")
        parts.append(self._speed)
        return "  ".join(x for x in parts if x)

    def _render(self, snap: JobSnapshot, allowed: frozenset[str]) -> None:
        """Copy *snap* into the widgets (caller holds the UI lock)."""
        state, p = snap.state, snap.progress
        previous = self._snapshot.state if self.renders else None
        if previous is not None and previous is not state:
            # re-publish (display update) only on a settled state: a front end re-creates the
            # view on each update, so the churn of CONNECTING/TRANSFERRING/TRANSIENT_ERROR
            # while retrying would make the buttons unclickable
            self._publish_due = state in _SETTLED
            self._click_html = ""
            # a confirmation stays through the churn of a retrying job, not past a settled
            # state (the question may no longer be the same) or once it no longer applies
            armed = self._armed
            if armed is not None and (state in _SETTLED or confirm_text(armed, snap) is None):
                self._disarm()
        style = bar_style(state, self._style)
        colour = STATE_COLOUR[state]
        if style == "danger" and state is JobState.ACKNOWLEDGED:
            colour = STATE_COLOUR[JobState.ERROR]  # completed straight from ERROR: stays red
        if state in ACTIVE_STATES:
            self._rate.update(p.bytes_transferred)
        else:
            self._rate.reset()
        est = estimate(p, snap.files)
        value = 0.0 if est.fraction is None else 100.0 * est.fraction
        rate = self._rate.rate if state is JobState.TRANSFERRING else None
        remaining = None if est.total is None else est.total - p.bytes_transferred
        self._speed = format_rate(rate)
        self._eta = format_eta(self._rate.eta(remaining)) if rate else ""
        self._snapshot = snap
        self._stats = stats = self._stats_text(snap, est)
        error = snap.error_line()
        if self._armed is None:
            self._note = ""
            if state is JobState.TRANSFERRED and "complete" in allowed:
                self._note = (
                    f"Completing: moving the {files_text(p)} into {_folder_text(snap.folder)}"
                    if self.completes
                    else f"Transferred. Complete moves the {files_text(p)} into "
                    f"{_folder_text(snap.folder)} (until then they are hidden temporary files)."
                )
        with self._hold():
            self.name_label.value = (
                f"<b>{escape(snap.display_name)}</b> "
                f"<small style='color:var(--jp-ui-font-color2, #888)'>{str(snap.id)[:8]}</small>"
            )
            self.state_label.value = state.name
            self.state_label.style.text_color = colour
            self.bar.value = value
            self.bar.bar_style = style
            self.bar.style.bar_color = colour
            self.files_label.value = files_text(p)
            self.stats_label.value = stats
            self.error_label.value = (
                f'<div style="color:{colour};white-space:normal;overflow-wrap:break-word;'
                f'line-height:1.3">{escape(error)}</div>'
                if error
                else ""
            )
            self.error_label.layout.display = "" if error else "none"
            self._show_message()
            for method, button in self.buttons.items():
                button.disabled = self._finished or method not in allowed
            # Complete is the main action only once every file is there
            self.buttons["complete"].button_style = (
                "success" if state is JobState.TRANSFERRED else ""
            )
            self.buttons["resume"].button_style = (
                "primary" if state in (JobState.SUSPENDED, JobState.ERROR) else ""
            )
            if self._armed is None:
                self.buttons["cancel"].button_style = ""
        self._style = style
        self._allowed = allowed

    def _show_message(self) -> None:
        """Under the buttons: the last click's answer, else the warning or hint, else nothing."""
        if self._click_html:
            html_text = self._click_html
        elif self._armed is not None:
            html_text = (
                f'<span style="color:{STATE_COLOUR[JobState.TRANSIENT_ERROR]}">'
                f"{escape(self._note)}</span>"
            )
        elif self._note:
            html_text = f"<i>{escape(self._note)}</i>"
        else:
            html_text = ""
        if html_text != self._message_shown:
            self._message_shown = html_text
            self.message_label.value = html_text
            self.message_label.layout.display = "" if html_text else "none"

    def _disarm(self) -> None:
        method, self._armed = self._armed, None
        if method is not None:
            button = self.buttons[method]
            button.description = "" if self.compact else _LABEL[method]
            button.button_style = ""
        self._note = ""
        self._show_message()

    def _final_render(self, reason: str | None) -> None:
        job = self._job
        if job is not None:
            self._render(JobSnapshot.of(job), frozenset())
        if reason:
            self._note = reason
            self._show_message()
        self._job = None

    def _drop_refs(self) -> None:
        self._job = None

    def _on_click(self, method: str) -> None:
        """A button: call the job's method on this (the kernel's) thread; errors go in the panel.

        Cancel on a job with data and a partial Complete arm the button first (it reads
        "Confirm …" and the panel says what will happen); the second click does it.
        """
        job = self._job
        if job is None or not self.live:
            return
        with self._ui_lock:
            if self._armed is not None and self._armed != method:
                self._disarm()
            if self._armed is None:
                warning = confirm_text(method, JobSnapshot.of(job))
                if warning is not None:
                    self._armed = method
                    self._click_html = ""
                    self._note = f"{warning} Press “Confirm {method}” to go on."
                    with self._hold():
                        button = self.buttons[method]
                        button.description = f"Confirm {method}"
                        button.button_style = "danger" if method == "cancel" else "warning"
                        self._show_message()
                    return
            else:
                self._disarm()
        message = ""
        try:
            result = getattr(job, method)()
        except BitsError as exc:
            message = (
                f'<span style="color:{STATE_COLOUR[JobState.ERROR]}">{escape(str(exc))}</span>'
            )
        except RuntimeError as exc:  # the manager closed under us
            message = (
                f'<span style="color:{STATE_COLOUR[JobState.ERROR]}">{escape(str(exc))}</span>'
            )
        else:
            if method == "complete" and result == BG_S_PARTIAL_COMPLETE:
                message = "Partially completed: files not transferred were left out."
            elif method in ("complete", "cancel") and isinstance(result, int) and result != S_OK:
                message = f"{method}() returned 0x{result:08X}"
        self.refresh(message)

    def refresh(self, message: str | None = None) -> None:
        """Show the job's current state now (from this thread); *message* replaces the note."""
        job = self._job
        if job is None:
            return
        with self._ui_lock:
            if not self.live:
                return
            if message:
                self._click_html = message
            snap = JobSnapshot.of(job)
            self._render(snap, _offered(job))
            if message:
                self._click_html = message  # a state change in this render cleared it
                self._show_message()
        if snap.state.is_final:
            self._finish(None)


_SORTS: dict[str, tuple[Callable[[JobSnapshot], Any], bool]] = {
    "newest": (lambda s: s.times.creation if s.times else _dt.datetime.min, True),
    "oldest": (lambda s: s.times.creation if s.times else _dt.datetime.min, False),
    "name": (lambda s: s.display_name.casefold(), False),
    "state": (lambda s: int(s.state), False),
    "progress": (lambda s: s.estimate.fraction or 0.0, True),
    "size": (lambda s: s.estimate.total or 0, True),
}
"""Queue panel sort orders: name → (key, descending)."""

_STABLE_SORTS = frozenset({"newest", "oldest", "name"})

_COLUMNS = (
    # (header, width) — fixed, so that columns stay put when the filter or the rows change;
    # the error column takes what is left
    ("id", "6.5em"),
    ("job", "13em"),
    ("state", "9em"),
    ("progress", "80px"),
    ("%", "3.5em"),
    ("bytes", "10em"),
    ("files", "4em"),
    ("speed", "6.5em"),
    ("ETA", "3.5em"),
    ("created", "8em"),
    ("error", ""),
)


class QueuePanel(_Panel):
    """A live table of jobs: totals on top, a bounded scrolling table with id, name, state,
    progress, bytes, files, speed, ETA, creation time and error, a filter, a sort order and
    actions on a chosen job.

    *jobs* limits it to those jobs (``bitsnb.download_many`` shows its own); *since* to jobs
    created at or after that time. Without either it shows the manager's whole queue. The
    rows are one HTML widget, so a tick costs at most two messages however many jobs there
    are, and only the jobs that changed (or are moving) are read again.
    """

    def __init__(
        self,
        manager: ManagerView,
        *,
        pump: Pump | None = None,
        max_rows: int = 200,
        jobs: Iterable[JobControl] | None = None,
        since: _dt.datetime | None = None,
        height: str = "22em",
    ) -> None:
        title = widgets.HTML(
            f"<b>bitsnb queue</b> <small style='color:var(--jp-ui-font-color2, #888)'>"
            f"{escape(str(manager.store_path))}</small>",
            layout=widgets.Layout(flex="1 1 auto", overflow="hidden"),
        )
        filter_dropdown = widgets.Dropdown(
            options=list(FILTERS),
            value="all",
            description="show",
            layout=widgets.Layout(width="12em", flex="0 0 auto"),
            style={"description_width": "3em"},
        )
        sort_dropdown = widgets.Dropdown(
            options=list(_SORTS),
            value="newest",
            description="sort",
            layout=widgets.Layout(width="12em", flex="0 0 auto"),
            style={"description_width": "3em"},
        )
        totals = widgets.HTML()
        table = widgets.HTML(layout=widgets.Layout(width="100%"))
        select = widgets.Dropdown(
            options=[("(choose a job)", "")],
            value="",
            description="job",
            layout=widgets.Layout(width="20em", flex="0 1 auto"),
            style={"description_width": "2.5em"},
        )
        buttons = {
            method: widgets.Button(
                description=label,
                icon=icon,
                disabled=True,
                tooltip=f"{label} the chosen job",
                layout=widgets.Layout(width="auto", flex="0 0 auto"),
            )
            for method, label, icon in _BUTTONS
        }
        message = widgets.HTML()
        wrap = widgets.Layout(flex_flow="row wrap", align_items="center", width="100%")
        super().__init__(
            children=[
                widgets.HBox([title, filter_dropdown, sort_dropdown], layout=wrap),
                totals,
                table,
                widgets.HBox([select, *buttons.values(), message], layout=wrap),
            ]
        )
        self.filter = filter_dropdown
        self.sort = sort_dropdown
        self.table = table
        self.totals = totals
        self.select = select
        self.buttons = buttons
        self.message = message
        self.max_rows = max_rows
        self.height = height
        self._setup(manager, None, pump)
        self._held = [table, totals]
        self._scope: frozenset[uuid.UUID] | None = None
        self._since = since
        self._handles: dict[uuid.UUID, JobControl] = {}
        if jobs is not None:
            given = list(jobs)
            self._scope = frozenset(j.id for j in given)
            self._handles = {j.id: j for j in given}
        self._snaps: dict[uuid.UUID, JobSnapshot] = {}
        self._members = 0  # bumped when jobs come or go (the cached sort order is stale)
        self._order: list[uuid.UUID] = []
        self._order_stamp: tuple[object, ...] | None = None
        self._rows_cache: list[JobSnapshot] = []
        self._seen_bytes: dict[uuid.UUID, int] = {}
        self._rates: dict[uuid.UUID, RateEstimator] = {}
        self._moved = 0
        self._rate = RateEstimator()
        self._note = ""
        self._armed: str | None = None
        self._need_enum = self._scope is None
        subscribed = self._subscribe()
        if subscribed and self._need_enum:
            self._enumerate()
        filter_dropdown.observe(self._on_view_change, names="value")
        sort_dropdown.observe(self._on_view_change, names="value")
        select.observe(self._on_select, names="value")
        for method, button in buttons.items():
            button.on_click(lambda _button, method=method: self._on_click(method))
        with self._ui_lock:
            self._read(set(self._handles))
            self._render()
        if not subscribed:
            self._finish("The manager is closed; this panel no longer updates.")
        else:
            self._pump.add(self)

    # -- reading --------------------------------------------------------------------------------
    @property
    def jobs(self) -> list[JobSnapshot]:
        """Every job the panel knows, as last read."""
        return list(self._snaps.values())

    @property
    def rows(self) -> list[JobSnapshot]:
        """The jobs shown under the current filter, in the current sort order."""
        states = FILTERS.get(str(self.filter.value))
        sort = str(self.sort.value)
        key, reverse = _SORTS[sort]
        if sort in _STABLE_SORTS:
            # the order depends on what never changes (creation, name): sort once per
            # membership, then only filter (10,000 jobs: no sort per tick)
            stamp = (sort, self._members)
            if self._order_stamp != stamp:
                ordered = sorted(self._snaps.values(), key=key, reverse=reverse)
                self._order = [s.id for s in ordered]
                self._order_stamp = stamp
            snaps = self._snaps
            picked = (snaps.get(i) for i in self._order)
            return [s for s in picked if s is not None and (states is None or s.state in states)]
        rows = [s for s in self._snaps.values() if states is None or s.state in states]
        rows.sort(key=key, reverse=reverse)
        return rows

    @property
    def counts(self) -> dict[str, int]:
        """How many jobs in each group (each job counted once, by state)."""
        return state_counts([s.state for s in self._snaps.values()])

    def text(self) -> str:
        """The totals, then the shown jobs as a table (the CLI's renderer)."""
        rows = self.rows[: self.max_rows]
        return queue_text(rows, self._totals_text(), estimates=[s.estimate for s in rows])

    def html(self) -> str:
        """Totals and table as static HTML."""
        return f"<div>{escape(self._totals_text())}</div>{self._table_html(self.rows)}"

    # -- updating -------------------------------------------------------------------------------
    def _intervals(self) -> tuple[float, float]:
        if len(self._snaps) > BIG_QUEUE:
            return 1.0, 0.5
        return INTERVAL, MIN_GAP

    def _in_scope(self, job: JobView) -> bool:
        if self._scope is not None and job.id not in self._scope:
            return False
        return self._since is None or job.times.creation >= self._since

    def _enumerate(self) -> bool:
        """Re-read the list of jobs from the manager; False when that failed."""
        mgr = self._mgr
        if mgr is None:
            return False
        try:
            jobs = list(mgr.enum_jobs())
        except _CALL_ERRORS:
            return False
        handles = {j.id: j for j in jobs if self._in_scope(j)}
        new = set(handles) - set(self._handles)
        self._handles = handles
        for gone in [k for k in self._snaps if k not in handles]:
            del self._snaps[gone]
        self._members += 1
        self._read(new)
        self._need_enum = False
        return True

    def _read(self, ids: Iterable[uuid.UUID]) -> None:
        """Read these jobs again (and count the bytes they moved since they were last read)."""
        seen = self._seen_bytes
        for job_id in ids:
            handle = self._handles.get(job_id)
            if handle is None:
                continue
            try:
                s = JobSnapshot.of(handle, detail=handle.state in ACTIVE_STATES)
            except _CALL_ERRORS:  # gone meanwhile
                continue
            if job_id not in self._snaps:
                self._members += 1
            self._snaps[job_id] = s
            done = s.progress.bytes_transferred
            self._moved += max(0, done - seen.get(job_id, done))
            seen[job_id] = done
            if s.state is JobState.TRANSFERRING:
                self._rates.setdefault(job_id, RateEstimator()).update(done)
            else:
                self._rates.pop(job_id, None)

    def _tick(self, changes: Changes) -> bool:
        handles = self._handles
        if changes.removed:
            self._handles = handles = {k: v for k, v in handles.items() if k not in changes.removed}
            self._members += 1
            for k in changes.removed:
                self._snaps.pop(k, None)
                self._seen_bytes.pop(k, None)
                self._rates.pop(k, None)
        if self._scope is None:
            unknown = any(j not in handles for j in changes.changed - changes.removed)
            if changes.created or unknown or self._need_enum:
                self._need_enum = True
                self._enumerate()  # on failure: try again next tick
        active = {k for k, s in self._snaps.items() if s.state in ACTIVE_STATES}
        if not changes and not active and not self._need_enum:
            return True  # idle: nothing to send
        with self._ui_lock:
            if not self.live:
                return False
            # No re-publishing from here: a front end re-creates the widget's view on every
            # display update (JupyterLab loses the scroll position and the dropdowns), and a
            # queue changes state all the time. The queue's saved text follows after each
            # cell (post_run_cell) and at the end instead.
            self._read((changes.changed & set(self._handles)) | active)
            self._render()
        return True

    def _on_view_change(self, change: dict[str, Any]) -> None:
        with self._ui_lock:
            if not self.closed:
                self._render(read=False)

    def _render(self, read: bool = True) -> None:
        """Rewrite the table and totals from the snapshots (caller holds the UI lock)."""
        if read:
            if any(s.state is JobState.TRANSFERRING for s in self._snaps.values()):
                self._rate.update(self._moved)
            else:
                self._rate.reset()
        rows = self.rows
        self._rows_cache = rows
        table = self._table_html(rows)
        totals = escape(self._totals_text(len(rows)))
        with self._hold():
            self.table.value = table
            self.totals.value = f"<b>{totals}</b>" if totals else ""
        self._update_select(rows)

    def _update_select(self, rows: list[JobSnapshot]) -> None:
        options = [("(choose a job)", "")] + [
            (f"{str(s.id)[:8]}  {s.display_name[:40]}", str(s.id)) for s in rows[: self.max_rows]
        ]
        if tuple(self.select.options) != tuple(options):
            current = self.select.value
            with self.select.hold_sync():
                self.select.options = options
                self.select.value = current if any(v == current for _, v in options) else ""
        self._update_buttons()

    def _chosen(self) -> JobControl | None:
        value = str(self.select.value or "")
        if not value:
            return None
        return self._handles.get(uuid.UUID(value))

    def _update_buttons(self) -> None:
        job = self._chosen()
        allowed: frozenset[str] = frozenset()
        if job is not None and self.live:
            try:
                allowed = _offered(job)
            except _CALL_ERRORS:
                allowed = frozenset()
        for method, button in self.buttons.items():
            disabled = method not in allowed
            if button.disabled != disabled:
                button.disabled = disabled
        snap = self._snaps.get(job.id) if job is not None else None
        complete_style = (
            "success" if snap is not None and snap.state is JobState.TRANSFERRED else ""
        )
        if self._armed != "complete" and self.buttons["complete"].button_style != complete_style:
            self.buttons["complete"].button_style = complete_style

    def _on_select(self, change: dict[str, Any]) -> None:
        with self._ui_lock:
            self._disarm()
            self._update_buttons()

    def _disarm(self) -> None:
        method, self._armed = self._armed, None
        if method is not None:
            self.buttons[method].description = _LABEL[method]
            self.buttons[method].button_style = ""
            self.message.value = ""

    def _on_click(self, method: str) -> None:
        """Run *method* on the chosen job (asking first as the job panel does)."""
        job = self._chosen()
        if job is None or not self.live:
            return
        with self._ui_lock:
            if self._armed is not None and self._armed != method:
                self._disarm()
            if self._armed is None:
                warning = confirm_text(method, JobSnapshot.of(job))
                if warning is not None:
                    self._armed = method
                    button = self.buttons[method]
                    button.description = f"Confirm {method}"
                    button.button_style = "danger" if method == "cancel" else "warning"
                    self.message.value = escape(f"{str(job.id)[:8]}: {warning}")
                    return
            else:
                self._disarm()
        text = ""
        try:
            getattr(job, method)()
        except _CALL_ERRORS as exc:
            text = f'<span style="color:{STATE_COLOUR[JobState.ERROR]}">{escape(str(exc))}</span>'
        self.message.value = text
        self.refresh()

    def _totals_text(self, shown: int | None = None) -> str:
        snaps = list(self._snaps.values())
        counts = state_counts([s.state for s in snaps])
        done = 0
        total = 0
        unknown = False
        estimated = False
        for s in snaps:
            p = s.progress
            done += p.bytes_transferred
            if p.bytes_total is not None:  # exact: no estimate needed (most jobs)
                total += p.bytes_total
                continue
            e = s.estimate
            if e.total is None:
                unknown = unknown or p.files_total > 0
            else:
                total += e.total
                estimated = True
        total_text = (
            "?"
            if unknown and not total
            else ("~" if estimated or unknown else "") + (format_bytes(total))
        )
        n = len(snaps)
        parts = [
            f"{n} job{'s' if n != 1 else ''}: "
            + ", ".join(f"{c} {key}" for key, c in counts.items() if c),
            f"{format_bytes(done)} / {total_text}",
        ]
        speed = format_rate(self._rate.rate)
        if speed:
            parts.append(speed)
        if shown is None:
            shown = len(self.rows)
        if shown != n:
            parts.append(f"showing {shown} ({self.filter.value})")
        if shown > self.max_rows:
            parts.append(f"first {self.max_rows} listed")
        if self._note:
            parts.append(self._note)
        return " · ".join(p.rstrip(": ") for p in parts)

    def _row_html(self, s: JobSnapshot) -> str:
        p = s.progress
        colour = STATE_COLOUR[s.state]
        est = s.estimate
        rate = self._rates.get(s.id)
        speed = format_rate(rate.rate) if rate is not None else ""
        eta = ""
        if rate is not None and rate.rate and est.total is not None:
            eta = format_eta(rate.eta(est.total - p.bytes_transferred))
        created = s.times.creation.astimezone().strftime("%d %b %H:%M") if s.times else ""
        err = s.error_line()
        err_short = f"{s.error.name}" if s.error is not None else ""
        if s.error is not None and s.state is JobState.TRANSIENT_ERROR:
            err_short += " (retrying)"
        name = escape(s.display_name)
        return (
            f'<tr><td title="{s.id}">{str(s.id)[:8]}</td>'
            f'<td title="{name}">{name}</td>'
            f'<td style="color:{colour};font-weight:bold">{s.state.name}</td>'
            f"<td>{_bar_html(est.fraction, colour, height='8px')}</td>"
            f"<td>{est.percent_text}</td>"
            f"<td>{format_bytes(p.bytes_transferred)} / {est.total_text}</td>"
            f"<td>{p.files_transferred}/{p.files_total}</td>"
            f"<td>{speed}</td><td>{eta}</td><td>{created}</td>"
            f'<td title="{escape(err)}" style="color:{colour}">{escape(err_short)}</td></tr>'
        )

    def _table_html(self, rows: list[JobSnapshot]) -> str:
        css = (
            "<style>.bitsnb-q{border-collapse:collapse;font-size:12px;table-layout:fixed;"
            "width:100%;min-width:72em;line-height:1.5;color:var(--jp-ui-font-color1, #222)}"
            ".bitsnb-q td,.bitsnb-q th{padding:1px 6px;text-align:left;white-space:nowrap;"
            "overflow:hidden;text-overflow:ellipsis}"
            ".bitsnb-q th{position:sticky;top:0;z-index:1;"
            "background:var(--jp-layout-color1, #fff);"
            "border-bottom:1px solid var(--jp-border-color1, #bdbdbd)}"
            ".bitsnb-q tbody tr:nth-child(even) td{background:var(--jp-layout-color2, #eee)}"
            "</style>"
        )
        cols = "".join(f'<col style="width:{w}">' if w else "<col>" for _, w in _COLUMNS)
        head = "".join(f"<th>{h}</th>" for h, _ in _COLUMNS)
        body = (
            "".join(self._row_html(s) for s in rows[: self.max_rows])
            if rows
            else f'<tr><td colspan="{len(_COLUMNS)}"><i>no jobs</i></td></tr>'
        )
        more = (
            f'<tr><td colspan="{len(_COLUMNS)}"><i>… and {len(rows) - self.max_rows} more '
            f"(filter or sort to see them)</i></td></tr>"
            if len(rows) > self.max_rows
            else ""
        )
        return (
            f'{css}<div class="bitsnb-qbox" style="max-height:{self.height};overflow:auto;'
            f'border:1px solid var(--jp-border-color2, #e0e0e0)">'
            f'<table class="bitsnb-q"><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}{more}</tbody></table></div>"
        )

    def _final_render(self, reason: str | None) -> None:
        self._note = reason or ""
        self._render(read=False)
        self._handles = {}

    def _drop_refs(self) -> None:
        self._handles = {}

    def refresh(self) -> None:
        """Re-read the queue from the manager and redraw now (from this thread)."""
        if not self.live:
            return
        if self._scope is None:
            self._enumerate()
        with self._ui_lock:
            if self.live:
                self._read(list(self._handles))
                self._render()
