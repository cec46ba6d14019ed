"""The ipywidgets panels: ``JobPanel`` (one job, with buttons) and ``QueuePanel`` (every job).

Threads: widgets are built on the caller's thread (the kernel's main thread). The manager's
loop thread only writes notes into an ``Inbox``; the shared ``Pump`` thread copies job state
into widget traits, batched per widget with ``hold_sync()``, at most every ``INTERVAL`` seconds
and promptly (after ``MIN_GAP``) on state changes. Button clicks and the filter run on the
main thread. A per-panel lock keeps the two writers apart. The manager stays the source of
truth: a panel only shows what it reads from jobs, so a new panel shows the live queue.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]

from .._codes import BG_S_PARTIAL_COMPLETE, S_OK
from .._enums import JobState
from .._errors import BitsError
from .._format import RateEstimator, format_bytes, format_eta, format_rate
from .._models import ErrorInfo, JobProgress
from .._protocols import JobControl, ManagerView
from ._pump import INTERVAL, MIN_GAP, Changes, Inbox, Pump, default_pump
from ._text import (
    ACTIVE_STATES,
    FILTERS,
    STYLE_COLOUR,
    JobLike,
    bar_style,
    error_text,
    escape,
    job_line,
    progress_text,
    queue_text,
)

__all__ = ["JobPanel", "JobSnapshot", "QueuePanel"]

_BUTTONS: tuple[tuple[str, str, str, str], ...] = (
    # (method, label, icon, button_style)
    ("suspend", "Suspend", "pause", ""),
    ("resume", "Resume", "play", "primary"),
    ("cancel", "Cancel", "times", "danger"),
    ("complete", "Complete", "check", "success"),
)


@dataclass(frozen=True)
class JobSnapshot:
    """What a panel last read from a job (what it shows; also its text fallback)."""

    id: uuid.UUID
    display_name: str
    state: JobState
    progress: JobProgress
    error: ErrorInfo | None

    @classmethod
    def of(cls, job: JobLike) -> JobSnapshot:
        """Read *job* now (plain attribute reads: safe from any thread)."""
        state = job.state
        error = job.error if state in (JobState.ERROR, JobState.TRANSIENT_ERROR) else None
        return cls(job.id, job.display_name, state, job.progress, error)


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


class _Panel(widgets.VBox):  # type: ignore[misc]
    """What both panels share: the inbox, the pump, the lock, close() and the text fallback."""

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
        self.renders = 0

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
    def pump_due(self, now: float) -> float:
        """Next tick: INTERVAL after the last, or MIN_GAP after it when a state changed."""
        if not self.live:
            return now
        return self._last_tick + (MIN_GAP if self._inbox.urgent else INTERVAL)

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
        return self._tick(changes)

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
        super().close()

    def _drop_refs(self) -> None:
        pass

    # -- text fallback --------------------------------------------------------------------------
    def text(self) -> str:
        """The panel as plain text: one line per job."""
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
        return data


class JobPanel(_Panel):
    """A live panel for one job: name, state, progress bar, files, speed, ETA, error, buttons.

    ``bitsnb.notebook.job_panel(job)`` or ``job.panel()`` builds one; display it (or just
    ``job``) in a cell. Buttons call the job's methods; a ``BitsError`` shows up in the panel.
    """

    def __init__(
        self,
        job: JobControl,
        *,
        pump: Pump | None = None,
        rate: RateEstimator | None = None,
    ) -> None:
        name_label = widgets.HTML(layout=widgets.Layout(margin="0 1em 0 0"))
        state_label = widgets.Label(style={"font_weight": "bold"})
        bar = widgets.FloatProgress(
            value=0.0, min=0.0, max=100.0, layout=widgets.Layout(width="auto", flex="1 1 auto")
        )
        files_label = widgets.Label(layout=widgets.Layout(margin="0 1em 0 0"))
        stats_label = widgets.Label()
        error_label = widgets.HTML()
        message_label = widgets.HTML()
        buttons = {
            method: widgets.Button(
                description=label,
                icon=icon,
                button_style=style,
                disabled=True,
                tooltip=f"job.{method}()",
                layout=widgets.Layout(width="auto"),
            )
            for method, label, icon, style in _BUTTONS
        }
        super().__init__(
            children=[
                widgets.HBox([name_label, state_label]),
                widgets.HBox([bar], layout=widgets.Layout(width="100%")),
                widgets.HBox([widgets.Label("files"), files_label, stats_label]),
                error_label,
                widgets.HBox(list(buttons.values())),
                message_label,
            ]
        )
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
        self._held = [
            name_label,
            state_label,
            state_label.style,
            bar,
            files_label,
            stats_label,
            error_label,
            *buttons.values(),
        ]
        for method, button in buttons.items():
            button.on_click(lambda _button, method=method: self._on_click(method))
        subscribed = self._subscribe()
        with self._ui_lock:
            self._render(self._snapshot, job.allowed_calls)
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
        return error_text(self._snapshot.error)

    @property
    def speed(self) -> str:
        """The speed shown ('' when unknown)."""
        return self._speed

    @property
    def eta(self) -> str:
        """The ETA shown ('' when unknown)."""
        return self._eta

    def text(self) -> str:
        """One line: name, state, percent, bytes, files, speed and ETA (and the error)."""
        line = job_line(self._snapshot)
        extra = " ".join(x for x in (self._speed, f"ETA {self._eta}" if self._eta else "") if x)
        return f"{line}  {extra}" if extra else line

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
            self._render(snap, job.allowed_calls)
        if snap.state.is_final:
            self._finish(None)
            return False
        return True

    def _render(self, snap: JobSnapshot, allowed: frozenset[str]) -> None:
        """Copy *snap* into the widgets (caller holds the UI lock)."""
        state, p = snap.state, snap.progress
        style = bar_style(state, self._style)
        active = state in ACTIVE_STATES
        if active:
            self._rate.update(p.bytes_transferred)
        else:
            self._rate.reset()
        pct = p.percent
        if pct is None:  # unknown byte total: show files done, pale, instead
            value = 100.0 * p.files_transferred / p.files_total if p.files_total else 0.0
            if active and not p.files_total:
                value = 100.0  # nothing to count yet: a full pale bar, as tqdm does
            if style == "":
                style = "info"
        else:
            value = max(0.0, min(100.0, pct))
        rate = self._rate.rate if state is JobState.TRANSFERRING else None
        remaining = None if p.bytes_total is None else p.bytes_total - p.bytes_transferred
        self._speed = format_rate(rate)
        self._eta = format_eta(self._rate.eta(remaining)) if rate else ""
        stats = "  ".join(
            x for x in (progress_text(p), self._speed, f"ETA {self._eta}" if self._eta else "") if x
        )
        colour = STYLE_COLOUR[style]
        error_html = ""
        if snap.error is not None:
            err = snap.error
            detail = f" ({escape(err.message)})" if err.message else ""
            where = f" [{escape(err.file.remote_name)}]" if err.file is not None else ""
            error_html = (
                f'<span style="color:{colour}"><b>0x{err.code:08X}</b> {escape(err.name)}</span>: '
                f"{escape(err.description)}{detail}{where}"
                f"<br><small>{escape(err.context_description)}</small>"
            )
        short_id = str(snap.id)[:8]
        with self._hold():
            self.name_label.value = (
                f"<b>{escape(snap.display_name)}</b> <small style='color:#888'>{short_id}</small>"
            )
            self.state_label.value = state.name
            self.state_label.style.text_color = colour
            self.bar.value = value
            self.bar.bar_style = style
            self.files_label.value = f"{p.files_transferred}/{p.files_total}"
            self.stats_label.value = stats
            self.error_label.value = error_html
            for method, button in self.buttons.items():
                button.disabled = self._finished or method not in allowed
        self._style = style
        self._snapshot = snap
        self._allowed = allowed

    def _final_render(self, reason: str | None) -> None:
        job = self._job
        if job is not None:
            self._render(JobSnapshot.of(job), frozenset())
        if reason:
            self.message_label.value = f"<i>{escape(reason)}</i>"
        self._job = None

    def _drop_refs(self) -> None:
        self._job = None

    def _on_click(self, method: str) -> None:
        """A button: call the job's method on this (the kernel's) thread; errors go in the panel."""
        job = self._job
        if job is None or not self.live:
            return
        message = ""
        try:
            result = getattr(job, method)()
        except BitsError as exc:
            message = f'<span style="color:{STYLE_COLOUR["danger"]}">{escape(str(exc))}</span>'
        except RuntimeError as exc:  # the manager closed under us
            message = f'<span style="color:{STYLE_COLOUR["danger"]}">{escape(str(exc))}</span>'
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
            snap = JobSnapshot.of(job)
            self._render(snap, job.allowed_calls)
            if message is not None:
                self.message_label.value = message
        if snap.state.is_final:
            self._finish(None)


class QueuePanel(_Panel):
    """A live table of the manager's jobs: one compact row each, a totals line and a filter.

    The rows are one HTML widget, so a tick costs at most two messages however many jobs
    there are. Jobs appear and disappear as the manager creates and forgets them.
    """

    def __init__(
        self, manager: ManagerView, *, pump: Pump | None = None, max_rows: int = 200
    ) -> None:
        title = widgets.HTML(
            f"<b>bitsnb queue</b> <small style='color:#888'>{escape(str(manager.store_path))}</small>"
        )
        filter_dropdown = widgets.Dropdown(
            options=list(FILTERS),
            value="all",
            description="show",
            layout=widgets.Layout(width="14em"),
        )
        table = widgets.HTML()
        totals = widgets.HTML()
        super().__init__(
            children=[
                widgets.HBox(
                    [title, filter_dropdown],
                    layout=widgets.Layout(justify_content="space-between"),
                ),
                table,
                totals,
            ]
        )
        self.filter = filter_dropdown
        self.table = table
        self.totals = totals
        self.max_rows = max_rows
        self._setup(manager, None, pump)
        self._held = [table, totals]
        self._handles: dict[uuid.UUID, JobLike] = {}
        self._snapshots: list[JobSnapshot] = []
        self._seen_bytes: dict[uuid.UUID, int] = {}
        self._moved = 0
        self._rate = RateEstimator()
        self._note = ""
        self._need_enum = True
        subscribed = self._subscribe()
        if subscribed:
            self._enumerate()
        filter_dropdown.observe(self._on_filter, names="value")
        with self._ui_lock:
            self._render()
        if not subscribed:
            self._finish("The manager is closed; this panel no longer updates.")
        else:
            self._pump.add(self)

    # -- reading --------------------------------------------------------------------------------
    @property
    def jobs(self) -> list[JobSnapshot]:
        """Every job the panel knows, as last read."""
        return list(self._snapshots)

    @property
    def rows(self) -> list[JobSnapshot]:
        """The jobs shown under the current filter."""
        states = FILTERS.get(str(self.filter.value))
        return [s for s in self._snapshots if states is None or s.state in states]

    def text(self) -> str:
        """The shown jobs as a rich table (the CLI's renderer), then the totals."""
        return queue_text(self.rows, self._totals_text())

    # -- updating -------------------------------------------------------------------------------
    def _enumerate(self) -> bool:
        """Re-read the list of jobs from the manager; False when that failed."""
        mgr = self._mgr
        if mgr is None:
            return False
        try:
            jobs = list(mgr.enum_jobs())
        except _CALL_ERRORS:
            return False
        self._handles = {j.id: j for j in jobs}
        self._need_enum = False
        return True

    def _tick(self, changes: Changes) -> bool:
        handles = self._handles
        if changes.removed:
            self._handles = handles = {k: v for k, v in handles.items() if k not in changes.removed}
        unknown = any(j not in handles for j in changes.changed - changes.removed)
        if changes.created or unknown or self._need_enum:
            self._need_enum = True
            self._enumerate()  # on failure: try again next tick
        if not changes and not self._need_enum and not self._any_active():
            return True  # idle: nothing to send
        with self._ui_lock:
            if not self.live:
                return False
            self._render()
        return True

    def _any_active(self) -> bool:
        return any(s.state in ACTIVE_STATES for s in self._snapshots)

    def _on_filter(self, change: dict[str, Any]) -> None:
        with self._ui_lock:
            if not self.closed:
                self._render(read=False)

    def _render(self, read: bool = True) -> None:
        """Read every job and rewrite the table and totals (caller holds the UI lock)."""
        if read:
            snaps = [JobSnapshot.of(h) for h in list(self._handles.values())]
            seen = self._seen_bytes
            for s in snaps:
                done = s.progress.bytes_transferred
                self._moved += max(0, done - seen.get(s.id, done))
                seen[s.id] = done
            for job_id in [k for k in seen if k not in self._handles]:
                del seen[job_id]
            self._snapshots = snaps
            if self._any_active():
                self._rate.update(self._moved)
            else:
                self._rate.reset()
        table = self._table_html(self.rows)
        totals = escape(self._totals_text())
        with self._hold():
            self.table.value = table
            self.totals.value = totals

    def _totals_text(self) -> str:
        snaps = self._snapshots
        count = dict.fromkeys(("active", "suspended", "transferred", "error"), 0)
        done = 0
        total: int | None = 0
        for s in snaps:
            for key in count:
                states = FILTERS[key]
                if states is not None and s.state in states:
                    count[key] += 1
            done += s.progress.bytes_transferred
            if total is not None:
                t = s.progress.bytes_total
                total = None if t is None else total + t
        parts = [
            f"{len(snaps)} job{'s' if len(snaps) != 1 else ''}: "
            + ", ".join(f"{n} {key}" for key, n in count.items() if n),
            f"{format_bytes(done)} / {format_bytes(total)}",
        ]
        speed = format_rate(self._rate.rate)
        if speed:
            parts.append(speed)
        shown = len(self.rows)
        if shown != len(snaps):
            parts.append(f"showing {shown} ({self.filter.value})")
        if self._note:
            parts.append(self._note)
        return " · ".join(p.rstrip(": ") for p in parts)

    def _table_html(self, rows: list[JobSnapshot]) -> str:
        css = (
            "<style>.bitsnb-q{border-collapse:collapse;font-size:12px;width:100%}"
            ".bitsnb-q td,.bitsnb-q th{padding:1px 6px;text-align:left;white-space:nowrap}"
            ".bitsnb-q .b{background:#e0e0e0;width:120px;height:8px;border-radius:2px}"
            ".bitsnb-q .f{height:100%;border-radius:2px}</style>"
        )
        if not rows:
            return css + "<i>no jobs</i>"
        out = [
            css,
            '<table class="bitsnb-q"><tr><th>job</th><th>state</th><th>progress</th>'
            "<th>bytes</th><th>files</th></tr>",
        ]
        for s in rows[: self.max_rows]:
            p = s.progress
            colour = STYLE_COLOUR[bar_style(s.state)]
            pct = p.percent
            if pct is None:  # unknown byte total: a striped bar as far as the files done
                files_pct = 100.0 * p.files_transferred / p.files_total if p.files_total else 100.0
                fill = (
                    f"width:{files_pct:.1f}%;background:repeating-linear-gradient(45deg,"
                    f"{colour} 0 4px,#fff 4px 8px)"
                )
            else:
                fill = f"width:{max(0.0, min(100.0, pct)):.1f}%;background:{colour}"
            title = escape(error_text(s.error)) if s.error is not None else ""
            out.append(
                f'<tr title="{title}"><td>{escape(s.display_name)}</td>'
                f'<td style="color:{colour}">{s.state.name}</td>'
                f'<td><div class="b"><div class="f" style="{fill}"></div></div></td>'
                f"<td>{format_bytes(p.bytes_transferred)} / {format_bytes(p.bytes_total)}</td>"
                f"<td>{p.files_transferred}/{p.files_total}</td></tr>"
            )
        if len(rows) > self.max_rows:
            out.append(f"<tr><td colspan=5><i>… and {len(rows) - self.max_rows} more</i></td></tr>")
        out.append("</table>")
        return "".join(out)

    def _final_render(self, reason: str | None) -> None:
        self._note = reason or ""
        self._render()
        self._handles = {}

    def _drop_refs(self) -> None:
        self._handles = {}

    def refresh(self) -> None:
        """Re-read the queue from the manager and redraw now (from this thread)."""
        if not self.live:
            return
        self._enumerate()
        with self._ui_lock:
            if self.live:
                self._render()
