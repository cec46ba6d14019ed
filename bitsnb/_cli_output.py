"""The command line's output streams and exit statuses.

``Output`` wraps stdout/stderr as rich consoles (plain text, trimmed rows when they are not
terminals); ``safe_text`` escapes what other people wrote before it reaches a terminal.
"""

from __future__ import annotations

import io
import json
import re
import sys
from typing import IO, cast

from rich.console import Console
from rich.text import Text

__all__ = [
    "EXIT_BITS_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_IMPLEMENTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_TRANSFER_FAILED",
    "EXIT_USAGE",
    "Output",
    "safe_text",
]

EXIT_OK = 0
EXIT_TRANSFER_FAILED = 1
EXIT_USAGE = 2
EXIT_BITS_ERROR = 3
EXIT_TIMEOUT = 4
EXIT_NOT_IMPLEMENTED = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
"""Exit statuses of ``bitsnb`` (the table is in ``bitsnb._cli``'s docstring)."""


class Output:
    """The process's stdout/stderr as rich consoles; plain text when they are not terminals."""

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        out = stdout if stdout is not None else sys.stdout
        err = stderr if stderr is not None else sys.stderr
        self.out = _console(out)
        self.err = _console(err)

    @property
    def tty(self) -> bool:
        """True when stdout is a terminal (live bars, colours); else plain lines."""
        return self.out.is_terminal

    def line(self, text: str | Text = "", *, style: str | None = None) -> None:
        """One line on stdout (no markup: job names and URLs are shown as they are)."""
        self.out.print(text, style=style)

    def note(self, text: str) -> None:
        """A hint or status line on stderr."""
        self.err.print(text, style="dim")

    def error(self, text: str) -> None:
        """``bitsnb: error: ...`` on stderr (control characters escaped: messages quote input)."""
        self.err.print(f"bitsnb: error: {safe_text(text)}", style="red")

    def json(self, data: object) -> None:
        """*data* as indented JSON on stdout."""
        self.out.file.write(json.dumps(data, indent=2, default=str) + "\n")
        self.out.file.flush()


def _console(file: IO[str]) -> Console:
    try:
        tty = file.isatty()
    except (AttributeError, ValueError):
        tty = False
    # Not a terminal: no colours, no wrapping of long rows (ids and URLs stay greppable),
    # and no padding at the ends of table rows.
    return Console(
        file=file if tty else cast(IO[str], _Trimmed(file)),
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=not tty,
        width=None if tty else 200,
    )


class _Trimmed(io.TextIOBase):
    """A text stream that drops the spaces rich pads table rows with, line by line."""

    def __init__(self, raw: IO[str]) -> None:
        self._raw = raw
        self._pending = ""

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._raw.write(line.rstrip(" ") + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._raw.write(self._pending)
            self._pending = ""
        self._raw.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._raw.fileno()


# -- control characters ------------------------------------------------------------------
# C0 and C1 controls, DEL, line/paragraph separators and the bidirectional overrides: a name
# holding them could move the cursor, recolour or hide text, or fake lines of output
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def safe_text(text: str) -> str:
    """*text* with control characters shown as escapes (``\\n``, ``\\x1b``), never sent raw to
    the terminal: job names, URLs and messages come from other people and other programs."""

    def escape(m: re.Match[str]) -> str:
        return m.group().encode("unicode_escape").decode("ascii")

    return _UNSAFE.sub(escape, text)
