"""``JobPanel``: the live widget for one job (progress, speed, ETA, error, buttons)."""

from __future__ import annotations

import ipywidgets as widgets  # type: ignore[import-untyped]

from .._codes import BG_S_PARTIAL_COMPLETE, S_OK
from .._enums import JobState
from .._errors import BitsError
from .._format import RateEstimator, format_eta, format_rate
from .._protocols import JobControl
from ._panel_base import BUTTONS, LABEL, Panel, bar_html, offered
from ._pump import Changes, Pump
from ._snapshot import (
    JobSnapshot,
    confirm_text,
    folder_text,
    verified_text,
)
from ._text import (
    ACTIVE_STATES,
    STATE_COLOUR,
    Estimate,
    bar_style,
    elapsed_text,
    escape,
    estimate,
    files_text,
    finished_text,
    job_line,
    progress_text,
)

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


class JobPanel(Panel):
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
            for method, label, icon in BUTTONS
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
            self._render(self._snapshot, offered(job))
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
            return verified_text(snap)
        limit = f"({snap.bandwidth})" if snap.bandwidth else ""
        eta = f"ETA {self._eta}" if self._eta else ""
        return " ".join(x for x in (self._speed, eta, limit) if x)

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
            f"{bar_html(est.fraction, colour)}{err_html}{note}{stale}</div>"
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
            self._render(snap, offered(job))
        if snap.state.is_final:
            self._finish(None)
            return False
        return True

    def _stats_text(self, snap: JobSnapshot, est: Estimate) -> str:
        state, p = snap.state, snap.progress
        if state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED):
            took = finished_text(p, snap.times)
            text = f"{est.percent_text}  {took}" if took else progress_text(p, est)
            return f"{text}  {verified_text(snap)}".rstrip()
        parts = [progress_text(p, est)]
        if state in ACTIVE_STATES:
            elapsed = elapsed_text(snap.times)
            parts.append(f"{elapsed}<{self._eta or '?'}" if elapsed else "")
        parts.append(self._speed)
        parts.append(f"({snap.bandwidth})" if snap.bandwidth else "")
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
        if rate and snap.connections > 1:
            self._speed += f" on {snap.connections} connections"
        self._eta = format_eta(self._rate.eta(remaining)) if rate else ""
        self._snapshot = snap
        self._stats = stats = self._stats_text(snap, est)
        error = snap.error_line()
        if self._armed is None:
            self._note = ""
            if state is JobState.TRANSFERRED and "complete" in allowed:
                self._note = (
                    f"Completing: moving the {files_text(p)} into {folder_text(snap.folder)}"
                    if self.completes
                    else f"Transferred. Complete moves the {files_text(p)} into "
                    f"{folder_text(snap.folder)} (until then they are hidden temporary files)."
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
            button.description = "" if self.compact else LABEL[method]
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
            self._render(snap, offered(job))
            if message:
                self._click_html = message  # a state change in this render cleared it
                self._show_message()
        if snap.state.is_final:
            self._finish(None)
