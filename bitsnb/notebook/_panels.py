"""The panels' names in one place: what ``bitsnb.notebook`` loads lazily (widgets are heavy).

``JobPanel`` (one job, with buttons) is in ``_job_panel``, ``QueuePanel`` (many jobs) in
``_queue_panel``, the workers of a shared queue (``ClusterPanel``) in ``_cluster_panel``, what
the job and queue panels share (and ``show``) in ``_panel_base``, ``JobSnapshot`` and its texts
in ``_snapshot``.
"""

from __future__ import annotations

from ._cluster_panel import ClusterPanel
from ._job_panel import JobPanel
from ._panel_base import show, widget_tree
from ._queue_panel import QueuePanel
from ._snapshot import JobSnapshot, bandwidth_text, confirm_text

__all__ = [
    "ClusterPanel",
    "JobPanel",
    "JobSnapshot",
    "QueuePanel",
    "bandwidth_text",
    "confirm_text",
    "show",
    "widget_tree",
]
