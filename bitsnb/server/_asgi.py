"""ASGI 3 plumbing of the upload server: the message types, a request whose body is read chunk
by chunk, whole responses, and the lifespan protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "Message",
    "Receive",
    "Request",
    "Scope",
    "Send",
    "encode_headers",
    "lifespan",
    "send_response",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MAX_DRAIN = 1 << 26  # an error answer reads and discards at most 64 MiB of an unwanted body


class Request:
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


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header fields as ASGI sends them: lower-case names, latin-1 bytes."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def send_response(
    send: Send,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> None:
    """A whole response: its status and headers, then its body in one message."""
    await send(
        {"type": "http.response.start", "status": status, "headers": encode_headers(headers)}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's startup and shutdown (the app holds nothing to open or close)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
