"""httpx's own transport with larger socket reads, from a network backend of its own rather
than from httpcore's ``READ_NUM_BYTES`` (a class attribute every httpx client shares)."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = ["fallback_transport"]


def fallback_transport(read_size: int, **kwargs: Any) -> httpx.AsyncHTTPTransport:
    """``httpx.AsyncHTTPTransport(**kwargs)`` reading up to *read_size* bytes a socket read.

    httpcore asks for 64 KiB a read, and each read costs about 80 µs of Python, so a larger
    read halves its CPU per byte (shared/perf-notes.md). The size is httpcore's class attribute
    ``AsyncHTTP11Connection.READ_NUM_BYTES``, shared with every httpx client in the process:
    instead this transport's pool gets a network backend of its own that reads more.
    """
    transport = httpx.AsyncHTTPTransport(**kwargs)
    pool = transport._pool  # httpcore's pool or proxy; both take their backend from here
    pool._network_backend = _WideReads(pool._network_backend, read_size)
    return transport


class _WideReads(httpcore.AsyncNetworkBackend):
    """A network backend whose streams read at least *size* bytes when asked for fewer."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, size: int) -> None:
        self._backend = backend
        self._size = size

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _WideStream(stream, self._size)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_unix_socket(path, timeout, socket_options)
        return _WideStream(stream, self._size)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _WideStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream, size: int) -> None:
        self._stream = stream
        self._size = size

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max(max_bytes, self._size), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        return _WideStream(stream, self._size)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
