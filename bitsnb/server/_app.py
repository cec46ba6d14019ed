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
import errno
import logging
import os
import re
from pathlib import Path
from typing import Literal

from bitsnb.server._answers import ack, busy, refuse, session_headers
from bitsnb.server._asgi import Receive, Request, Scope, Send, lifespan, send_response
from bitsnb.server._auth import Authenticator, basic_credentials
from bitsnb.server._protocol import (
    BG_E_HTTP_ERROR_500,
    BG_E_SESSION_NOT_FOUND,
    BG_E_TOO_LARGE,
    CONTEXT_REMOTE_APPLICATION,
    E_INVALIDARG,
    ERROR_DISK_FULL,
    Refused,
    fragment_range,
    parse_session_id,
    pick_protocol,
    upload_segments,
)
from bitsnb.server._replies import ReplyFunc, default_reply, serve_reply
from bitsnb.server._sessions import Session, SessionLocks, SessionStore, resolve_destination
from bitsnb.server._writing import place, write_body

__all__ = ["ReplyFunc", "UploadApp", "create_app", "default_reply"]

_log = logging.getLogger("bitsnb.server")

_MAX_SWEEP_INTERVAL = 60.0
_MAX_UNAUTHENTICATED_BODY = 1 << 20  # a refused request's body is read this far, then cut
DEFAULT_MAX_SESSIONS = 1000
DEFAULT_MAX_SESSIONS_PER_CLIENT = 100


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
        self._locks = SessionLocks()
        self._next_sweep = 0.0
        self._sweep: tuple[asyncio.AbstractEventLoop, asyncio.Future[int]] | None = None

    def __repr__(self) -> str:
        return f"UploadApp(root={str(self.root)!r})"

    # -- entry point ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI 3 entry point."""
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
            return
        req = Request(scope, receive)
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
                await serve_reply(
                    req, send, self.store, self.session_timeout, head=method == "HEAD"
                )
            else:
                await req.drain()
                await send_response(
                    send, 405, [("Allow", "BITS_POST, GET, HEAD"), ("Content-Length", "0")]
                )
        except OSError as exc:  # anything the handlers did not map: still answer like BITS
            if not req.responded and not req.disconnected:
                code = ERROR_DISK_FULL if exc.errno == errno.ENOSPC else BG_E_HTTP_ERROR_500
                await refuse(req, send, Refused(500, code, "server file-system error"))

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

    async def _client(self, req: Request) -> str | None:
        """Who sends the request: ``user:NAME`` once authenticated, ``ip:ADDRESS`` when the app
        has no ``authenticate``; None when credentials are missing or wrong."""
        if self.authenticate is None:
            peer = req.scope.get("client")
            return f"ip:{peer[0]}" if peer else "ip:"
        credentials = basic_credentials(req.header("authorization"))
        if credentials is None:
            return None
        user, password = credentials
        try:
            accepted = await asyncio.to_thread(self.authenticate, user, password)
        except Exception:
            _log.exception("the authenticate hook failed; the request is refused")
            return None
        return f"user:{user}" if accepted is True else None

    async def _unauthorized(self, req: Request, send: Send) -> None:
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
        await send_response(send, 401, headers)

    # -- acks ----------------------------------------------------------------------------------

    # -- BITS_POST -----------------------------------------------------------------------------

    async def _bits_post(self, req: Request, send: Send, client: str) -> None:
        packet = (req.header("bits-packet-type") or "").strip().lower()
        try:
            if packet == "ping":
                await req.drain()
                echo = (req.header("bits-session-id") or "").strip()
                await ack(req, send, 200, [("BITS-Session-Id", echo)] if echo else [])
                return
            segments = upload_segments(req.raw_path)
            if packet == "create-session":
                await self._create_session(req, send, segments, client)
            elif packet in ("fragment", "close-session", "cancel-session"):
                await self._session_packet(req, send, packet, segments)
            else:
                raise Refused(400, E_INVALIDARG, "missing or unknown BITS-Packet-Type")
        except Refused as refused:
            await refuse(req, send, refused)

    async def _create_session(
        self, req: Request, send: Send, segments: tuple[str, ...], client: str
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
            raise busy("the server holds as many upload sessions as it allows")
        if (
            self.max_sessions_per_client is not None
            and self.store.count(client) >= self.max_sessions_per_client
        ):
            raise busy("this client holds as many upload sessions as the server allows")
        session = self.store.create("/".join(segments), self.store.now(), client)
        headers = [
            ("BITS-Protocol", protocol),
            ("BITS-Session-Id", session.header_id),
            ("Accept-Encoding", "identity"),
        ]
        await ack(req, send, 200, headers)

    async def _session_packet(
        self, req: Request, send: Send, packet: str, segments: tuple[str, ...]
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
                    await refuse(req, send, refused, received=session.received)
            elif packet == "close-session":
                await self._close_session(req, send, session)
            else:
                await self._cancel_session(req, send, session)

    async def _fragment(self, req: Request, send: Send, session: Session) -> None:
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
                    raise busy("the server holds as many upload bytes as it allows")
            session.total = crange.total
            self.store.save(session)  # reserve the bytes now, before the body arrives
        session.updated = now
        if session.state == "complete":  # a resend after the file went into place
            await req.drain()
            await self._ensure_reply(session)
            headers = [
                *session_headers(req, session),
                ("BITS-Received-Content-Range", str(session.received)),
            ]
            await ack(req, send, 200, headers)
            return
        if crange.first > session.received:
            self.store.save(session)
            complete = await req.drain()
            headers = [
                ("BITS-Session-Id", session.header_id),
                ("BITS-Received-Content-Range", str(session.received)),
                ("X-Bitsnb-Reason", "fragment starts after the next byte expected"),
            ]
            await ack(req, send, 416, headers, close=not complete)
            return
        written, failure = await write_body(req, session, crange.first, crange.length)
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
            *session_headers(req, session),
            ("BITS-Received-Content-Range", str(session.received)),
        ]
        await ack(req, send, 200, headers)

    async def _commit(self, session: Session) -> None:
        """Move the complete file to its destination (atomic), then produce the reply."""
        dest = resolve_destination(self.root, tuple(session.path.split("/")))
        try:
            await asyncio.to_thread(place, session.data_path, dest)
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

    async def _close_session(self, req: Request, send: Send, session: Session) -> None:
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
            await ack(req, send, 200, [("BITS-Session-Id", session.header_id)])
            return
        if session.state == "complete":
            session.state = "closed"
            session.updated = self.store.now()
            if session.reply:
                self.store.drop_data(session)
                self.store.save(session)  # kept to serve the reply until it expires
            else:
                self.store.remove(session)
        await ack(req, send, 200, session_headers(req, session))

    async def _cancel_session(self, req: Request, send: Send, session: Session) -> None:
        await req.drain()
        if req.disconnected:
            return
        # Open: the partial upload goes. Complete/closed: the file stays, only the reply goes.
        self.store.remove(session)
        await ack(req, send, 200, [("BITS-Session-Id", session.header_id)])


def _log_sweep_failure(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        _log.error("expiring upload sessions failed", exc_info=exc)
