"""The BITS job life cycle (spec §2.1): the transition table as data, then every application
call in every reachable state of a live job (real server, real files, real SQLite store)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from _support.helpers import Recorder, folder, store_rows, wait_state, wait_until

import bitsnb
from bitsnb import BitsError, InvalidStateError, JobState, JobType
from bitsnb._states import Event, allowed, allowed_calls, transition
from bitsnb.testing import Fault, FileServer

BG_E_INVALID_STATE = 0x80200002
BG_E_EMPTY = 0x80200003
BG_E_TOO_MANY_FILES = 0x8020001C
BG_S_PARTIAL_COMPLETE = 0x00200017
SIZE = 64 * 1024

Q, C, T, S = JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING, JobState.SUSPENDED
E, TE, TD = JobState.ERROR, JobState.TRANSIENT_ERROR, JobState.TRANSFERRED
ACK, X = JobState.ACKNOWLEDGED, JobState.CANCELLED
NON_FINAL = (Q, C, T, S, E, TE, TD)

# The table of spec §2.1, written out independently of bitsnb._states (download jobs).
EXPECTED: dict[tuple[JobState, Event], JobState] = {
    (S, Event.RESUME): Q,
    (Q, Event.RESUME): Q,
    (C, Event.RESUME): C,
    (T, Event.RESUME): T,
    (E, Event.RESUME): Q,
    (TE, Event.RESUME): Q,
    (TD, Event.RESUME): Q,
    **{(s, Event.SUSPEND): S for s in NON_FINAL},
    **{(s, Event.CANCEL): X for s in NON_FINAL},
    **{(s, Event.COMPLETE): ACK for s in NON_FINAL},
    (Q, Event.START): C,
    (TE, Event.START): C,
    (C, Event.CONNECTED): T,
    (T, Event.CONNECTED): T,
    (C, Event.SLICE_END): Q,
    (T, Event.SLICE_END): Q,
    **{(s, Event.ALL_TRANSFERRED): TD for s in (Q, C, T)},
    **{(s, Event.TRANSIENT_FAILURE): TE for s in (Q, C, T)},
    **{(s, Event.FATAL_FAILURE): E for s in (Q, C, T, TE)},
    (TE, Event.RETRY): Q,
    **{(s, Event.SCAVENGE): X for s in NON_FINAL},
    # taken over from a process that stopped mid-transfer, or stopped here (closing, a run
    # whose end the store refused): back to QUEUED
    (C, Event.TAKE_OVER): Q,
    (T, Event.TAKE_OVER): Q,
    (C, Event.STOP): Q,
    (T, Event.STOP): Q,
    # set_validation_state(file, False): the job goes to ERROR from any live state
    **{(s, Event.INVALIDATED): E for s in NON_FINAL},
}

PAIRS = list(itertools.product(JobState, Event))


# -- the table as data ---------------------------------------------------------------------------
@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s.name}-{e.value}" for s, e in PAIRS])
def test_transition_table_download(state: JobState, event: Event) -> None:
    """Allowed pairs give the table's state; every other pair is BG_E_INVALID_STATE."""
    expected = EXPECTED.get((state, event))
    assert allowed(state, event) is (expected is not None)
    if expected is not None:
        assert transition(state, event) is expected
    else:
        with pytest.raises(InvalidStateError) as info:
            transition(state, event)
        assert isinstance(info.value, BitsError)
        assert info.value.code == BG_E_INVALID_STATE
        assert event.value in str(info.value) and state.name in str(info.value)


@pytest.mark.parametrize("job_type", [JobType.UPLOAD, JobType.UPLOAD_REPLY])
@pytest.mark.parametrize("state", list(JobState), ids=lambda s: s.name)
def test_upload_complete_only_when_transferred(state: JobState, job_type: JobType) -> None:
    """Upload jobs may only be completed in TRANSFERRED; other calls follow the download table."""
    if state is TD:
        assert transition(state, Event.COMPLETE, job_type) is ACK
    else:
        with pytest.raises(InvalidStateError):
            transition(state, Event.COMPLETE, job_type)
    for event in (Event.RESUME, Event.SUSPEND, Event.CANCEL):
        assert allowed(state, event, job_type) is ((state, event) in EXPECTED)


@pytest.mark.parametrize("state", list(JobState), ids=lambda s: s.name)
def test_allowed_calls_function(state: JobState) -> None:
    """allowed_calls names exactly the application calls the table allows."""
    calls = {e.value for e in (Event.SUSPEND, Event.RESUME, Event.CANCEL, Event.COMPLETE)}
    want = {c for c in calls if (state, Event(c)) in EXPECTED}
    assert allowed_calls(state) == frozenset(want)
    upload = allowed_calls(state, JobType.UPLOAD)
    assert ("complete" in upload) is (state is TD)


def test_final_states_are_final() -> None:
    """A job never leaves ACKNOWLEDGED or CANCELLED."""
    for state, event in itertools.product((ACK, X), Event):
        assert not allowed(state, event)
    assert ACK.is_final and X.is_final
    assert {s for s in JobState if s.is_active} == {Q, C, T, TE}


# -- live jobs -----------------------------------------------------------------------------------
@pytest.fixture
def policy(policy: bitsnb.Policy) -> bitsnb.Policy:
    """One transfer at a time, so a second job can be held in QUEUED."""
    policy.max_active_jobs = 1
    return policy


def reach(state: JobState, mgr: bitsnb.Manager, server: FileServer, dest: Path) -> bitsnb.Job:
    """A live download job in *state* (transfers held by server faults where needed)."""
    name = f"{state.name.lower()}.bin"
    url = server.add_random_file(name, SIZE, seed=int(state))
    job = mgr.create_job(f"job in {state.name}")
    job.minimum_retry_delay = 60  # a transient error stays transient during the test
    local = dest / name
    if state is S:
        job.add_file(url, local)
    elif state is Q:
        blocker = mgr.create_job("blocker")
        server.inject("blocker.bin", Fault.stall(30))
        blocker.add_file(server.add_random_file("blocker.bin", SIZE), dest / "blocker.bin")
        blocker.resume()
        wait_state(blocker, C)
        job.add_file(url, local)
        job.resume()
    elif state is C:
        server.inject(name, Fault.stall(30))
        job.add_file(url, local)
        job.resume()
    elif state is T:
        server.inject(name, Fault.stall_after(SIZE // 4, 30))
        job.add_file(url, local)
        job.resume()
        wait_until(lambda: job.progress.bytes_transferred > 0, message="bytes flowing")
    elif state is TE:
        server.inject(name, Fault.status(503))
        job.add_file(url, local)
        job.resume()
    elif state is E:
        job.add_file(server.url("no-such-file.bin"), local)
        job.resume()
    elif state in (TD, ACK):
        job.add_file(url, local)
        job.resume()
        assert job.wait(timeout=15) is TD
        if state is ACK:
            assert job.complete() == 0
    elif state is X:
        job.add_file(url, local)
        job.cancel()
    wait_state(job, state)
    return job


LIVE_STATES = [S, Q, C, T, TE, E, TD, ACK, X]
CALLS = ["suspend", "resume", "cancel", "complete"]


def expected_after(state: JobState, call: str) -> JobState | None:
    """The state a live download job is in right after *call* (None: BG_E_INVALID_STATE)."""
    if state.is_final:
        return None
    if call == "resume" and state is TD:
        return TD  # nothing new to transfer: resume leaves a TRANSFERRED job alone
    return EXPECTED[(state, Event(call))]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("state", LIVE_STATES, ids=lambda s: s.name)
def test_call_in_live_state(
    state: JobState,
    call: str,
    manager: bitsnb.Manager,
    server: FileServer,
    dest: Path,
    store: Path,
) -> None:
    """Allowed calls move the job as the table says; invalid ones raise and change nothing."""
    job = reach(state, manager, server, dest)
    assert job.state is state
    want = expected_after(state, call)
    # valid calls as BITS answers them, no-ops included (suspend on SUSPENDED, resume on a
    # running job): the panel offers only the ones that change something
    assert (call in job.allowed_calls) is (want is not None)
    rec = Recorder(manager)
    before_rows = store_rows(store, job.id)
    before_disk = folder(dest)
    method: Callable[[], object] = getattr(job, call)
    if want is None:
        with pytest.raises(InvalidStateError) as info:
            method()
        assert info.value.code == BG_E_INVALID_STATE
        assert state.name in str(info.value)
        assert job.state is state
        assert store_rows(store, job.id) == before_rows
        assert folder(dest) == before_disk
        return
    result = method()
    if want is state:
        # no move (resume while active, suspend while suspended): nothing is written
        assert rec.states(job.id) == []
        assert job.state is state
        if state in (S, TD):
            assert store_rows(store, job.id) == before_rows
        return
    wait_until(lambda: len(rec.states(job.id)) > 0, message="a state event")
    assert rec.states(job.id)[0] is want
    if call == "complete":
        files_done = sum(f.transferred for f in job.files)
        assert result == (0 if files_done == len(job.files) else BG_S_PARTIAL_COMPLETE)
        assert job.state is ACK
    if call == "cancel":
        assert result == 0
        assert job.state is X
    if call == "suspend":
        assert job.state is S
        assert store_rows(store, job.id)[0]["state"] == int(S)


def test_resume_after_error_retries(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """ERROR → resume() → QUEUED → ... → TRANSFERRED once the cause is fixed."""
    job = manager.create_job("fix me")
    job.add_file(server.url("later.bin"), dest / "later.bin")
    job.resume()
    assert job.wait(timeout=15) is E
    data = b"now it exists\n"
    server.add_file("later.bin", data)
    rec = Recorder(manager)
    job.resume()
    assert job.wait(timeout=15) is TD
    assert rec.states(job.id)[0] is Q
    assert job.complete() == 0
    assert (dest / "later.bin").read_bytes() == data


def test_resume_transferred_job_with_new_file(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """TRANSFERRED + add_file + resume → QUEUED → TRANSFERRED with the new file too."""
    job = reach(TD, manager, server, dest)
    extra = server.add_random_file("extra.bin", SIZE, seed=99)
    job.add_file(extra, dest / "extra.bin")
    rec = Recorder(manager)
    job.resume()
    assert job.wait(timeout=15) is TD
    assert rec.states(job.id)[0] is Q
    assert job.progress.files_transferred == 2
    assert job.complete() == 0
    assert (dest / "extra.bin").read_bytes() == server.path("extra.bin").read_bytes()


def test_suspend_on_suspended_is_noop(
    manager: bitsnb.Manager, server: FileServer, dest: Path, store: Path
) -> None:
    """Suspending a SUSPENDED job succeeds and writes nothing (same version, same times)."""
    job = reach(S, manager, server, dest)
    before = store_rows(store, job.id)
    times = job.times
    job.suspend()
    job.suspend()
    assert job.state is S
    assert store_rows(store, job.id) == before
    assert job.times == times


def test_resume_empty_job(manager: bitsnb.Manager, store: Path) -> None:
    """resume() without files: BG_E_EMPTY, the job stays SUSPENDED, nothing is written."""
    job = manager.create_job("empty")
    before = store_rows(store, job.id)
    assert "resume" not in job.allowed_calls
    with pytest.raises(BitsError) as info:
        job.resume()
    assert info.value.code == BG_E_EMPTY
    assert "no files" in str(info.value)
    assert job.state is S
    assert store_rows(store, job.id) == before


def test_calls_on_final_job_setters_too(
    manager: bitsnb.Manager, server: FileServer, dest: Path
) -> None:
    """Setters and add_file are BG_E_INVALID_STATE once the job is final."""
    job = reach(ACK, manager, server, dest)
    actions: list[Callable[[], object]] = [
        lambda: job.add_file(server.url("x.bin"), dest / "x.bin"),
        lambda: setattr(job, "display_name", "renamed"),
        lambda: setattr(job, "description", "text"),
        lambda: setattr(job, "priority", bitsnb.JobPriority.HIGH),
        lambda: setattr(job, "minimum_retry_delay", 10),
    ]
    for action in actions:
        with pytest.raises(InvalidStateError):
            action()
    assert job.display_name == "job in ACKNOWLEDGED"
    assert job.allowed_calls == frozenset()


@pytest.mark.parametrize("job_type", [JobType.UPLOAD, JobType.UPLOAD_REPLY])
def test_upload_job_rules(
    job_type: JobType, manager: bitsnb.Manager, dest: Path, store: Path, server: FileServer
) -> None:
    """Upload jobs: one file only (BG_E_TOO_MANY_FILES, none added) and complete is
    BG_E_INVALID_STATE outside TRANSFERRED."""
    source = dest / "up.bin"
    source.write_bytes(b"payload")
    job = manager.create_job("upload", job_type)
    assert job.type is job_type
    with pytest.raises(BitsError) as info:
        job.add_file_set([(server.url("a"), source), (server.url("b"), dest / "up2.bin")])
    assert info.value.code == BG_E_TOO_MANY_FILES
    assert job.files == []
    job.add_file(server.url("upload-target"), source)
    with pytest.raises(BitsError) as info:
        job.add_file(server.url("second"), dest / "second.bin")
    assert info.value.code == BG_E_TOO_MANY_FILES
    assert "one file" in str(info.value)
    assert len(job.files) == 1
    assert "complete" not in job.allowed_calls
    before = store_rows(store, job.id)
    with pytest.raises(InvalidStateError):
        job.complete()
    assert job.state is S
    assert store_rows(store, job.id) == before
    assert job.cancel() == 0
    assert job.state is X
    assert source.read_bytes() == b"payload"


@pytest.mark.parametrize("job_type", [JobType.UPLOAD, JobType.UPLOAD_REPLY])
def test_upload_complete_in_transferred(
    job_type: JobType, manager: bitsnb.Manager, dest: Path, tmp_path: Path
) -> None:
    """A live upload job: complete() is refused until TRANSFERRED, then allowed (→ ACKNOWLEDGED)."""
    from bitsnb.testing import UploadServer

    source = dest / "up.bin"
    source.write_bytes(bytes(range(256)) * 300)
    with UploadServer(tmp_path / "upload-root") as srv:
        job = manager.create_job("upload", job_type)
        job.add_file(srv.url("in/up.bin"), source)
        with pytest.raises(InvalidStateError):
            job.complete()
        job.resume()
        assert job.wait(timeout=15) is TD
        assert "complete" in job.allowed_calls
        assert job.complete() == 0
        assert job.state is ACK
        assert srv.path("in/up.bin").read_bytes() == source.read_bytes()


def test_a_job_suspended_before_its_run_began_runs_again_on_resume(
    store: Path, policy: bitsnb.Policy, server: FileServer, dest: Path
) -> None:
    """Suspend lands between resume() starting the job's task and that task's first step (a
    retry that fired just before a click: one CI run's job stayed QUEUED for two minutes): the
    cancelled task never ran its own clean-up, so the job still held its scheduler slot and the
    next resume() queued nothing. Resumed again, it transfers."""
    import asyncio

    url = server.add_random_file("early.bin", SIZE, seed=41)

    async def main() -> JobState:
        async with bitsnb.AsyncManager(store=store, policy=policy) as amgr:
            job = await amgr.create_job("early")
            await job.add_file(url, dest / "early.bin")
            await job.resume()  # the job's task is created here, not yet run
            await job.suspend()
            assert job.state is S
            await job.resume()
            state = await job.wait(timeout=30)
            if state is TD:
                await job.complete()
            return state

    assert asyncio.run(main()) is TD
    assert (dest / "early.bin").read_bytes() == server.path("early.bin").read_bytes()
