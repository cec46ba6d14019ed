"""What ``FileServer`` logs of a request, and the name a request target asks for."""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass, field

from bitsnb.testing._faults import FaultKind

__all__ = ["RequestRecord", "request_name"]


@dataclass(slots=True)
class RequestRecord:
    """One request as seen by the server (``status`` 0 = no status line was sent).

    ``path`` is the decoded request path without its leading "/" (what fault globs match);
    ``body_bytes_sent`` counts file-content bytes handed to the socket, not error-text bodies.
    """

    method: str
    path: str
    range: str | None
    if_range: str | None
    status: int = 0
    body_bytes_sent: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    fault: FaultKind | None = None
    finished: bool = False

    def copy(self) -> RequestRecord:
        """Return an independent snapshot of this record."""
        return dataclasses.replace(self, headers=dict(self.headers))


def request_name(target: str) -> str:
    """The decoded path of a request target without its leading "/" (what fault globs match);
    an absolute-form target (``http://host/x``) is read for its path, query and fragment dropped."""
    target = target.split("#", 1)[0]
    if "://" in target.split("?", 1)[0]:  # absolute-form request target
        target = urllib.parse.urlsplit(target).path or "/"
    target = target.split("?", 1)[0]
    name = urllib.parse.unquote(target)
    return name[1:] if name.startswith("/") else name
