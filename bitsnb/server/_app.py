"""The server side of BITS uploads [MC-BUP] as a hand-written ASGI 3 application.

``BITS_POST`` packets (Ping, Create-Session, Fragment, Close-Session, Cancel-Session) write into
``root``; ``GET``/``HEAD`` serve upload-reply bodies. Sessions live on disk (``_sessions.py``), so
they survive a restart; request bodies are streamed to disk chunk by chunk (memory stays flat).

Fragment rule (spec §6.3): a fragment must start at or before the next byte the server expects;
bytes it already holds are skipped, a gap gets 416 with ``BITS-Received-Content-Range``. When the
last byte arrives the file is moved atomically to its destination and, unless replies are off, the
reply is produced and its URL sent in ``BITS-Reply-URL`` (on that Ack, on resends of the final
fragment and on the Close-Session Ack). The reply stays downloadable until the session expires.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Literal

from bitsnb.server._auth import Authenticator
from bitsnb.server._protocol import (
    BG_E_HTTP_ERROR_500,
    BG_E_HTTP_ERROR_503,
    BG_E_SESSION_NOT_FOUND,
    BG_E_TOO_LARGE,
    CONTEXT_REMOTE_APPLICATION,
    E_INVALIDARG,
    ERROR_DISK_FULL,
    STATE_DIR,
    Refused,
    format_context,
    format_hresult,
    fragment_range,
    parse_session_id,
    pick_protocol,
    upload_segments,
)
from bitsnb.server._sessions import Session, SessionStore, resolve_destination

__all__ = ["ReplyFunc", "UploadApp", "create_app", "default_reply"]

_log = logging.getLogger("bitsnb.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ReplyFunc = Callable[[Path, str], bytes]
"""``reply(path, session_id) -> bytes``: the reply body for the uploaded file at ``path``."""

_CHUNK = 1 << 16  # reply bodies are sent in 64 KiB pieces
_MAX_DRAIN = 1 << 26  # an error answer reads and discards at most 64 MiB of an unwanted body
_MAX_SWEEP_INTERVAL = 60.0
_REPLY_PATH = re.compile(rb"/\.bits-sessions/([0-9a-fA-F-]{36})/reply")
_HOST_OK = re.compile(r"[A-Za-z0-9.\-\[\]:_]+")
_MAX_UNAUTHENTICATED_BODY = 1 << 20  # a refused request's body is read this far, then cut
_RETRY_AFTER = "60"  # seconds, on the 503 a cap answers with
DEFAULT_MAX_SESSIONS = 1000
DEFAULT_MAX_SESSIONS_PER_CLIENT = 100


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


def create_app(
    root: str | os.PathLike[str],
    *,
    max_upload_size: int | None = None,
    session_timeout: float = 1_209_600,
    reply: ReplyFunc | Literal[False] | None = None,
    authenticate: Authenticator | None = None,
    realm: str = "bitsnb upload",
    max_sessions: int | None = DEFAULT_MAX_SESSIONS,
    max_sessions_per_client: int | None = DEFAULT_MAX_SESSIONS_PER_CLIENT,
    max_bytes_held: int | None = None,
) -> UploadApp:
    """An ASGI 3 app that accepts BITS uploads into ``root`` (created if missing).

    **Parameters:**

    * **max_upload_size** - *(optional)* largest file accepted, judged on the Content-Range total;
      bigger uploads get 413 with ``BG_E_TOO_LARGE`` (0x80200020).
    * **session_timeout** - seconds of inactivity after which a session and its data are removed
      (lazily, on later requests); 14 days like IIS by default.
    * **reply** - ``reply(path, session_id) -> bytes`` produces the upload-reply body once the whole
      file is at ``path``; ``None`` uses ``default_reply`` (JSON: name, size, sha256);
      ``False`` turns replies off (a plain-upload server, no ``BITS-Reply-URL``).
    * **authenticate** - ``authenticate(user, password) -> bool`` checks HTTP Basic credentials
      (``bitsnb.server.AuthFile(path)`` is one, for an ``--auth-file``); it runs on a worker
      thread, so a slow password hash does not stall other clients. Every request without
      credentials it accepts gets 401 with ``WWW-Authenticate: Basic realm="<realm>"``.
      ``None`` (the default) lets anyone who can connect upload: keep such a server on loopback.
    * **max_sessions** - sessions held on disk at once, every client together (default 1000);
      a Create-Session past it gets 503 with ``Retry-After`` (the client retries later).
      Sessions end with Close-Session, Cancel-Session or expiry. ``None``: no cap.
    * **max_sessions_per_client** - the same cap per client (default 100); a client is the
      authenticated user, else the peer's IP address.
    * **max_bytes_held** - bytes the unfinished uploads may hold together, judged on their
      declared totals: an upload that would pass it gets 503 (413 if it alone is larger).
      ``None`` (the default): no cap beyond the disk.
    """
    return UploadApp(
        root,
        max_upload_size=max_upload_size,
        session_timeout=session_timeout,
        reply=reply,
        authenticate=authenticate,
        realm=realm,
        max_sessions=max_sessions,
        max_sessions_per_client=max_sessions_per_client,
        max_bytes_held=max_bytes_held,
    )


class _Request:
    """One HTTP request: lower-cased headers and a body read chunk by chunk."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        self.headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = bytes(raw_name).decode("latin-1").lower()
            value = bytes(raw_value).decode("latin-1")
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value
        raw = scope.get("raw_path") or str(scope.get("path", "/")).encode("utf-8")
        self.raw_path: bytes = bytes(raw).partition(b"?")[0]
        self.body_done = False
        self.disconnected = False
        self.responded = False

    def header(self, name: str) -> str | None:
        """A request header by lower-case name (repeated headers joined with ", ")."""
        return self.headers.get(name)

    async def chunk(self) -> bytes | None:
        """The next piece of the body; b"" once it is complete, None if the client went away."""
        if self.disconnected:
            return None
        if self.body_done:
            return b""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            return None
        if not message.get("more_body", False):
            self.body_done = True
        return bytes(message.get("body", b""))

    async def drain(self, limit: int = _MAX_DRAIN) -> bool:
        """Read and discard the rest of the body; False if it was cut short or too long."""
        seen = 0
        while not self.body_done:
            data = await self.chunk()
            if data is None:
                return False
            seen += len(data)
            if seen > limit:
                return False
        return True


class _Locks:
    """One asyncio.Lock per session id (strictly one packet per session at a time).

    ``busy()`` is also asked from the expiry thread, so the table has a thread lock too.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, int]] = {}
        self._guard = threading.Lock()

    def busy(self) -> set[uuid.UUID]:
        """Sessions with a packet being handled or waiting (safe from any thread)."""
        with self._guard:
            return set(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, session_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold the session's lock for the body of the ``async with``."""
        loop = asyncio.get_running_loop()
        with self._guard:
            if loop is not self._loop:  # the app was handed to a new server/loop
                self._loop, self._locks = loop, {}
            lock, users = self._locks.get(session_id, (asyncio.Lock(), 0))
            self._locks[session_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[session_id]
                if users <= 1:
                    del self._locks[session_id]
                else:
                    self._locks[session_id] = (lock, users - 1)


async def _send_response(
    send: Send,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> None:
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": encoded})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_headers(code: int, context: int) -> list[tuple[str, str]]:
    """Both error headers (SDK ``BITS-Error-Code`` and MC-BUP ``BITS-Error``) plus the context."""
    value = format_hresult(code)
    return [
        ("BITS-Error-Code", value),
        ("BITS-Error", value),
        ("BITS-Error-Context", format_context(context)),
    ]


class UploadApp:
    """The ASGI 3 app built by ``create_app`` (see there for the parameters)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_upload_size: int | None = None,
        session_timeout: float = 1_209_600,
        reply: ReplyFunc | Literal[False] | None = None,
        authenticate: Authenticator | None = None,
        realm: str = "bitsnb upload",
        max_sessions: int | None = DEFAULT_MAX_SESSIONS,
        max_sessions_per_client: int | None = DEFAULT_MAX_SESSIONS_PER_CLIENT,
        max_bytes_held: int | None = None,
    ) -> None:
        if max_upload_size is not None and max_upload_size < 0:
            raise ValueError("max_upload_size must be >= 0")
        if session_timeout <= 0:
            raise ValueError("session_timeout must be > 0")
        for name, cap in (
            ("max_sessions", max_sessions),
            ("max_sessions_per_client", max_sessions_per_client),
            ("max_bytes_held", max_bytes_held),
        ):
            if cap is not None and cap < 1:
                raise ValueError(f"{name} must be >= 1 (or None for no cap)")
        if not re.fullmatch(r"[ -!#-~]+", realm):
            raise ValueError("realm must be printable ASCII without '\"'")
        self.authenticate = authenticate
        self.realm = realm
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.max_bytes_held = max_bytes_held
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(root))
        self.store = SessionStore(self.root)
        self.max_upload_size = max_upload_size
        self.session_timeout = float(session_timeout)
        self._reply: ReplyFunc | None
        if reply is None:
            self._reply, self._reply_type = default_reply, "application/json"
        elif reply is False:
            self._reply, self._reply_type = None, "application/octet-stream"
        else:
            self._reply, self._reply_type = reply, "application/octet-stream"
        self._locks = _Locks()
        self._next_sweep = 0.0
        self._sweep: tuple[asyncio.AbstractEventLoop, asyncio.Future[int]] | None = None

    def __repr__(self) -> str:
        return f"UploadApp(root={str(self.root)!r})"

    # -- entry point ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI 3 entry point."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
            return
        req = _Request(scope, receive)
        method = str(scope.get("method", "")).upper()
        self._maybe_sweep()
        client = await self._client(req)
        if client is None:
            await self._unauthorized(req, send)
            return
        try:
            if method == "BITS_POST":
                await self._bits_post(req, send, client)
            elif method in ("GET", "HEAD"):
                await self._serve_reply(req, send, head=method == "HEAD")
            else:
                await req.drain()
                await _send_response(
                    send, 405, [("Allow", "BITS_POST, GET, HEAD"), ("Content-Length", "0")]
                )
        except OSError as exc:  # anything the handlers did not map: still answer like BITS
            if not req.responded and not req.disconnected:
                code = ERROR_DISK_FULL if exc.errno == errno.ENOSPC else BG_E_HTTP_ERROR_500
                await self._error(req, send, Refused(500, code, "server file-system error"))

    def _maybe_sweep(self) -> None:
        """Start removing expired sessions on a worker thread (at most one sweep at a time):
        listing and reading thousands of session folders must not stall the event loop."""
        loop = asyncio.get_running_loop()
        if self._sweep is not None:
            running_on, future = self._sweep
            if running_on is loop and not future.done():
                return
            self._sweep = None
        now = self.store.now()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(_MAX_SWEEP_INTERVAL, max(self.session_timeout / 4, 0.05))
        future = loop.run_in_executor(
            None, self.store.expire, now, self.session_timeout, self._locks.busy
        )
        future.add_done_callback(_log_sweep_failure)
        self._sweep = (loop, future)

    async def _indexed(self) -> None:
        """Wait (off the loop) until the store has counted the sessions already on disk."""
        if not self.store.indexed:
            await asyncio.to_thread(self.store.ensure_index)

    # -- authentication ------------------------------------------------------------------------

    async def _client(self, req: _Request) -> str | None:
        """Who sends the request: ``user:NAME`` once authenticated, ``ip:ADDRESS`` when the app
        has no ``authenticate``; None when credentials are missing or wrong."""
        if self.authenticate is None:
            peer = req.scope.get("client")
            return f"ip:{peer[0]}" if peer else "ip:"
        credentials = _basic_credentials(req.header("authorization"))
        if credentials is None:
            return None
        user, password = credentials
        try:
            accepted = await asyncio.to_thread(self.authenticate, user, password)
        except Exception:
            _log.exception("the authenticate hook failed; the request is refused")
            return None
        return f"user:{user}" if accepted is True else None

    async def _unauthorized(self, req: _Request, send: Send) -> None:
        """401 with a Basic challenge; the body is read only a little way, then cut."""
        complete = await req.drain(_MAX_UNAUTHENTICATED_BODY)
        if req.disconnected:
            return
        headers = [
            ("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'),
            ("Content-Length", "0"),
        ]
        if not complete:
            headers.append(("Connection", "close"))
        req.responded = True
        await _send_response(send, 401, headers)

    # -- acks ----------------------------------------------------------------------------------

    async def _ack(
        self,
        req: _Request,
        send: Send,
        status: int,
        headers: list[tuple[str, str]],
        *,
        close: bool = False,
    ) -> None:
        if req.disconnected:
            return
        all_headers = [("BITS-Packet-Type", "Ack"), *headers, ("Content-Length", "0")]
        if close:
            all_headers.append(("Connection", "close"))
        req.responded = True
        await _send_response(send, status, all_headers)

    async def _error(
        self,
        req: _Request,
        send: Send,
        refused: Refused,
        *,
        received: int | None = None,
    ) -> None:
        complete = await req.drain()
        headers: list[tuple[str, str]] = []
        if refused.code:
            headers += error_headers(refused.code, refused.context)
        session_header = req.header("bits-session-id")
        if session_header and session_header.strip():
            headers.append(("BITS-Session-Id", session_header.strip()))
        if received is not None:
            headers.append(("BITS-Received-Content-Range", str(received)))
        headers.extend(refused.headers)
        headers.append(("X-Bitsnb-Reason", refused.reason.encode("ascii", "replace").decode()))
        await self._ack(req, send, refused.status, headers, close=not complete)

    def _reply_url(self, req: _Request, session: Session) -> str:
        scheme = str(req.scope.get("scheme", "http"))
        host = (req.header("host") or "").strip()
        if not host or not _HOST_OK.fullmatch(host):
            server = req.scope.get("server") or ("127.0.0.1", 80)
            name = str(server[0])
            host = f"[{name}]:{server[1]}" if ":" in name else f"{name}:{server[1]}"
        root_path = str(req.scope.get("root_path", "")).rstrip("/")
        return f"{scheme}://{host}{root_path}/{STATE_DIR}/{session.id}/reply"

    def _session_headers(self, req: _Request, session: Session) -> list[tuple[str, str]]:
        headers = [("BITS-Session-Id", session.header_id)]
        if session.reply and session.state in ("complete", "closed"):
            headers.append(("BITS-Reply-URL", self._reply_url(req, session)))
        return headers

    # -- BITS_POST -----------------------------------------------------------------------------

    async def _bits_post(self, req: _Request, send: Send, client: str) -> None:
        packet = (req.header("bits-packet-type") or "").strip().lower()
        try:
            if packet == "ping":
                await req.drain()
                echo = (req.header("bits-session-id") or "").strip()
                await self._ack(req, send, 200, [("BITS-Session-Id", echo)] if echo else [])
                return
            segments = upload_segments(req.raw_path)
            if packet == "create-session":
                await self._create_session(req, send, segments, client)
            elif packet in ("fragment", "close-session", "cancel-session"):
                await self._session_packet(req, send, packet, segments)
            else:
                raise Refused(400, E_INVALIDARG, "missing or unknown BITS-Packet-Type")
        except Refused as refused:
            await self._error(req, send, refused)

    async def _create_session(
        self, req: _Request, send: Send, segments: tuple[str, ...], client: str
    ) -> None:
        protocol = pick_protocol(req.header("bits-supported-protocols"))
        if protocol is None:
            raise Refused(400, E_INVALIDARG, "no common upload protocol")
        resolve_destination(self.root, segments)
        await req.drain()
        if req.disconnected:
            return
        await self._indexed()
        if self.max_sessions is not None and self.store.count() >= self.max_sessions:
            raise _busy("the server holds as many upload sessions as it allows")
        if (
            self.max_sessions_per_client is not None
            and self.store.count(client) >= self.max_sessions_per_client
        ):
            raise _busy("this client holds as many upload sessions as the server allows")
        session = self.store.create("/".join(segments), self.store.now(), client)
        headers = [
            ("BITS-Protocol", protocol),
            ("BITS-Session-Id", session.header_id),
            ("Accept-Encoding", "identity"),
        ]
        await self._ack(req, send, 200, headers)

    async def _session_packet(
        self, req: _Request, send: Send, packet: str, segments: tuple[str, ...]
    ) -> None:
        text = req.header("bits-session-id")
        if text is None or not text.strip():
            raise Refused(400, E_INVALIDARG, "BITS-Session-Id missing")
        session_id = parse_session_id(text)
        if session_id is None:
            raise Refused(500, BG_E_SESSION_NOT_FOUND, "unknown session")
        async with self._locks.hold(session_id):
            session = self.store.load(session_id)
            now = self.store.now()
            if session is not None and now - session.updated > self.session_timeout:
                self.store.remove(session)
                session = None
            if session is None or session.path != "/".join(segments):
                raise Refused(500, BG_E_SESSION_NOT_FOUND, "unknown session")
            if packet == "fragment":
                try:
                    await self._fragment(req, send, session)
                except Refused as refused:
                    await self._error(req, send, refused, received=session.received)
            elif packet == "close-session":
                await self._close_session(req, send, session)
            else:
                await self._cancel_session(req, send, session)

    async def _fragment(self, req: _Request, send: Send, session: Session) -> None:
        if session.state == "closed":
            raise Refused(500, BG_E_SESSION_NOT_FOUND, "the session was closed")
        crange = fragment_range(req.header("content-range"))
        if crange is None:
            raise Refused(400, E_INVALIDARG, "missing or invalid Content-Range")
        encoding = (req.header("content-encoding") or "identity").strip().lower()
        if encoding not in ("identity", ""):
            raise Refused(400, E_INVALIDARG, "only identity Content-Encoding is supported")
        length_text = (req.header("content-length") or "").strip()
        if not length_text.isdigit():
            raise Refused(400, E_INVALIDARG, "Content-Length missing or invalid")
        if int(length_text) != crange.length:
            raise Refused(400, E_INVALIDARG, "Content-Length does not match Content-Range")
        if self.max_upload_size is not None and crange.total > self.max_upload_size:
            raise Refused(413, BG_E_TOO_LARGE, "the upload is larger than the server allows")
        if session.total is not None and crange.total != session.total:
            raise Refused(400, E_INVALIDARG, "the total length changed between fragments")
        now = self.store.now()
        if session.total is None:
            if self.max_bytes_held is not None:
                if crange.total > self.max_bytes_held:
                    raise Refused(413, BG_E_TOO_LARGE, "the upload is larger than the server holds")
                await self._indexed()
                if self.store.held_bytes() + crange.total > self.max_bytes_held:
                    raise _busy("the server holds as many upload bytes as it allows")
            session.total = crange.total
            self.store.save(session)  # reserve the bytes now, before the body arrives
        session.updated = now
        if session.state == "complete":  # a resend after the file went into place
            await req.drain()
            await self._ensure_reply(session)
            headers = [
                *self._session_headers(req, session),
                ("BITS-Received-Content-Range", str(session.received)),
            ]
            await self._ack(req, send, 200, headers)
            return
        if crange.first > session.received:
            self.store.save(session)
            complete = await req.drain()
            headers = [
                ("BITS-Session-Id", session.header_id),
                ("BITS-Received-Content-Range", str(session.received)),
                ("X-Bitsnb-Reason", "fragment starts after the next byte expected"),
            ]
            await self._ack(req, send, 416, headers, close=not complete)
            return
        written, failure = await self._write_body(req, session, crange.first, crange.length)
        session.received += written
        session.updated = self.store.now()
        self.store.save(session)
        if failure is not None:
            raise failure
        if req.disconnected:
            return  # nobody to answer; the bytes that did arrive are kept
        if session.received == session.total:
            await self._commit(session)
        headers = [
            *self._session_headers(req, session),
            ("BITS-Received-Content-Range", str(session.received)),
        ]
        await self._ack(req, send, 200, headers)

    async def _write_body(
        self, req: _Request, session: Session, first: int, length: int
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

    async def _commit(self, session: Session) -> None:
        """Move the complete file to its destination (atomic), then produce the reply."""
        dest = resolve_destination(self.root, tuple(session.path.split("/")))
        try:
            await asyncio.to_thread(_place, session.data_path, dest)
        except OSError as exc:
            code = ERROR_DISK_FULL if exc.errno == errno.ENOSPC else BG_E_HTTP_ERROR_500
            raise Refused(500, code, "cannot move the upload into place") from exc
        session.state = "complete"
        session.updated = self.store.now()
        self.store.save(session)
        await self._ensure_reply(session)

    async def _ensure_reply(self, session: Session) -> None:
        """Run the reply function once per session (again on a resend if it failed)."""
        if self._reply is None or session.reply:
            return
        dest = self.root.joinpath(*session.path.split("/"))
        try:
            body = await asyncio.to_thread(self._reply, dest, session.header_id)
            if not isinstance(body, bytes | bytearray | memoryview):
                raise TypeError(f"the reply function returned {type(body).__name__}, not bytes")
            tmp = session.reply_path.with_suffix(".tmp")
            tmp.write_bytes(body)
            os.replace(tmp, session.reply_path)
        except Exception as exc:
            raise Refused(
                500,
                BG_E_HTTP_ERROR_500,
                f"the reply application failed: {type(exc).__name__}",
                CONTEXT_REMOTE_APPLICATION,
            ) from exc
        session.reply = True
        session.reply_type = self._reply_type
        self.store.save(session)

    async def _close_session(self, req: _Request, send: Send, session: Session) -> None:
        await req.drain()
        if req.disconnected:
            return
        if (
            session.state == "open"
            and session.total is not None
            and session.received == session.total
        ):
            await self._commit(session)  # all bytes arrived but the final Ack was lost
        if session.state == "open":  # closed before the last byte: the partial upload goes
            self.store.remove(session)
            await self._ack(req, send, 200, [("BITS-Session-Id", session.header_id)])
            return
        if session.state == "complete":
            session.state = "closed"
            session.updated = self.store.now()
            if session.reply:
                self.store.drop_data(session)
                self.store.save(session)  # kept to serve the reply until it expires
            else:
                self.store.remove(session)
        await self._ack(req, send, 200, self._session_headers(req, session))

    async def _cancel_session(self, req: _Request, send: Send, session: Session) -> None:
        await req.drain()
        if req.disconnected:
            return
        # Open: the partial upload goes. Complete/closed: the file stays, only the reply goes.
        self.store.remove(session)
        await self._ack(req, send, 200, [("BITS-Session-Id", session.header_id)])

    # -- GET/HEAD: reply bodies ----------------------------------------------------------------

    async def _serve_reply(self, req: _Request, send: Send, *, head: bool) -> None:
        await req.drain()
        m = _REPLY_PATH.fullmatch(req.raw_path)
        session_id = parse_session_id(m.group(1).decode("ascii")) if m else None
        session = self.store.load(session_id) if session_id else None
        if session is not None and self.store.now() - session.updated > self.session_timeout:
            self.store.remove(session)
            session = None
        fh = None
        if session is not None and session.reply:
            with contextlib.suppress(OSError):
                fh = open(session.reply_path, "rb")
        if session is None or fh is None:
            await _send_response(send, 404, [("Content-Length", "0")])
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
            wanted = _single_range(req.header("range"), size)
            if_range = (req.header("if-range") or "").strip()
            if wanted is not None and if_range and if_range not in (etag, last_modified):
                wanted = None
            if wanted == "unsatisfiable":
                headers += [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
                await _send_response(send, 416, headers)
                return
            if isinstance(wanted, tuple):
                start, end = wanted
                status, count = 206, end - start + 1
                headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            headers.append(("Content-Length", str(count)))
            encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
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


def _busy(reason: str) -> Refused:
    """503 with Retry-After: a cap is reached; the client's job waits and tries again."""
    return Refused(503, BG_E_HTTP_ERROR_503, reason, headers=(("Retry-After", _RETRY_AFTER),))


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from ``Authorization: Basic ...`` (RFC 7617), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def _log_sweep_failure(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        _log.error("expiring upload sessions failed", exc_info=exc)


def _single_range(
    header: str | None, size: int
) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """A single ``bytes=`` range as (start, end); None = serve it all (absent, multi or odd)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header, re.I)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        suffix = int(m.group(2))
        if suffix == 0:
            return "unsatisfiable"
        return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, size - 1)


def _place(src: Path, dest: Path) -> None:
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


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
