"""``UploadServer``: the upload app under uvicorn in a daemon thread, with fault injection.

For tests and demos (like ``bitsnb.testing.FileServer``): loopback only, stoppable and restartable
on the same root and port, and a small fault API for client tests::

    with UploadServer(tmp_path, max_upload_size=10_000_000) as server:
        server.inject("drop", after=4096)             # next Fragment: cut after 4 KiB of body
        server.inject("busy", retry_after=2)          # next Fragment: 503 + Retry-After: 2
        server.inject("error", code=0x8020001F, fmt="decimal", packet="create-session")
        server.inject("extra_headers", times=3)       # next 3 Fragment Acks carry unknown headers

Fault kinds (each hits the next ``times`` matching ``BITS_POST`` packets, ``-1`` = forever;
``packet`` names the packet type, default ``"fragment"``, ``None`` = any):

* ``"drop"``: the server reads ``after`` body bytes (the app keeps what it got, as after a real
  network cut), then closes the TCP connection without an answer. With ``after`` >= the body
  length the packet is processed completely and only its Ack is lost.
* ``"busy"``: 503 with ``Retry-After: <retry_after>``, no BITS headers; the packet is not processed.
* ``"error"``: an error Ack (``status``, default 500) with ``BITS-Error-Code``/``BITS-Error`` =
  ``code`` written as ``fmt`` (``"hex"`` 0x8020001F, ``"bare"`` 8020001f, ``"decimal"``
  2149580831, ``"signed"`` -2145386465) and ``BITS-Error-Context`` = ``context``; not processed.
* ``"extra_headers"``: the packet is processed normally; its Ack also carries ``headers``
  (default: a few unknown ``X-``/``BITS-`` headers a client must ignore).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from bitsnb.server._app import Message, Receive, Scope, Send, UploadApp, create_app
from bitsnb.server._protocol import (
    BG_E_HTTP_ERROR_500,
    CONTEXT_REMOTE_FILE,
    STATE_DIR,
    format_context,
)

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

__all__ = ["FaultKind", "PacketRecord", "UploadServer"]

FaultKind = Literal["drop", "busy", "error", "extra_headers"]
CodeFormat = Literal["hex", "bare", "decimal", "signed"]
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_DEFAULT_EXTRA = {"X-Bitsnb-Unexpected": "1", "BITS-Future-Extension": "ignore-me"}


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


@dataclass
class _Fault:
    kind: FaultKind
    remaining: int
    packet: str | None
    after: int
    status: int
    retry_after: int
    code: int
    context: int
    fmt: CodeFormat
    headers: tuple[tuple[str, str], ...]


def format_code(code: int, fmt: CodeFormat) -> str:
    """An HRESULT in one of the forms servers use in the wild."""
    unsigned = code & 0xFFFFFFFF
    if fmt == "hex":
        return f"0x{unsigned:08X}"
    if fmt == "bare":
        return f"{unsigned:08x}"
    if fmt == "decimal":
        return str(unsigned)
    return str(unsigned - (1 << 32) if unsigned & 0x80000000 else unsigned)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _abort_connection(send: Send) -> None:
    """Close the TCP connection under this request without answering.

    ASGI has no "drop" message, so this reaches the server's transport through the ``send``
    callable (uvicorn's h11 and httptools protocols both keep it on the bound object). Elsewhere
    it falls back to a started response that is cut short, which a client sees as a broken read.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if isinstance(transport, asyncio.Transport):
        transport.abort()
        for _ in range(3):  # let connection_lost run, so the server does not answer 500 itself
            await asyncio.sleep(0)
        return
    await send(
        {"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"1")]}
    )
    raise ConnectionAbortedError("injected drop")


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
        fault = self.owner._take_fault(rec) if method == "BITS_POST" else None
        rec.fault = fault.kind if fault else None
        self.owner._log(rec)
        lock = self.owner._lock

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                with lock:
                    rec.body_bytes += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                with lock:
                    rec.status = int(message["status"])
                if fault is not None and fault.kind == "extra_headers":
                    message = dict(message)
                    message["headers"] = [
                        *message.get("headers", []),
                        *_encode(list(fault.headers)),
                    ]
            await send(message)

        try:
            if fault is None or fault.kind == "extra_headers":
                await self.app(scope, counting_receive, recording_send)
            elif fault.kind == "drop":
                await self._drop(scope, receive, send, rec, fault.after)
            else:
                await self._answer(fault, headers, counting_receive, recording_send)
        finally:
            with lock:
                rec.finished = True

    async def _drop(
        self, scope: Scope, receive: Receive, send: Send, rec: PacketRecord, after: int
    ) -> None:
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
        await _abort_connection(send)

    async def _answer(
        self, fault: _Fault, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        while True:  # read and discard the body, so the client can read our answer
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if fault.kind == "busy":
            out = [("Retry-After", str(fault.retry_after)), ("Content-Length", "0")]
            status = fault.status
        else:
            value = format_code(fault.code, fault.fmt)
            out = [
                ("BITS-Packet-Type", "Ack"),
                ("BITS-Error-Code", value),
                ("BITS-Error", value),
                ("BITS-Error-Context", format_context(fault.context)),
            ]
            session = headers.get("bits-session-id", "").strip()
            if session:
                out.append(("BITS-Session-Id", session))
            out.append(("Content-Length", "0"))
            status = fault.status
        await send({"type": "http.response.start", "status": status, "headers": _encode(out)})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class UploadServer:
    """The BITS upload app (``create_app(root, **app_kwargs)``) on ``http://127.0.0.1:PORT``.

    ``port=0`` picks a free port on the first ``start()``; later starts reuse it, so a client can
    resume after ``stop()`` + ``start()`` (sessions persist under ``root/.bits-sessions``).
    """

    def __init__(self, root: str | Path, port: int = 0, **app_kwargs: Any) -> None:
        self._root = Path(root).absolute()
        self._port = port
        self._app_kwargs = app_kwargs
        self.app: UploadApp = create_app(self._root, **app_kwargs)  # validates the arguments
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._records: list[PacketRecord] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

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
        config = uvicorn.Config(
            _FaultLayer(self.app, self),
            interface="asgi3",
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

    def restart(self) -> Self:
        """``stop()`` then ``start()`` on the same root and port."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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
    def root(self) -> Path:
        """Folder the uploads land in."""
        return self._root

    @property
    def state_dir(self) -> Path:
        """The hidden folder holding one sub-folder per session."""
        return self.app.root / STATE_DIR

    def url(self, name: str) -> str:
        """Upload URL for ``name`` under root (percent-quoted, "/" kept)."""
        return f"{self.base_url}/{urllib.parse.quote(name.lstrip('/'))}"

    def path(self, name: str) -> Path:
        """Where an upload to ``url(name)`` lands."""
        return self._root / name.lstrip("/")

    # -- faults and log ------------------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind,
        times: int = 1,
        *,
        packet: str | None = "fragment",
        after: int = 0,
        status: int | None = None,
        retry_after: int = 1,
        code: int = BG_E_HTTP_ERROR_500,
        context: int = CONTEXT_REMOTE_FILE,
        fmt: CodeFormat = "hex",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Apply a fault to the next ``times`` matching packets (see the module docstring)."""
        if kind not in ("drop", "busy", "error", "extra_headers"):
            raise ValueError(f"unknown fault kind {kind!r}")
        if times == 0 or times < -1 or after < 0:
            raise ValueError("times must be >= 1 or -1, after >= 0")
        default_status = 503 if kind == "busy" else 500
        fault = _Fault(
            kind=kind,
            remaining=times,
            packet=None if packet is None else packet.strip().lower(),
            after=after,
            status=default_status if status is None else status,
            retry_after=retry_after,
            code=code,
            context=context,
            fmt=fmt,
            headers=tuple((headers if headers is not None else _DEFAULT_EXTRA).items()),
        )
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Forget all injected faults."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, rec: PacketRecord) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.packet is None or fault.packet == rec.packet.lower():
                    if fault.remaining > 0:
                        fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _log(self, rec: PacketRecord) -> None:
        with self._lock:
            self._records.append(rec)

    @property
    def packets(self) -> list[PacketRecord]:
        """Snapshot (copies) of the requests seen, oldest first."""
        with self._lock:
            return [dataclasses.replace(rec) for rec in self._records]

    def reset_log(self) -> None:
        """Forget the logged requests."""
        with self._lock:
            self._records.clear()
