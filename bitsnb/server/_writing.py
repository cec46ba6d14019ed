"""Writing uploads to disk: a fragment's body into its session's data file, the finished file
into place (atomically, across file systems too)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from bitsnb.server._asgi import Request
from bitsnb.server._protocol import (
    BG_E_HTTP_ERROR_500,
    BG_E_SESSION_NOT_FOUND,
    E_INVALIDARG,
    ERROR_DISK_FULL,
    Refused,
)
from bitsnb.server._sessions import Session

__all__ = ["place", "write_body"]


async def write_body(
    req: Request, session: Session, first: int, length: int
) -> tuple[int, Refused | None]:
    """Stream the body to the data file, skipping bytes already held; (written, failure)."""
    skip = session.received - first
    seen = written = 0
    try:
        fh = open(session.data_path, "r+b", buffering=0)
    except FileNotFoundError:
        return 0, Refused(500, BG_E_SESSION_NOT_FOUND, "the session's data is gone")
    with fh:
        try:
            fh.seek(session.received)
            fh.truncate()
            while seen < length:
                data = await req.chunk()
                if data is None:
                    break  # client gone: keep what arrived
                if not data:
                    if req.body_done:
                        break
                    continue
                view = memoryview(data)[: length - seen]
                start = max(0, skip - seen)
                seen += len(view)
                view = view[start:]
                while view:
                    n = fh.write(view)
                    if not n:
                        raise OSError(errno.EIO, "short write")
                    written += n
                    view = view[n:]
        except OSError as exc:
            code = ERROR_DISK_FULL if exc.errno == errno.ENOSPC else BG_E_HTTP_ERROR_500
            return written, Refused(500, code, "cannot write the upload")
    if seen < length and not req.disconnected:
        return written, Refused(400, E_INVALIDARG, "the body is shorter than Content-Length")
    return written, None


def place(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest`` atomically, across file systems via a temp file next to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.unlink(src)
