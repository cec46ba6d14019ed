"""Run one tool as a subprocess, bounded in time, and measure it: wall time, CPU and peak RSS.

The tool is started by ``bench/_launch.py``, a small intermediate process that reaps it with
``os.wait4`` and reports its own rusage (user/system CPU, ``ru_maxrss``) and spawn/exit
times: spawned straight from this (large) process, a child's ``ru_maxrss`` would include our
memory. Every run has a timeout after which the whole process group is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProcResult", "run", "timed_sync"]

_LAUNCH = str(Path(__file__).resolve().parent / "_launch.py")


@dataclass
class ProcResult:
    """What one subprocess did: exit status, times (monotonic seconds), CPU, peak RSS, output."""

    argv: list[str]
    returncode: int
    t_spawn: float
    t_exit: float
    user: float
    sys: float
    maxrss_bytes: int
    stdout: str
    stderr: str
    timed_out: bool = False
    killed_by_watch: bool = False
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        """Seconds from spawn to exit."""
        return self.t_exit - self.t_spawn

    @property
    def cpu(self) -> float:
        """User + system CPU seconds of the child (its threads included)."""
        return self.user + self.sys

    @property
    def ok(self) -> bool:
        """Exited 0 on its own."""
        return self.returncode == 0 and not self.timed_out and not self.killed_by_watch

    def describe_failure(self) -> str:
        """A short line saying how the run failed, with the end of its stderr."""
        why = "timed out" if self.timed_out else f"exit status {self.returncode}"
        tail = (self.stderr.strip() or self.stdout.strip())[-600:]
        return f"{self.argv[0]} {why}: {tail}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    watch: Callable[[int], bool] | None = None,
    watch_interval: float = 0.002,
) -> ProcResult:
    """Run *argv* to its end (or *timeout*), reaping it with wait4 for an exact rusage.

    *watch*, if given, is called with the pid every *watch_interval* seconds while the child
    runs; when it returns True the child is killed with SIGKILL (the resume workload uses this).
    """
    with (
        tempfile.TemporaryFile(prefix="bench-out-") as out,
        tempfile.TemporaryFile(prefix="bench-err-") as err,
        tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp,
    ):
        result_path = os.path.join(tmp, "rusage.json")
        t_spawn = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _LAUNCH, result_path, "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
        pid = proc.pid
        reaped = threading.Event()
        lock = threading.Lock()
        timed_out = False
        killed_by_watch = False

        def on_timeout() -> None:
            nonlocal timed_out
            with lock:
                if not reaped.is_set():
                    timed_out = True
                    _kill_group(pid)

        timer = threading.Timer(timeout, on_timeout)
        timer.daemon = True
        timer.start()
        try:
            if watch is None:
                _, status, usage = os.wait4(pid, 0)
            else:
                while True:
                    wpid, status, usage = os.wait4(pid, os.WNOHANG)
                    if wpid == pid:
                        break
                    if watch(pid):
                        killed_by_watch = True
                        _kill_group(pid)
                        _, status, usage = os.wait4(pid, 0)
                        break
                    time.sleep(watch_interval)
            t_exit = time.monotonic()
            with lock:
                reaped.set()
        except BaseException:
            _kill_group(pid)
            with contextlib.suppress(ChildProcessError):
                os.wait4(pid, 0)
            reaped.set()
            raise
        finally:
            timer.cancel()
            proc.returncode = 0  # reaped above: keep Popen from waiting on a recycled pid
        code = os.waitstatus_to_exitcode(status)
        user, sys_, maxrss_kib = usage.ru_utime, usage.ru_stime, usage.ru_maxrss
        try:
            with open(result_path) as fh:
                own = json.load(fh)
        except (OSError, ValueError):
            pass  # the launcher was killed too: keep the launcher's own figures
        else:
            t_spawn, t_exit = float(own["t_spawn"]), float(own["t_exit"])
            user, sys_, maxrss_kib = float(own["user"]), float(own["sys"]), int(own["maxrss_kib"])
        out.seek(0)
        err.seek(0)
        return ProcResult(
            argv=list(argv),
            returncode=code,
            t_spawn=t_spawn,
            t_exit=t_exit,
            user=user,
            sys=sys_,
            maxrss_bytes=maxrss_kib * 1024,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            timed_out=timed_out,
            killed_by_watch=killed_by_watch,
        )


def timed_sync() -> float:
    """Run sync(2) and return how long it took (seconds)."""
    t0 = time.monotonic()
    os.sync()
    return time.monotonic() - t0
