"""``bitsnb``: the command line over the same job store as the notebooks (bitsadmin-style verbs).

Verbs: ``demo``, ``transfer``, ``create``, ``addfile``, ``addfileset``, ``addfilewithranges``,
``resume``, ``suspend``, ``cancel``, ``complete``, ``reset``, ``list``, ``info``, ``monitor``,
``wait``, ``set``, ``setnotifycmdline``, ``setnotifyflags``, ``setcredentials``,
``removecredentials``, ``replaceremoteprefix``, ``takeownership``, ``setreplyfilename``,
``getreplydata``, the ``get*`` verbs that print one value (``getstate``, ``getbytestotal``, ...),
``error``, ``serve``, ``verify``.
Jobs are named by full id, a unique id prefix or a unique display name.

Jobs run while a bitsnb process has the store open: a notebook, ``bitsnb wait``, ``bitsnb monitor``
or ``bitsnb transfer``. The other verbs open the store without transferring (their manager runs
with ``max_active_jobs=0``), so ``create``/``addfile``/``resume`` only queue work for later.

Exit codes::

    0    success
    1    a job ended in ERROR or was cancelled: the transfer failed (verify: a file differs)
    2    usage error (argparse)
    3    a BITS call failed: BitsError (bad input, invalid state, job not found, ...)
    4    timed out (--timeout)
    5    not implemented (any call the core answers with E_NOTIMPL; ``serve`` without uvicorn)
    70   internal error (a bug in bitsnb: the traceback is printed)
    130  interrupted (Ctrl-C)

This module is the entry point (``main``: parse, run the verb, map errors to exit codes); the
parser is in ``_cli_parser``, argument values in ``_cli_args``, the job verbs in ``_cli_jobs``,
the verbs that transfer or serve in ``_cli_run``, the views in ``_cli_render``, the live
progress in ``_cli_watch`` and the output streams and exit statuses in ``_cli_output``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Sequence

from ._cli_args import MAX_FILE_SET_BYTES as MAX_FILE_SET_BYTES
from ._cli_args import Handler, UsageError
from ._cli_args import parse_code as parse_code
from ._cli_args import parse_rate_arg as parse_rate_arg
from ._cli_args import plan_destinations as plan_destinations
from ._cli_output import (
    EXIT_BITS_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_IMPLEMENTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Output,
)
from ._cli_parser import build_parser
from ._codes import E_INVALIDARG, E_NOTIMPL
from ._errors import BitsError

__all__ = ["build_parser", "main"]  # the exit statuses are named in ``_cli_output``


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bitsnb`` command line; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.verb != "serve":  # serve hands its options to bitsnb.server
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.server_args = extra
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    out = Output()
    handler: Handler = args.func
    try:
        return handler(args, out)
    except BitsError as exc:
        out.error(str(exc))
        return EXIT_NOT_IMPLEMENTED if exc.code == E_NOTIMPL else EXIT_BITS_ERROR
    except UnicodeEncodeError as exc:  # an argument that is not UTF-8 (surrogate escapes)
        bad = BitsError(
            E_INVALIDARG,
            f"an argument is not valid UTF-8 text ({exc.object[exc.start : exc.end]!r}): "
            "names and paths must be UTF-8",
        )
        out.error(str(bad))
        return EXIT_BITS_ERROR
    except TimeoutError as exc:
        out.error(f"timed out: {exc}")
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        out.error(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:  # `bitsnb list | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # keep interpreter exit quiet
        return EXIT_OK
    except Exception:
        out.error("internal error (a bug in bitsnb; please report it with this traceback):")
        traceback.print_exc()
        return EXIT_INTERNAL
