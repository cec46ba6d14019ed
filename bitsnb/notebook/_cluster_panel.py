"""``ClusterPanel``: the workers of a shared PostgreSQL queue, live (what each holds, its rate,
its errors, and the totals), read from the store itself, so it works from any kernel that
reaches the database (no Dask client needed)."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import ipywidgets as widgets  # type: ignore[import-untyped]

from .._cluster import ActivityRates, WorkerActivity
from .._format import format_rate
from ._panel_base import CALL_ERRORS, widget_tree
from ._pump import Pump, default_pump
from ._text import escape

__all__ = ["ClusterPanel", "ClusterSource"]

_COLUMNS = ("worker", "host", "jobs", "files", "speed", "errors")


class ClusterSource(Protocol):
    """What the panel reads of a store (``PgStore``): who holds what, errors by writer."""

    def activity(self) -> dict[str, tuple[int, int, int]]: ...
    def errors_by_writer(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class ClusterPanel(widgets.VBox):  # type: ignore[misc]
    """Totals on top (workers, jobs and files held, the cluster's rate, jobs in error), then
    one row per worker; read again every *interval* seconds on the panels' pump thread.
    ``close()`` stops it (and closes the store when the panel opened it, *owns_store*)."""

    def __init__(
        self,
        source: ClusterSource,
        *,
        interval: float = 1.0,
        pump: Pump | None = None,
        owns_store: bool = False,
    ) -> None:
        self.totals = widgets.HTML()
        self.table = widgets.HTML()
        super().__init__([self.totals, self.table])
        self._source: ClusterSource | None = source
        self._owns = owns_store
        self._interval = interval
        self._pump = pump if pump is not None else default_pump()
        self._lock = threading.RLock()
        self._rates = ActivityRates()
        self._rows: list[WorkerActivity] = []
        self._note = ""
        self._next = 0.0
        self.reads = 0
        self.refresh()
        self._pump.add(self)

    @property
    def rows(self) -> list[WorkerActivity]:
        """The workers as last read."""
        return list(self._rows)

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._source is None

    def refresh(self) -> None:
        """Read the store now and redraw."""
        with self._lock:
            source = self._source
            if source is None:
                return
            try:
                readings = source.activity()
                errors = source.errors_by_writer()
            except CALL_ERRORS as exc:  # the store is busy or away: keep the last rows
                self._note = f"store not answering ({exc})"
            else:
                self._rows = self._rates.update(readings, errors)
                self._note = ""
            self.reads += 1
            with self.totals.hold_sync(), self.table.hold_sync():
                self.totals.value = f"<b>{escape(self._totals_text())}</b>"
                self.table.value = self._table_html()

    # -- pump side ----------------------------------------------------------------------------
    def pump_due(self, now: float) -> float:
        """When the next read is due (monotonic)."""
        return self._next

    def pump_tick(self, now: float) -> bool:
        """Read and redraw; False once closed."""
        if self.closed:
            return False
        self._next = now + self._interval
        self.refresh()
        return not self.closed

    # -- views --------------------------------------------------------------------------------
    def _totals_text(self) -> str:
        rows = self._rows
        busy = [r for r in rows if r.jobs or r.files]
        parts = [
            f"{len(busy)} worker{'s' if len(busy) != 1 else ''} holding work",
            f"{sum(r.jobs for r in rows)} jobs",
            f"{sum(r.files for r in rows)} files held",
            format_rate(sum(r.bytes_per_second for r in rows)),
        ]
        errors = sum(r.errors for r in rows)
        if errors:
            parts.append(f"{errors} in error")
        if self._note:
            parts.append(self._note)
        return " · ".join(parts)

    def _table_html(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in _COLUMNS)
        body = (
            "".join(
                f'<tr><td title="{escape(r.worker)}">{escape(r.worker)}</td>'
                f"<td>{escape(r.host)}</td><td>{r.jobs}</td><td>{r.files}</td>"
                f"<td>{format_rate(r.bytes_per_second)}</td><td>{r.errors}</td></tr>"
                for r in self._rows
            )
            or f'<tr><td colspan="{len(_COLUMNS)}"><i>no worker holds anything</i></td></tr>'
        )
        return (
            '<table class="bitsnb-cluster" style="border-collapse:collapse;font-size:12px">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def text(self) -> str:
        """The totals, then one line per worker."""
        lines = [self._totals_text()]
        lines += [
            f"{r.worker}  {r.jobs} jobs  {r.files} files  {format_rate(r.bytes_per_second)}"
            f"  {r.errors} errors"
            for r in self._rows
        ]
        return "\n".join(lines)

    def html(self) -> str:
        """Totals and table as static HTML."""
        return f"<div><b>{escape(self._totals_text())}</b></div>{self._table_html()}"

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        data = super()._repr_mimebundle_(**kwargs)
        if isinstance(data, dict):
            data["text/plain"] = self.text()
            data["text/html"] = self.html()
        return data

    def close(self) -> None:
        """Stop reading, close the widgets (and the store, if the panel opened it)."""
        with self._lock:
            source, self._source = self._source, None
        self._pump.discard(self)
        if source is not None and self._owns:
            source.close()
        for w in list(widget_tree(self))[1:]:
            w.close()
        super().close()
