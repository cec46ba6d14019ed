"""The ``bitsnb`` command line's argument values: types, options, job lookup and file lists."""

from __future__ import annotations

import argparse
import contextlib
import csv
import enum
import getpass
import os
import re
import stat
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

from ._bandwidth import parse_rate
from ._cli_output import Output, safe_text
from ._cli_render import short_id
from ._codes import E_INVALIDARG, from_user, hresult_from_errno, http_error
from ._enums import JobPriority, JobState, JobType, NotifyFlags, ProxyUsage
from ._errors import BitsError, JobNotFoundError, all_errors
from ._manager import default_store_path
from ._models import Policy
from ._planning import local_path, make_folder, plan_downloads
from ._sync import Job, Manager

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_HEXISH = re.compile(r"^[0-9a-fA-F-]+$")
Handler = Callable[[argparse.Namespace, Output], int]
_E = TypeVar("_E", bound=enum.Enum)


# -- argument types ---------------------------------------------------------------------------
def parse_priority(text: str) -> JobPriority:
    """``foreground``/``high``/``normal``/``low`` (any case) or 0-3."""
    value = text.strip().upper()
    if value.isdigit() and int(value) in {p.value for p in JobPriority}:
        return JobPriority(int(value))
    try:
        return JobPriority[value]
    except KeyError:
        names = ", ".join(p.name.lower() for p in JobPriority)
        raise argparse.ArgumentTypeError(f"{text!r} is not a priority ({names})") from None


def parse_code(text: str) -> int:
    """An HRESULT as hex (``0x80190194``), decimal (signed or not) or a name (``BG_E_NOT_FOUND``);
    a bare HTTP status (``404``) means that status's ``BG_E_HTTP_ERROR_nnn``."""
    value = text.strip()
    number: int | None = None
    with contextlib.suppress(ValueError):
        number = int(value, 0)
    if number is None:
        with contextlib.suppress(ValueError):
            number = int(value, 10)  # "010": int(x, 0) refuses leading zeros
    if number is None and re.fullmatch(r"[0-9a-fA-F]{8}", value):
        number = int(value, 16)  # bare hex as Windows prints it: 80190194
    if number is not None:
        if not -(2**31) <= number <= 0xFFFFFFFF:
            raise argparse.ArgumentTypeError(f"{text!r} does not fit in 32 bits")
        return from_user(number)
    upper = value.upper()
    match = re.fullmatch(r"BG_E_HTTP_ERROR_(\d{3})", upper)
    if match:
        return http_error(int(match.group(1)))
    for row in all_errors():
        if row.name == upper:
            return row.code
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a number (0x80190194, 2149122452) nor a known error name"
    )


def parse_seconds(text: str) -> float:
    """A non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more seconds")
    return value


def parse_proxy_usage(text: str) -> ProxyUsage:
    """``preconfig``, ``no_proxy`` (or ``no-proxy``), ``override`` or ``autodetect``."""
    try:
        return ProxyUsage[text.strip().upper().replace("-", "_")]
    except KeyError:
        names = ", ".join(u.name.lower() for u in ProxyUsage)
        raise argparse.ArgumentTypeError(f"{text!r} is not a proxy usage ({names})") from None


def parse_states(text: str) -> frozenset[JobState]:
    """Comma-separated state names (``queued,transferring``)."""
    states: set[JobState] = set()
    for part in text.split(","):
        name = part.strip().upper().replace("-", "_")
        if not name:
            continue
        try:
            states.add(JobState[name])
        except KeyError:
            names = ", ".join(s.name.lower() for s in JobState)
            raise argparse.ArgumentTypeError(f"{part!r} is not a job state ({names})") from None
    return frozenset(states)


def enum_arg(kind: type[_E]) -> Callable[[str], _E]:
    """An enum member by name (any case, ``-`` for ``_``) or number."""

    def parse(text: str) -> _E:
        value = text.strip().upper().replace("-", "_")
        try:
            return kind(int(value)) if value.isdigit() else kind[value]
        except (KeyError, ValueError):
            names = ", ".join(m.name.lower() for m in kind)
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {names}") from None

    return parse


def parse_notify_flags(text: str) -> NotifyFlags:
    """A number (``0x3``, ``3``) or names joined by ``,`` or ``|``: ``job_transferred,job_error``."""
    value = text.strip()
    with contextlib.suppress(ValueError):
        number = int(value, 0)
        if 0 <= number <= sum(NotifyFlags):
            return NotifyFlags(number)
        raise argparse.ArgumentTypeError(f"{text!r} has bits no notify flag uses")
    flags = NotifyFlags(0)
    for part in re.split(r"[,|]", value):
        name = part.strip().upper().replace("-", "_")
        if not name:
            continue
        try:
            flags |= NotifyFlags[name]
        except KeyError:
            names = ", ".join(f.name.lower() for f in NotifyFlags if f.name)
            raise argparse.ArgumentTypeError(f"{part!r} is not a notify flag ({names})") from None
    return flags


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


# -- helpers ----------------------------------------------------------------------------------
def open_manager(args: argparse.Namespace, *, active: bool) -> Manager:
    """The store named by ``--store`` (else the default); *active* managers transfer jobs."""
    store = args.store if args.store else default_store_path()
    policy = Policy() if active else Policy(max_active_jobs=0)
    if active:
        bandwidth_policy(args, policy)
    return Manager(store, policy=policy)


# -- bandwidth options ------------------------------------------------------------------------
def parse_rate_arg(text: str) -> float | None:
    """A rate as curl's --limit-rate takes it (500k, 5MB, 1.5G; off = no cap) → bytes/s."""
    try:
        return parse_rate(text)
    except BitsError as exc:
        raise argparse.ArgumentTypeError(exc.message or str(exc)) from None


def bandwidth_policy(args: argparse.Namespace, policy: Policy) -> None:
    """The manager-wide bandwidth options into the policy."""
    cap = getattr(args, "background_max_bandwidth", None)
    if cap is not None:
        policy.max_bandwidth = cap
    mode = getattr(args, "background", None)
    if mode is not None:
        policy.background = mode


def resolve(mgr: Manager, name: str) -> Job:
    """A job by full id, unique id prefix or unique display name (active jobs win over finished)."""
    text = name.strip()
    if not text:
        raise BitsError(E_INVALIDARG, "the job name is empty")
    try:
        full: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        full = None
    if full is not None:
        try:
            return mgr.get_job(full)
        except JobNotFoundError:
            for job in mgr.enum_jobs(include_finished=True):
                if job.id == full:
                    return job  # finished: readable, and calls on it say it is final
            raise
    prefix = text.lower() if _HEXISH.match(text) else None
    for finished in (False, True):
        jobs = list(mgr.enum_jobs(include_finished=finished))
        if finished:
            jobs = [j for j in jobs if j.state.is_final]
        matches = [
            j
            for j in jobs
            if j.display_name == text or (prefix is not None and str(j.id).startswith(prefix))
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(
                f"{short_id(j)} ({safe_text(j.display_name)}, {j.state.name})" for j in matches[:5]
            )
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            raise BitsError(
                E_INVALIDARG,
                f"{text!r} names {len(matches)} jobs: {shown}{more}; give more of the id",
            )
    raise JobNotFoundError(
        f"no job {text!r} (by id, id prefix or display name); `bitsnb list --all` lists them"
    )


def plan_destinations(urls: Sequence[str], dest: str) -> list[tuple[str, str]]:
    """(URL, local path) pairs by the one rule of ``bitsnb._planning`` (``bitsnb.download``
    follows it too); the folder they land in is created when missing."""
    plan = plan_downloads(urls, dest)
    make_folder(plan)
    return plan.pairs


MAX_FILE_SET_BYTES = 16 * 1024 * 1024
"""The largest file list ``addfileset`` reads (a few hundred thousand lines)."""


def _read_list_file(path: str) -> bytes:
    """The bytes of a regular file of at most ``MAX_FILE_SET_BYTES``: a FIFO, a device
    (``/dev/zero``) or a folder is refused without reading (opened non-blocking, so a FIFO
    with no writer cannot hang), and so is a bigger file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BitsError(
            hresult_from_errno(exc.errno), f"cannot read the file list {path!r}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BitsError(E_INVALIDARG, f"the file list {path!r} is not a regular file")
        if info.st_size > MAX_FILE_SET_BYTES:
            raise BitsError(
                E_INVALIDARG,
                f"the file list {path!r} is larger than {MAX_FILE_SET_BYTES} bytes",
            )
        data = fh.read(MAX_FILE_SET_BYTES + 1)  # it may have grown since the fstat
    if len(data) > MAX_FILE_SET_BYTES:
        raise BitsError(
            E_INVALIDARG, f"the file list {path!r} is larger than {MAX_FILE_SET_BYTES} bytes"
        )
    return data


def read_file_set(path: str) -> list[tuple[str, str]]:
    """``URL PATH`` lines (``#`` comments, blank lines skipped) or a CSV with url,path columns;
    *path* must be a regular file of at most ``MAX_FILE_SET_BYTES``."""
    try:
        text = _read_list_file(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BitsError(E_INVALIDARG, f"{path!r} is not UTF-8 text ({exc})") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    header = [c.strip().lower() for c in first.split(",")]
    pairs: list[tuple[str, str]] = []
    if "url" in header and "path" in header:
        body = [ln for ln in lines if not ln.lstrip().startswith("#")]
        for row in csv.DictReader(body, skipinitialspace=True):
            fields = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            if not any(fields.values()):
                continue
            if not fields.get("url") or not fields.get("path"):
                raise BitsError(E_INVALIDARG, f"{path!r}: a row lacks url or path: {row}")
            pairs.append((fields["url"], local_path(fields["path"])))
    else:
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.split(None, 1)
            if len(parts) != 2:
                raise BitsError(
                    E_INVALIDARG,
                    f"{path!r} line {number}: expected 'URL PATH', got {stripped!r}",
                )
            pairs.append((parts[0], local_path(parts[1])))
    if not pairs:
        raise BitsError(E_INVALIDARG, f"{path!r} lists no files")
    return pairs


def is_secret_header(line: str) -> bool:
    return line.split(":", 1)[0].strip().lower() in _SECRET_HEADERS


JOB_TYPES = {
    "download": JobType.DOWNLOAD,
    "upload": JobType.UPLOAD,
    "upload-reply": JobType.UPLOAD_REPLY,
}


class UsageError(Exception):
    """A usage mistake found after parsing (exit 2)."""


def ask_credential(text: str) -> tuple[str, str]:
    """``USER:PASSWORD``, or ``USER`` alone: the password is then asked on the terminal (or
    read from stdin's first line), so it does not show in the process list."""
    user, sep, password = text.partition(":")
    if not user:
        raise UsageError("--credential: give USER or USER:PASSWORD")
    if not sep:
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {user}: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    return user, password


def split_command(text: str) -> tuple[str, str | None]:
    """``PROGRAM [ARGS...]``: the program (a full path) and the whole command line as BITS's
    parameters (which, as in bitsadmin, start with the program itself)."""
    program = text.strip().split(None, 1)[0] if text.strip() else ""
    if not program:
        raise BitsError(E_INVALIDARG, "the notify command is empty")
    return program, text.strip()
