"""A small synchronous BITS upload client [MC-BUP] for the server tests (not the product client).

One object per upload URL; each method sends one packet and returns the raw ``httpx.Response``
so tests can look at statuses and headers. ``upload()`` runs a whole session.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

UPLOAD_PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"


class BitsUploadError(Exception):
    """A packet was refused; carries the response."""

    def __init__(self, what: str, response: httpx.Response) -> None:
        super().__init__(f"{what}: HTTP {response.status_code} {error_code(response)}")
        self.response = response


def error_code(response: httpx.Response) -> int | None:
    """The HRESULT from ``BITS-Error-Code`` (or ``BITS-Error``), hex or decimal."""
    text = response.headers.get("bits-error-code") or response.headers.get("bits-error")
    if not text:
        return None
    text = text.strip()
    return int(text, 16) if text.lower().startswith("0x") else int(text) & 0xFFFFFFFF


def received(response: httpx.Response) -> int | None:
    """``BITS-Received-Content-Range``: the next byte the server expects."""
    text = response.headers.get("bits-received-content-range")
    return None if text is None else int(text)


@dataclass
class UploadResult:
    """What a finished session left behind."""

    session_id: str
    reply_url: str | None
    last_ack: httpx.Response


class BitsUploadClient:
    """Speaks Ping / Create-Session / Fragment / Close-Session / Cancel-Session to one URL."""

    def __init__(self, url: str, client: httpx.Client | None = None, timeout: float = 10.0):
        self.url = url
        self.client = client or httpx.Client(timeout=timeout)
        self.session_id: str | None = None

    def __enter__(self) -> BitsUploadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def post(
        self,
        packet: str,
        *,
        session: str | None = None,
        headers: dict[str, str] | None = None,
        content: bytes = b"",
    ) -> httpx.Response:
        """Send one ``BITS_POST`` packet (session defaults to the current one)."""
        hdrs = {"BITS-Packet-Type": packet, "Content-Length": str(len(content))}
        session = session or self.session_id
        if session and packet.lower() not in ("create-session", "ping"):
            hdrs["BITS-Session-Id"] = session
        hdrs.update(headers or {})
        return self.client.request("BITS_POST", self.url, headers=hdrs, content=content)

    def ping(self) -> httpx.Response:
        return self.post("Ping")

    def create_session(self) -> str:
        """Create-Session; remembers and returns the session id."""
        resp = self.post("Create-Session", headers={"BITS-Supported-Protocols": UPLOAD_PROTOCOL})
        if resp.status_code not in (200, 201):
            raise BitsUploadError("Create-Session", resp)
        self.session_id = resp.headers["bits-session-id"]
        return self.session_id

    def fragment(self, data: bytes, first: int, total: int) -> httpx.Response:
        """Send ``data`` as bytes ``first..first+len-1`` of ``total``."""
        crange = f"bytes {first}-{first + len(data) - 1}/{total}" if data else f"bytes */{total}"
        return self.post("Fragment", headers={"Content-Range": crange}, content=data)

    def close_session(self) -> httpx.Response:
        return self.post("Close-Session")

    def cancel_session(self) -> httpx.Response:
        return self.post("Cancel-Session")

    def send_from(self, data: bytes, offset: int, fragment_size: int) -> httpx.Response:
        """Send fragments from ``offset``, following the server's received range; last Ack."""
        total = len(data)
        for _ in range(100_000):  # bounded: a server that never advances fails the test
            piece = data[offset : offset + fragment_size]
            resp = self.fragment(piece, offset, total)
            if resp.status_code not in (200, 416):
                raise BitsUploadError("Fragment", resp)
            offset = received(resp) or 0
            if offset >= total:
                return resp
        raise AssertionError("the server never confirmed the whole file")

    def upload(self, data: bytes, fragment_size: int = 64 * 1024) -> UploadResult:
        """A whole session: create, send every fragment, close."""
        session = self.create_session()
        last = self.send_from(data, 0, fragment_size)
        reply_url = last.headers.get("bits-reply-url")
        resp = self.close_session()
        if resp.status_code != 200:
            raise BitsUploadError("Close-Session", resp)
        return UploadResult(session, reply_url, last)
