"""``QueuePanel``: the live table of many jobs (totals, filter, sort, actions on a chosen job)."""

from __future__ import annotations

import datetime as _dt
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]

from .._enums import JobState
from .._format import RateEstimator, format_bytes, format_eta, format_rate
from .._protocols import JobControl, JobView, ManagerView
from ._panel_base import BUTTONS, CALL_ERRORS, LABEL, Panel, bar_html, offered
from ._pump import INTERVAL, MIN_GAP, Changes, Pump
from ._snapshot import (
    JobSnapshot,
    bandwidth_mark,
    confirm_text,
)
from ._text import (
    ACTIVE_STATES,
    FILTERS,
    STATE_COLOUR,
    escape,
    queue_text,
    state_counts,
)

BIG_QUEUE = 1000
"""Above this many jobs the queue panel refreshes once a second (state changes after 0.5 s)."""

WORKERS_EVERY = 2.0
"""Seconds between two reads of who holds which job (the worker column): leases move slowly."""


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
    ("worker", "9em"),
    ("created", "8em"),
    ("error", ""),
)


class QueuePanel(Panel):
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
            for method, label, icon in BUTTONS
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
        self._workers: dict[str, str] = {}  # job id → who holds it (PostgreSQL), as last read
        self._workers_due = 0.0
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
        self._read_workers()
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
        except CALL_ERRORS:
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

    def _read_workers(self) -> bool:
        """Who holds which job, read again every ``WORKERS_EVERY`` seconds (one query of a
        PostgreSQL store; nothing on SQLite); True when that changed."""
        now = time.monotonic()
        mgr = self._mgr
        if now < self._workers_due or mgr is None:
            return False
        self._workers_due = now + WORKERS_EVERY
        try:
            workers = mgr.job_workers()
        except CALL_ERRORS:
            return False
        changed = workers != self._workers
        self._workers = workers
        return changed

    @property
    def workers(self) -> dict[str, str]:
        """Who holds which job (job id's text → worker), as last read."""
        return dict(self._workers)

    def _read(self, ids: Iterable[uuid.UUID]) -> None:
        """Read these jobs again (and count the bytes they moved since they were last read)."""
        seen = self._seen_bytes
        for job_id in ids:
            handle = self._handles.get(job_id)
            if handle is None:
                continue
            try:
                s = JobSnapshot.of(handle, detail=handle.state in ACTIVE_STATES)
            except CALL_ERRORS:  # gone meanwhile
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
        # a job that left the queue (final) leaves the queue's panel, but a panel of the
        # caller's own jobs keeps it, in its final state (read once more below)
        kept = changes.removed if self._scope is not None else set()
        if changes.removed and not kept:
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
        moved = self._read_workers()
        active = {k for k, s in self._snaps.items() if s.state in ACTIVE_STATES}
        if not changes and not active and not self._need_enum and not moved:
            return True  # idle: nothing to send
        with self._ui_lock:
            if not self.live:
                return False
            # No re-publishing from here: a front end re-creates the widget's view on every
            # display update (JupyterLab loses the scroll position and the dropdowns), and a
            # queue changes state all the time. The queue's saved text follows after each
            # cell (post_run_cell) and at the end instead.
            self._read(((changes.changed | kept) & set(self._handles)) | active)
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
                allowed = offered(job)
            except CALL_ERRORS:
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
            self.buttons[method].description = LABEL[method]
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
        except CALL_ERRORS as exc:
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
        worker = escape(self._workers.get(str(s.id), ""))
        return (
            f'<tr><td title="{s.id}">{str(s.id)[:8]}</td>'
            f'<td title="{name}">{name}</td>'
            f'<td style="color:{colour};font-weight:bold">{s.state.name}</td>'
            f"<td>{bar_html(est.fraction, colour, height='8px')}</td>"
            f"<td>{est.percent_text}</td>"
            f"<td>{format_bytes(p.bytes_transferred)} / {est.total_text}</td>"
            f"<td>{p.files_transferred}/{p.files_total}</td>"
            f'<td title="{escape(s.bandwidth)}">{speed}{bandwidth_mark(s.bandwidth)}</td>'
            f'<td>{eta}</td><td title="{worker}">{worker}</td><td>{created}</td>'
            f'<td title="{escape(err)}" style="color:{colour}">{escape(err_short)}</td></tr>'
        )

    def _table_html(self, rows: list[JobSnapshot]) -> str:
        css = (
            "<style>.bitsnb-q{border-collapse:collapse;font-size:12px;table-layout:fixed;"
            "width:100%;min-width:81em;line-height:1.5;color:var(--jp-ui-font-color1, #222)}"
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
