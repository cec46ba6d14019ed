"""What the upload server answers: Acks, refusals with the BITS error headers, a session's
headers and its reply URL."""

from __future__ import annotations

import re

from bitsnb.server._asgi import Request, Send, send_response
from bitsnb.server._protocol import (
    BG_E_HTTP_ERROR_503,
    STATE_DIR,
    Refused,
    format_context,
    format_hresult,
)
from bitsnb.server._sessions import Session

__all__ = ["ack", "busy", "error_headers", "refuse", "session_headers"]

_HOST_OK = re.compile(r"[A-Za-z0-9.\-\[\]:_]+")
_RETRY_AFTER = "60"  # seconds, on the 503 a cap answers with


def error_headers(value: str, context: int) -> list[tuple[str, str]]:
    """Both error headers (SDK ``BITS-Error-Code`` and MC-BUP ``BITS-Error``) with the HRESULT
    written as *value*, plus the context."""
    return [
        ("BITS-Error-Code", value),
        ("BITS-Error", value),
        ("BITS-Error-Context", format_context(context)),
    ]


def busy(reason: str) -> Refused:
    """503 with Retry-After: a cap is reached; the client's job waits and tries again."""
    return Refused(503, BG_E_HTTP_ERROR_503, reason, headers=(("Retry-After", _RETRY_AFTER),))


async def ack(
    req: Request,
    send: Send,
    status: int,
    headers: list[tuple[str, str]],
    *,
    close: bool = False,
) -> None:
    """A ``BITS-Packet-Type: Ack`` with *headers* (nothing once the client has gone)."""
    if req.disconnected:
        return
    all_headers = [("BITS-Packet-Type", "Ack"), *headers, ("Content-Length", "0")]
    if close:
        all_headers.append(("Connection", "close"))
    req.responded = True
    await send_response(send, status, all_headers)


async def refuse(
    req: Request,
    send: Send,
    refused: Refused,
    *,
    received: int | None = None,
) -> None:
    """The Ack of a refused packet: its status, the BITS error headers and the reason; the
    unread body is drained (the connection closes if it could not be)."""
    complete = await req.drain()
    headers: list[tuple[str, str]] = []
    if refused.code:
        headers += error_headers(format_hresult(refused.code), refused.context)
    session_header = req.header("bits-session-id")
    if session_header and session_header.strip():
        headers.append(("BITS-Session-Id", session_header.strip()))
    if received is not None:
        headers.append(("BITS-Received-Content-Range", str(received)))
    headers.extend(refused.headers)
    headers.append(("X-Bitsnb-Reason", refused.reason.encode("ascii", "replace").decode()))
    await ack(req, send, refused.status, headers, close=not complete)


def _reply_url(req: Request, session: Session) -> str:
    scheme = str(req.scope.get("scheme", "http"))
    host = (req.header("host") or "").strip()
    if not host or not _HOST_OK.fullmatch(host):
        server = req.scope.get("server") or ("127.0.0.1", 80)
        name = str(server[0])
        host = f"[{name}]:{server[1]}" if ":" in name else f"{name}:{server[1]}"
    root_path = str(req.scope.get("root_path", "")).rstrip("/")
    return f"{scheme}://{host}{root_path}/{STATE_DIR}/{session.id}/reply"


def session_headers(req: Request, session: Session) -> list[tuple[str, str]]:
    """``BITS-Session-Id``, and ``BITS-Reply-URL`` once the session's reply is there."""
    headers = [("BITS-Session-Id", session.header_id)]
    if session.reply and session.state in ("complete", "closed"):
        headers.append(("BITS-Reply-URL", _reply_url(req, session)))
    return headers
