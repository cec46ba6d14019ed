"""The ``bitsnb`` argument parser: every verb, its options and its handler."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ._cli_args import (
    JOB_TYPES,
    Handler,
    enum_arg,
    int_range,
    parse_code,
    parse_notify_flags,
    parse_priority,
    parse_proxy_usage,
    parse_rate_arg,
    parse_seconds,
    parse_states,
)
from ._cli_integrity import add_checksum_options
from ._cli_jobs import (
    GETTERS,
    cmd_addfile,
    cmd_addfileset,
    cmd_addfilewithranges,
    cmd_cancel,
    cmd_cleanup,
    cmd_complete,
    cmd_create,
    cmd_error,
    cmd_get,
    cmd_getreplydata,
    cmd_info,
    cmd_list,
    cmd_removecredentials,
    cmd_replaceremoteprefix,
    cmd_reset,
    cmd_resume,
    cmd_set,
    cmd_setcredentials,
    cmd_setnotifycmdline,
    cmd_setnotifyflags,
    cmd_setreplyfilename,
    cmd_suspend,
    cmd_takeownership,
    cmd_verify,
    parse_ranges,
)
from ._cli_run import cmd_demo, cmd_monitor, cmd_serve, cmd_transfer, cmd_wait
from ._enums import AuthScheme, AuthTarget, JobPriority

_EPILOG = """\
exit codes:
  0    success
  1    a job ended in ERROR or was cancelled (the transfer failed); verify: a file differs
  2    usage error
  3    a BITS call failed (bad input, invalid state, job not found, ...)
  4    timed out (--timeout)
  5    not implemented (any call answered with E_NOTIMPL; serve without uvicorn)
  70   internal error (a bug in bitsnb)
  130  interrupted (Ctrl-C)

Jobs run while a bitsnb process (a notebook, `bitsnb wait`/`monitor`/`transfer`) has the store
open; `create`, `addfile` and `resume` only queue work, and the next such process transfers it.
Name a job by its full id, a unique prefix of its id, or a unique display name.
The store is $BITSNB_HOME/jobs.db (else jobs.db in the user data folder); --store overrides it.

first command:  bitsnb demo
"""


_JOB_CAP_HELP = "cap {} job (500k, 5MB, 1.5G, as curl's --limit-rate; {})"
_ALL_USERS_HELP = "every user's jobs (root only)"


# -- option groups --------------------------------------------------------------------------
_Option = tuple[tuple[str, ...], dict[str, Any]]

#: Options several verbs share, by group name, in the order ``--help`` lists them. A verb adds a
#: group with ``_add_group`` (changing an option's help or a setting where its verb differs).
_GROUPS: dict[str, tuple[_Option, ...]] = {
    "store": (
        (
            ("--store",),
            {
                "metavar": "PATH",
                "default": None,
                "help": "the job store (default: $BITSNB_HOME/jobs.db)",
            },
        ),
    ),
    "job": ((("job",), {"metavar": "JOB"}),),
    "file": (
        (("job",), {"metavar": "JOB"}),
        (("url",), {"metavar": "URL"}),
        (("path",), {"metavar": "PATH"}),
    ),
    "json": ((("--json",), {"action": "store_true"}),),
    "all users": ((("--all-users",), {"action": "store_true"}),),
    "priority": ((("--priority",), {"type": parse_priority, "default": JobPriority.NORMAL}),),
    "timeout": (
        (
            ("--timeout",),
            {"type": parse_seconds, "metavar": "S", "help": "give up after S seconds (exit 4)"},
        ),
    ),
    "header": ((("--header",), {"action": "append", "metavar": "'NAME: VALUE'"}),),
    "proxy": ((("--proxy",), {"metavar": "LIST"}), (("--bypass",), {"metavar": "LIST"})),
    "max bandwidth": (
        (
            ("--max-bandwidth",),
            {"type": parse_rate_arg, "metavar": "RATE", "default": argparse.SUPPRESS},
        ),
    ),
    "background": (
        (
            ("--background-max-bandwidth",),
            {
                "type": parse_rate_arg,
                "metavar": "RATE",
                "default": None,
                "help": "cap the background jobs this process runs, together "
                "(Policy.max_bandwidth)",
            },
        ),
        (
            ("--background",),
            {
                "choices": ("yield", "full"),
                "default": None,
                "help": "background jobs yield to other traffic (default) or use the full "
                "bandwidth",
            },
        ),
    ),
}


def _add_group(
    p: argparse.ArgumentParser,
    group: str,
    helps: Mapping[str, str] | None = None,
    **settings: Any,
) -> None:
    """Add the shared options *group* to *p*: *helps* gives an option (by its first name) its
    verb's help text, *settings* change every option of the group (``default=...``)."""
    for names, kwargs in _GROUPS[group]:
        extra = {"help": helps[names[0]]} if helps and names[0] in helps else {}
        p.add_argument(*names, **{**kwargs, **extra, **settings})


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``bitsnb`` argument parser (``--store`` works before or after the verb)."""
    common = argparse.ArgumentParser(add_help=False)
    _add_group(common, "store", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="bitsnb",
        description="bitsnb: a BITS-style background transfer queue, from the command line.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_group(parser, "store")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"bitsnb {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, handler: Handler, help_text: str, *groups: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=handler)
        for group in groups:
            _add_group(p, group)
        return p

    p = verb("demo", cmd_demo, "run one job against a built-in loopback server (first command)")
    p.add_argument("--files", type=int_range(1, 100), default=5, help="files (default 5)")
    p.add_argument(
        "--size",
        type=int_range(1, 1 << 30),
        default=4_000_000,
        metavar="BYTES",
        help="bytes per file (default 4000000)",
    )
    p.add_argument("--keep", metavar="DIR", help="keep the files and the demo's store in DIR")
    p.add_argument(
        "--no-faults",
        action="store_true",
        help="skip the dropped connection and the suspend/resume (just transfer)",
    )

    p = verb(
        "transfer",
        cmd_transfer,
        "download URLs (or --upload a file) now, with progress, then complete",
    )
    p.add_argument("urls", nargs="+", metavar="URL")
    _add_group(p, "max bandwidth", {"--max-bandwidth": _JOB_CAP_HELP.format("this", "off: no cap")})
    _add_group(p, "background")
    p.add_argument(
        "dest",
        metavar="DEST",
        help="a folder (names from the URLs) or, for one URL, a file; with --upload, the local "
        "file to send",
    )
    p.add_argument("--name", help="the job's display name")
    _add_group(
        p,
        "priority",
        {
            "--priority": "default normal, as bitsadmin /transfer and bitsnb.download(): "
            "foreground would pre-empt every other job in the queue"
        },
    )
    p.add_argument("--upload", action="store_true", help="upload DEST to URL (an UPLOAD job)")
    p.add_argument(
        "--credential",
        metavar="USER[:PASSWORD]",
        help="server credentials (kept in memory only; without :PASSWORD it is asked for)",
    )
    p.add_argument(
        "--auth-scheme",
        type=enum_arg(AuthScheme),
        default=AuthScheme.BASIC,
        metavar="{basic,digest}",
        help="for --credential (default basic)",
    )
    p.add_argument(
        "--auth-target",
        type=enum_arg(AuthTarget),
        default=AuthTarget.SERVER,
        metavar="{server,proxy}",
        help="for --credential (default server)",
    )
    _add_group(
        p,
        "proxy",
        {
            "--proxy": "use these proxies (override)",
            "--bypass": "with --proxy: hosts reached directly",
        },
    )
    p.add_argument(
        "--retry-interval",
        type=parse_seconds,
        metavar="S",
        help="wait S seconds between retries (the minimum retry delay)",
    )
    p.add_argument(
        "--dynamic", action="store_true", help="the content is generated: no size, no ranges"
    )
    p.add_argument(
        "--notify-cmd",
        metavar="'PROGRAM ARGS'",
        help="run PROGRAM (a full path) when the job is transferred or fails",
    )
    _add_group(p, "timeout")
    _add_group(
        p,
        "header",
        {"--header": "a request header (repeatable; Authorization stays in memory only)"},
    )
    p.add_argument("--no-wait", action="store_true", help="queue the job, print its id and exit")
    _add_group(p, "json", {"--json": "print the finished job as JSON"})
    add_checksum_options(p, remote_file=True)

    p = verb("create", cmd_create, "create an empty job (SUSPENDED) and print its id")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--type", choices=("download", "upload", "upload-reply"), default="download")
    _add_group(p, "priority")
    p.add_argument("--description", default="")
    _add_group(p, "json")

    p = verb("addfile", cmd_addfile, "add one file (URL -> local PATH or folder) to a job", "file")
    add_checksum_options(p, remote_file=False)

    verb(
        "verify", cmd_verify, "hash a finished job's files again against the store (exit 1)", "job"
    )

    p = verb(
        "addfileset",
        cmd_addfileset,
        "add files listed in FILE ('URL PATH' lines, or a CSV with url,path columns)",
        "job",
    )
    p.add_argument("file", metavar="FILE")

    for name, handler, text in (
        ("resume", cmd_resume, "queue a job (it runs while a bitsnb process has the store open)"),
        ("suspend", cmd_suspend, "suspend a job (data on disk is kept)"),
        ("cancel", cmd_cancel, "cancel a job and delete its temporary files"),
        ("complete", cmd_complete, "move a job's transferred files into place and end it"),
    ):
        verb(name, handler, text, "job")

    p = verb("cleanup", cmd_cleanup, "remove temporary files of jobs that no longer exist")
    p.add_argument(
        "folders",
        nargs="*",
        metavar="FOLDER",
        help="where to look (default: every folder the store names)",
    )
    p.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    p = verb("list", cmd_list, "list the jobs in the queue")
    _add_group(p, "all users", {"--all-users": _ALL_USERS_HELP})
    p.add_argument("--all", action="store_true", help="include finished jobs")
    p.add_argument(
        "--state",
        type=parse_states,
        action="append",
        metavar="STATE[,STATE]",
        help="only these states",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")

    verb("info", cmd_info, "show a job: files, progress, times, error", "job", "json")

    p = verb("monitor", cmd_monitor, "live table of the queue until Ctrl-C (also runs the jobs)")
    p.add_argument("--interval", type=parse_seconds, default=1.0, metavar="S")
    p.add_argument(
        "--count", type=int_range(1, 1 << 30), metavar="N", help="stop after N refreshes"
    )
    _add_group(p, "all users")
    _add_group(p, "background")

    p = verb(
        "error",
        cmd_error,
        "explain an error code (0x80190194, decimal, a name, or a bare HTTP status: 404)",
    )
    p.add_argument("code", type=parse_code, metavar="CODE")
    p.add_argument(
        "--type",
        choices=tuple(JOB_TYPES),
        help="the reading for this job type (default: the general one, plus the upload one "
        "where it differs)",
    )
    _add_group(p, "json")

    p = verb("set", cmd_set, "change a job's properties", "job")
    _add_group(p, "priority", default=None)
    p.add_argument("--retry-delay", type=parse_seconds, metavar="S")
    p.add_argument("--no-progress-timeout", type=parse_seconds, metavar="S")
    p.add_argument("--max-download-time", type=parse_seconds, metavar="S")
    _add_group(p, "header", {"--header": "a custom header (repeatable)"})
    p.add_argument("--clear-headers", action="store_true")
    p.add_argument(
        "--proxy-usage",
        type=parse_proxy_usage,
        metavar="{preconfig,no_proxy,override,autodetect}",
    )
    _add_group(
        p,
        "proxy",
        {
            "--proxy": "proxy list (implies --proxy-usage override)",
            "--bypass": "proxy bypass list",
        },
    )
    p.add_argument("--display-name")
    p.add_argument("--description")
    _add_group(
        p, "max bandwidth", {"--max-bandwidth": _JOB_CAP_HELP.format("the", "off removes the cap")}
    )

    p = verb("wait", cmd_wait, "run and watch a job until it is transferred or fails", "job")
    _add_group(p, "background")
    _add_group(p, "timeout")
    p.add_argument("--complete", action="store_true", help="complete the job once transferred")
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume a SUSPENDED job first (without it, waiting on one exits at once)",
    )

    p = verb("reset", cmd_reset, "cancel every job of yours (bitsadmin /reset)")
    _add_group(p, "all users", {"--all-users": _ALL_USERS_HELP})

    p = verb(
        "addfilewithranges",
        cmd_addfilewithranges,
        "add a file of which only some byte ranges are wanted",
        "file",
    )
    p.add_argument("ranges", type=parse_ranges, metavar="OFFSET:LENGTH[,OFFSET:LENGTH...]")

    p = verb("setnotifycmdline", cmd_setnotifycmdline, "run a program when the job ends", "job")
    p.add_argument("program", nargs="*", metavar="PROGRAM [ARGS]", help="a full path, then args")
    p.add_argument("--clear", action="store_true", help="remove the command line")

    p = verb("setnotifyflags", cmd_setnotifyflags, "choose the events a job reports", "job")
    p.add_argument(
        "flags",
        type=parse_notify_flags,
        metavar="FLAGS",
        help="a number (3) or names: job_transferred,job_error,disable,job_modification,...",
    )

    for name, handler, text in (
        ("setcredentials", cmd_setcredentials, "give a job credentials (memory only)"),
        ("removecredentials", cmd_removecredentials, "remove a job's credentials"),
    ):
        p = verb(name, handler, text, "job")
        p.add_argument("target", type=enum_arg(AuthTarget), metavar="{server,proxy}")
        p.add_argument("scheme", type=enum_arg(AuthScheme), metavar="{basic,digest,...}")
        if handler is cmd_setcredentials:
            p.add_argument(
                "credential",
                metavar="USER[:PASSWORD]",
                help="without :PASSWORD it is asked for (or read from stdin)",
            )

    p = verb(
        "replaceremoteprefix", cmd_replaceremoteprefix, "change the start of remote URLs", "job"
    )
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")

    verb("takeownership", cmd_takeownership, "make a job yours (root only)", "job")

    p = verb(
        "setreplyfilename", cmd_setreplyfilename, "where an upload-reply job puts the reply", "job"
    )
    p.add_argument("path", metavar="PATH")

    p = verb("getreplydata", cmd_getreplydata, "print an upload-reply job's reply", "job")
    p.add_argument("--hex", action="store_true", help="as hex text")

    for name, (text, _) in GETTERS.items():
        verb(name, cmd_get, f"print {text}", "job").set_defaults(getter=name)

    p = verb(
        "serve",
        cmd_serve,
        "run the BITS upload server: serve --root DIR [--port N] [--max-size BYTES]",
    )
    return parser
