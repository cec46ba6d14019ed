"""The BITS job life cycle as one table (spec §2.1). Pure data and lookups; no IO.

``transition(state, event)`` gives the next state or raises ``InvalidStateError``; the manager
calls it for every change, so a call that is not allowed changes nothing.
"""

from __future__ import annotations

import enum

from ._enums import JobState, JobType
from ._errors import InvalidStateError

__all__ = ["Event", "allowed", "allowed_calls", "transition", "useful_calls"]


class Event(enum.Enum):
    """What can happen to a job: application calls first, then the scheduler's events."""

    RESUME = "resume"  # application: resume()
    SUSPEND = "suspend"  # application: suspend()
    CANCEL = "cancel"  # application: cancel()
    COMPLETE = "complete"  # application: complete()
    START = "start"  # scheduler: the job gets its turn
    CONNECTED = "connected"  # engine: the server answered
    SLICE_END = "slice_end"  # scheduler: time slice over or pre-empted, job not finished
    ALL_TRANSFERRED = "all_transferred"  # engine: every file is on disk
    TRANSIENT_FAILURE = "transient_failure"  # engine: recoverable error
    FATAL_FAILURE = "fatal_failure"  # engine: fatal error, or retries exhausted
    RETRY = "retry"  # scheduler: retry delay elapsed
    SCAVENGE = "scavenge"  # housekeeping: inactive longer than the job lifetime
    TAKE_OVER = "take_over"  # scheduler: a job another process stopped mid-transfer, queued here
    STOP = "stop"  # manager: closing, or a run that ended without recording its end: re-queued
    INVALIDATED = "invalidated"  # application: set_validation_state(file, False) → ERROR


Q, C, T, S = JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING, JobState.SUSPENDED
E, TE, TD = JobState.ERROR, JobState.TRANSIENT_ERROR, JobState.TRANSFERRED
ACK, X = JobState.ACKNOWLEDGED, JobState.CANCELLED
_NON_FINAL = (Q, C, T, S, E, TE, TD)

_TABLE: dict[tuple[JobState, Event], JobState] = {
    # application calls
    (S, Event.RESUME): Q,
    (Q, Event.RESUME): Q,  # already in an action state: stays
    (C, Event.RESUME): C,
    (T, Event.RESUME): T,
    (E, Event.RESUME): Q,  # retry now
    (TE, Event.RESUME): Q,  # retry now
    (TD, Event.RESUME): Q,  # only reaches the wire if files were added after TRANSFERRED
    **{(s, Event.SUSPEND): S for s in _NON_FINAL},
    **{(s, Event.CANCEL): X for s in _NON_FINAL},
    **{(s, Event.COMPLETE): ACK for s in _NON_FINAL},  # downloads; uploads: see _UPLOAD_COMPLETE
    # scheduler and engine
    (Q, Event.START): C,
    (TE, Event.START): C,
    (C, Event.CONNECTED): T,
    (T, Event.CONNECTED): T,
    (C, Event.SLICE_END): Q,
    (T, Event.SLICE_END): Q,
    (Q, Event.ALL_TRANSFERRED): TD,
    (C, Event.ALL_TRANSFERRED): TD,
    (T, Event.ALL_TRANSFERRED): TD,
    (Q, Event.TRANSIENT_FAILURE): TE,
    (C, Event.TRANSIENT_FAILURE): TE,
    (T, Event.TRANSIENT_FAILURE): TE,
    (Q, Event.FATAL_FAILURE): E,
    (C, Event.FATAL_FAILURE): E,
    (T, Event.FATAL_FAILURE): E,
    (TE, Event.FATAL_FAILURE): E,
    (TE, Event.RETRY): Q,
    **{(s, Event.SCAVENGE): X for s in _NON_FINAL},
    (C, Event.TAKE_OVER): Q,
    (T, Event.TAKE_OVER): Q,
    (C, Event.STOP): Q,
    (T, Event.STOP): Q,
    **{(s, Event.INVALIDATED): E for s in _NON_FINAL},
}

_UPLOAD_COMPLETE = {TD}  # upload jobs may only be completed once TRANSFERRED


def allowed(state: JobState, event: Event, job_type: JobType = JobType.DOWNLOAD) -> bool:
    """True when *event* may happen in *state*."""
    if event is Event.COMPLETE and job_type is not JobType.DOWNLOAD:
        return state in _UPLOAD_COMPLETE
    return (state, event) in _TABLE


def transition(state: JobState, event: Event, job_type: JobType = JobType.DOWNLOAD) -> JobState:
    """The state after *event*; ``InvalidStateError`` when the table has no such move."""
    if not allowed(state, event, job_type):
        raise InvalidStateError(f"{event.value}() is not allowed while the job is {state.name}")
    return _TABLE[(state, event)]


_CALLS = (Event.SUSPEND, Event.RESUME, Event.CANCEL, Event.COMPLETE)


def allowed_calls(state: JobState, job_type: JobType = JobType.DOWNLOAD) -> frozenset[str]:
    """Names of the application calls (suspend/resume/cancel/complete) valid in *state*."""
    return frozenset(e.value for e in _CALLS if allowed(state, e, job_type))


_NO_OPS = {
    Event.SUSPEND: frozenset({JobState.SUSPENDED}),
    Event.RESUME: frozenset({JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING}),
}


def useful_calls(state: JobState, job_type: JobType = JobType.DOWNLOAD) -> frozenset[str]:
    """The valid calls that change something in *state* (what a panel offers as buttons):
    ``allowed_calls`` without the no-ops (suspend when SUSPENDED, resume while running)."""
    return frozenset(
        e.value
        for e in _CALLS
        if allowed(state, e, job_type) and state not in _NO_OPS.get(e, frozenset())
    )
