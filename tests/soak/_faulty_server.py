"""Seeded fault plans on top of ``bitsnb.testing.FileServer`` (no new server: its faults suffice).

Every served file gets a short list of faults drawn from a seeded RNG and injected for that exact
name with ``times=1``; FileServer consumes a name's faults in order, one per request. The plan
keeps a label per fault (``503+Retry-After`` vs ``503``), so the report can count the faults that
really hit, by kind, from the server's request log.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import Counter
from dataclasses import dataclass, field

from bitsnb.testing import Fault, FileServer

# label -> weight. Every kind here is transient for the client (or harmless): the fatal
# ``ignore_range`` is only planned for the files of jobs marked "by design" (see plan_file).
FAULT_WEIGHTS: dict[str, int] = {
    "reset mid-body": 24,
    "500": 8,
    "500+Retry-After": 3,
    "503": 8,
    "503+Retry-After": 7,
    "stall before headers": 7,
    "stall mid-body": 5,
    "close before headers": 12,
    "wrong Content-Length": 8,
    "content changed (new ETag)": 10,
}
NO_RANGE_LABEL = "ignore Range"
READ_TIMEOUT = 2.0  # the workers' read timeout: longer stalls become transient timeouts


@dataclass
class PlannedFile:
    """One served file: its name, size and the faults planned for its requests, in order."""

    name: str
    size: int
    faults: list[tuple[str, Fault]] = field(default_factory=list)


def _fault(label: str, size: int, rng: random.Random) -> Fault:
    """The FileServer fault behind *label*, sized for a file of *size* bytes."""
    cut = rng.randrange(max(1, size))
    stall = rng.uniform(0.2, READ_TIMEOUT + 0.8)
    if label == "reset mid-body":
        return Fault.drop_after(cut)
    if label in ("500", "503"):
        return Fault.status(int(label))
    if label in ("500+Retry-After", "503+Retry-After"):
        return Fault.status(int(label[:3]), retry_after=1)
    if label == "stall before headers":
        return Fault.stall(stall)
    if label == "stall mid-body":
        return Fault.stall_after(cut, stall)
    if label == "close before headers":
        return Fault.close_before_headers()
    if label == "wrong Content-Length":
        # more than is sent: the client sees a short body and resumes. (Fewer than is sent
        # cannot be detected by any HTTP client: it is a server lie, not a fault to soak.)
        return Fault.wrong_length(rng.randint(1, 4096))
    if label == "content changed (new ETag)":
        return Fault.change_before()
    if label == NO_RANGE_LABEL:
        return Fault.ignore_range()
    raise ValueError(label)


class FaultyFiles:
    """Adds files to a FileServer with seeded fault plans and counts the faults that hit."""

    def __init__(self, server: FileServer) -> None:
        self.server = server
        self.files: dict[str, PlannedFile] = {}

    def add(self, name: str, size: int, rng: random.Random, *, no_range: bool = False) -> str:
        """Serve *name* (random content) with 0-3 planned faults; returns its URL.

        ``no_range``: the second request (a resume after a reset mid-body) is answered with the
        whole file, which BITS treats as fatal (BG_E_INSUFFICIENT_RANGE_SUPPORT).
        """
        url = self.server.add_random_file(name, size, seed=rng.randrange(1 << 31))
        plan = PlannedFile(name, size)
        if no_range:
            plan.faults.append(("reset mid-body", Fault.drop_after(max(1, size // 2))))
            plan.faults.append((NO_RANGE_LABEL, _fault(NO_RANGE_LABEL, size, rng)))
        else:
            count = rng.choices((0, 1, 2, 3), weights=(35, 30, 22, 13))[0]
            labels = rng.choices(list(FAULT_WEIGHTS), weights=list(FAULT_WEIGHTS.values()), k=count)
            plan.faults.extend((label, _fault(label, size, rng)) for label in labels)
        for _, fault in plan.faults:
            self.server.inject(name, fault)
        self.files[name] = plan
        return url

    def hits(self) -> Counter[str]:
        """Faults that hit a logged request, by label (matched to the file's plan in order)."""
        seen: dict[str, int] = {}
        counts: Counter[str] = Counter()
        for rec in self.server.requests:
            if rec.fault is None:
                continue
            plan = self.files.get(rec.path)
            i = seen.get(rec.path, 0)
            seen[rec.path] = i + 1
            label = str(rec.fault)
            if plan is not None and i < len(plan.faults):
                planned_label, planned = plan.faults[i]
                if planned.kind == rec.fault:
                    label = planned_label
            if rec.fault == "ignore_range" and rec.range is None:
                label = f"{NO_RANGE_LABEL} (no Range asked: no effect)"
            counts[label] += 1
        return counts

    def range_refused(self) -> set[str]:
        """Names whose Range request was answered with the whole file (the by-design fatal)."""
        return {
            rec.path
            for rec in self.server.requests
            if rec.fault == "ignore_range" and rec.range is not None
        }

    def forget(self) -> None:
        """Stop serving every planned file and clear the request log (between soak rounds)."""
        for name in self.files:
            with contextlib.suppress(OSError):
                os.unlink(self.server.path(name))
        self.files.clear()
        self.server.clear_faults()
        self.server.reset_log()
