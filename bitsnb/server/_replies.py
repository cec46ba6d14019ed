"""Upload replies: the default reply body, and serving a session's reply with GET/HEAD."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from bitsnb._http_rules import RangeNotSatisfiable, format_content_range, parse_range
from bitsnb.server._asgi import Request, Send, encode_headers, send_response
from bitsnb.server._protocol import parse_session_id
from bitsnb.server._sessions import SessionStore

__all__ = ["ReplyFunc", "default_reply", "serve_reply"]

ReplyFunc = Callable[[Path, str], bytes]
"""``reply(path, session_id) -> bytes``: the reply body for the uploaded file at ``path``."""

_CHUNK = 1 << 16  # reply bodies are sent in 64 KiB pieces
_REPLY_PATH = re.compile(rb"/\.bits-sessions/([0-9a-fA-F-]{36})/reply")


def default_reply(path: Path, session_id: str) -> bytes:
    """The default upload-reply body: JSON with the file's name, size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    body = {"name": path.name, "size": size, "sha256": digest.hexdigest(), "session_id": session_id}
    return json.dumps(body).encode("utf-8")


async def serve_reply(
    req: Request, send: Send, store: SessionStore, session_timeout: float, *, head: bool
) -> None:
    """GET/HEAD of a session's reply (a single range, If-Range); 404 once it has expired."""
    await req.drain()
    m = _REPLY_PATH.fullmatch(req.raw_path)
    session_id = parse_session_id(m.group(1).decode("ascii")) if m else None
    session = store.load(session_id) if session_id else None
    if session is not None and store.now() - session.updated > session_timeout:
        store.remove(session)
        session = None
    fh = None
    if session is not None and session.reply:
        with contextlib.suppress(OSError):
            fh = open(session.reply_path, "rb")
    if session is None or fh is None:
        await send_response(send, 404, [("Content-Length", "0")])
        return
    with fh:
        st = os.fstat(fh.fileno())
        size = st.st_size
        etag = f'"{session.id.hex}-{size:x}-{st.st_mtime_ns:x}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        headers = [
            ("Content-Type", session.reply_type),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag),
            ("Last-Modified", last_modified),
            ("Cache-Control", "no-store"),
        ]
        status, start, count = 200, 0, size
        range_header = req.header("range")
        if_range = (req.header("if-range") or "").strip()
        if if_range and if_range not in (etag, last_modified):
            range_header = None  # the reply changed since: send all of it
        try:
            wanted = parse_range(range_header, size)
        except RangeNotSatisfiable:
            headers += [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
            await send_response(send, 416, headers)
            return
        if wanted is not None:
            start, count = wanted
            status = 206
            headers.append(("Content-Range", format_content_range(start, start + count - 1, size)))
        headers.append(("Content-Length", str(count)))
        encoded = encode_headers(headers)
        await send({"type": "http.response.start", "status": status, "headers": encoded})
        fh.seek(start)
        left = 0 if head else count
        while left > 0:
            data = fh.read(min(_CHUNK, left))
            if not data:
                break
            left -= len(data)
            await send({"type": "http.response.body", "body": data, "more_body": left > 0})
        if left > 0 or head or count == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
