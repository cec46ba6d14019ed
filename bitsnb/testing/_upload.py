"""``UploadServer``: the BITS upload app under uvicorn in a daemon thread, with fault injection.

For tests and demos (like ``FileServer``, on the same ``ThreadedServer`` base and the same
``Fault`` vocabulary): loopback only, stoppable and restartable on the same root and port::

    with UploadServer(tmp_path, max_upload_size=10_000_000) as server:
        server.inject("*", Fault.drop_after(4096))          # next Fragment: cut after 4 kB
        server.inject("*", Fault.status(503, retry_after=2))  # next Fragment: busy
        server.inject("*", Fault.bits_error(0x8020001F, fmt="decimal"), packet="create-session")
        server.inject("*", Fault.extra_headers(times=3))    # next 3 Acks carry unknown headers

A fault hits the next ``times`` ``BITS_POST`` packets whose path matches the glob and whose
``BITS-Packet-Type`` is ``packet`` (default ``"fragment"``, ``None`` = any). Kinds applied:
``drop_after``, ``status``, ``bits_error``, ``extra_headers``.

A dropped packet closes its TCP connection with no answer. ASGI has no message for that, so the
server runs uvicorn with its h11 protocol class extended (uvicorn's ``Config(http=<class>)``
hook) to note each connection's transport by peer address; the fault layer aborts the transport
of the request's ``scope["client"]``. Nothing reaches into uvicorn's objects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from bitsnb.server import STATE_DIR, UploadApp, create_app
from bitsnb.server._answers import error_headers
from bitsnb.server._asgi import Message, Receive, Scope, Send, encode_headers, send_response
from bitsnb.testing._base import ThreadedServer
from bitsnb.testing._faults import Fault, FaultKind, format_code

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

__all__ = ["PacketRecord", "UploadServer"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


@dataclass
class PacketRecord:
    """One request as the server saw it (``server.packets``)."""

    method: str
    path: str  # raw URL path
    packet: str  # BITS-Packet-Type as sent ("" for GET/HEAD)
    session_id: str | None
    content_range: str | None
    status: int = 0  # 0: no answer (dropped, or still running)
    body_bytes: int = 0  # request-body bytes the server read
    fault: FaultKind | None = None
    finished: bool = False
    client: str = ""  # "host:port" of the connection the packet came on

    def copy(self) -> PacketRecord:
        """Return an independent snapshot of this record."""
        return dataclasses.replace(self)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


class _FaultLayer:
    """ASGI middleware in front of the app: logs packets and applies injected faults."""

    def __init__(self, app: UploadApp, owner: UploadServer) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
            for k, v in scope.get("headers", [])
        }
        method = str(scope.get("method", "")).upper()
        raw = scope.get("raw_path") or str(scope.get("path", "")).encode("utf-8")
        rec = PacketRecord(
            method=method,
            path=bytes(raw).decode("latin-1"),
            packet=headers.get("bits-packet-type", "").strip(),
            session_id=headers.get("bits-session-id"),
            content_range=headers.get("content-range"),
            client=_client_address(scope),
        )
        name = urllib.parse.unquote(rec.path).lstrip("/")
        fault = self.owner._take_fault(name, rec.packet) if method == "BITS_POST" else None
        rec.fault = fault.kind if fault else None
        self.owner._begin(rec)
        lock = self.owner._lock

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                with lock:
                    rec.body_bytes += len(message.get("body", b""))
                    self.owner.arrivals.append((time.monotonic(), len(message.get("body", b""))))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                with lock:
                    rec.status = int(message["status"])
                if fault is not None and fault.kind == "extra_headers":
                    # the fault's headers replace the app's of the same name (a server that
                    # lies about what it received, or names another host for the reply)
                    extra = encode_headers(list(fault.headers))
                    names = {name.lower() for name, _ in extra}
                    message = dict(message)
                    message["headers"] = [
                        *(h for h in message.get("headers", []) if h[0].lower() not in names),
                        *extra,
                    ]
            await send(message)

        try:
            if fault is None or fault.kind == "extra_headers":
                await self.app(scope, counting_receive, recording_send)
            elif fault.kind == "drop_after":
                await self._drop(scope, receive, rec, fault.nbytes)
            else:
                await self._answer(fault, headers, counting_receive, recording_send)
        finally:
            self.owner._finish(rec)

    async def _drop(self, scope: Scope, receive: Receive, rec: PacketRecord, after: int) -> None:
        taken = 0
        cut = False

        async def cut_receive() -> Message:
            nonlocal taken, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            end = taken + len(body)
            if end < after or (end == after and not more):
                taken = end
                with self.owner._lock:
                    rec.body_bytes = taken
                return message  # still below the cut (or the whole body fits under it)
            cut = True  # hand over the bytes up to the cut, then the connection "breaks"
            keep = body[: after - taken]
            taken = after
            with self.owner._lock:
                rec.body_bytes = taken
            return {"type": "http.request", "body": keep, "more_body": True}

        async def swallow(message: Message) -> None:
            return None

        await self.app(scope, cut_receive, swallow)
        await self.owner._abort(scope)

    async def _answer(
        self, fault: Fault, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        while True:  # read and discard the body, so the client can read our answer
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if fault.kind == "status":
            out = [("Content-Length", "0")]
            if fault.retry_after is not None:
                out.insert(0, ("Retry-After", str(math.ceil(fault.retry_after))))
        else:
            value = format_code(fault.hresult, fault.fmt)
            out = [("BITS-Packet-Type", "Ack"), *error_headers(value, fault.context)]
            session = headers.get("bits-session-id", "").strip()
            if session:
                out.append(("BITS-Session-Id", session))
            out.append(("Content-Length", "0"))
        await send_response(send, fault.code, out)


def _tracking_protocol(connections: dict[tuple[str, int], asyncio.Transport]) -> type[Any]:
    """uvicorn's h11 protocol, noting each connection's transport by peer address (on the loop)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Tracking(H11Protocol):
        peer: tuple[str, int] | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            address = transport.get_extra_info("peername")
            if address:
                self.peer = (str(address[0]), int(address[1]))
                connections[self.peer] = transport
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None:
                connections.pop(self.peer, None)
            super().connection_lost(exc)

    return Tracking


class UploadServer(ThreadedServer[PacketRecord]):
    """The BITS upload app (``create_app(root, **app_kwargs)``) on ``http://127.0.0.1:PORT``.

    ``port=0`` picks a free port on the first ``start()``; later starts reuse it, so a client can
    resume after ``stop()`` + ``start()`` (sessions persist under ``root/.bits-sessions``).
    """

    fault_kinds = frozenset({"drop_after", "status", "bits_error", "extra_headers"})

    def __init__(self, root: str | Path, port: int = 0, **app_kwargs: Any) -> None:
        super().__init__(Path(root).absolute())
        self._port = port
        self._app_kwargs = app_kwargs
        self.app: UploadApp = create_app(self._root, **app_kwargs)  # validates the arguments
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._connections: dict[tuple[str, int], asyncio.Transport] = {}
        self.arrivals: list[tuple[float, int]] = []  # see arrival_log

    def __repr__(self) -> str:
        return f"UploadServer(root={str(self._root)!r}, port={self._port})"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve in a daemon thread (no-op when running); returns self."""
        try:
            import uvicorn
        except ImportError as exc:  # pragma: no cover - uvicorn is in the server/test extras
            raise RuntimeError("UploadServer needs uvicorn: pip install 'bitsnb[server]'") from exc
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        self.app = create_app(self._root, **self._app_kwargs)  # fresh: state comes from disk
        self._connections = {}
        config = uvicorn.Config(
            _FaultLayer(self.app, self),
            interface="asgi3",
            http=_tracking_protocol(self._connections),
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"bitsnb-UploadServer-{self._port}",
            daemon=True,
        )
        self._server, self._thread, self._sock = server, thread, sock
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the upload server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (bounded); files and sessions stay on disk."""
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(_STOP_TIMEOUT)
        if sock is not None:
            sock.close()

    async def _abort(self, scope: Scope) -> None:
        """Close the TCP connection under this request without answering (on the loop)."""
        client = scope.get("client")
        transport = (
            self._connections.pop((str(client[0]), int(client[1])), None) if client else None
        )
        if transport is None:  # pragma: no cover - every connection is noted on arrival
            raise ConnectionAbortedError("injected drop: connection not found")
        transport.abort()
        for _ in range(3):  # let connection_lost run, so the server does not answer 500 itself
            await asyncio.sleep(0)

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known after the first ``start()`` when created with ``port=0``)."""
        if self._port == 0:
            raise RuntimeError("the port is chosen by start()")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_dir(self) -> Path:
        """The hidden folder holding one sub-folder per session."""
        return self.app.root / STATE_DIR

    def path(self, name: str) -> Path:
        """Where an upload to ``url(name)`` lands."""
        return self._root / name.lstrip("/")

    # -- faults and log ------------------------------------------------------------------------

    def inject(self, name_glob: str, fault: Fault, *, packet: str | None = "fragment") -> None:
        """Apply ``fault`` to the next ``fault.times`` ``BITS_POST`` packets whose path matches
        the glob and whose type is *packet* (``None``: any type); see the module docstring."""
        with self._lock:
            self._faults.add(name_glob, fault, packet)

    @property
    def arrival_log(self) -> list[tuple[float, int]]:
        """(monotonic time, bytes) of each piece of request body as the app read it: the wire
        clock of an upload (bandwidth caps are checked against it)."""
        with self._lock:
            return list(self.arrivals)

    @property
    def packets(self) -> list[PacketRecord]:
        """The requests seen, oldest first (the same snapshot as ``requests``)."""
        return self.requests
