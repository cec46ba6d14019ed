"""The httpx clients downloads go through: the policy's timeouts, TLS, redirect rules and
headers, plain GETs on the lean transport and the rest on httpx's own."""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from . import _codes
from ._enums import ErrorContext
from ._failures import TransferFailure
from ._models import Policy
from ._transport import LeanTransport, fallback_transport

__all__ = ["USER_AGENT", "build_client", "check_redirect", "stream_get"]

USER_AGENT = "bitsnb/0.1 (Microsoft BITS compatible)"


def _ssl_context(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx 0.28 wants an SSLContext for a CA bundle path (a str is deprecated)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


class _Deferred(httpx.AsyncBaseTransport):
    """A transport made by *make* on its first request (closing one never made is nothing)."""

    def __init__(self, make: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._make = make
        self._transport: httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = self._make()
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, which skips ``http.cookiejar``'s work (request and response wrappers,
    ~0.3 ms a response: a fifth of a small file's time in the loop) for a response that sets
    no cookie."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


class _Client(httpx.AsyncClient):
    """An httpx client whose own transports, direct and proxied, come from *make_transport*.

    httpx builds them in these two hooks, the proxied ones for the ``proxy`` argument and, when
    the client is given no transport, for the environment's proxy settings (``trust_env``).
    """

    def __init__(
        self,
        make_transport: Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport],
        **kwargs: Any,
    ) -> None:
        self._make_transport = make_transport
        super().__init__(**kwargs)
        self._cookies = _Cookies(self._cookies)  # httpx's setter would make a plain one

    def lean_route(self) -> LeanTransport | None:
        """The lean transport when a plain GET of this client goes to it unchanged: no proxy
        mounted (the environment's included; a ``NO_PROXY`` entry mounts None, the default
        transport), no cookie in the jar to send."""
        t = self._transport
        proxied = any(m is not None for m in self._mounts.values())
        if proxied or not isinstance(t, LeanTransport) or len(self.cookies.jar):
            return None
        return t

    async def follow(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        """Go on from a redirect *response* to *request* as httpx's own flow would (the
        response hooks on it, then the redirects, counted from it); the final response,
        unread."""
        try:
            for hook in self.event_hooks["response"]:
                await hook(response)
            await response.aread()
            target = self._build_redirect_request(request, response)
        finally:
            await response.aclose()
        return await self._send_handling_redirects(
            target, follow_redirects=self.follow_redirects, history=[response]
        )

    def _init_transport(
        self, *args: Any, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
    ) -> httpx.AsyncBaseTransport:
        return transport if transport is not None else self._make_transport(None)

    def _init_proxy_transport(
        self, proxy: httpx.Proxy, *args: Any, **kwargs: Any
    ) -> httpx.AsyncBaseTransport:
        return self._make_transport(proxy)


def build_client(
    policy: Policy,
    transport: httpx.AsyncBaseTransport | None,
    proxy: str | None,
    trust_env: bool,
    limits: httpx.Limits,
    *,
    lean: bool = False,
) -> httpx.AsyncClient:
    """An httpx client with the policy's timeouts, TLS, redirect rules and headers.

    *lean*: plain GETs go through ``LeanTransport``; proxied requests, and what the lean
    transport does not serve, go through httpx's own transport with larger reads. With
    ``policy.http2`` that one offers HTTP/2 and serves every https request.
    """
    p = policy
    tls: ssl.SSLContext | None = None

    def context() -> ssl.SSLContext:
        # one TLS context (CA bundle loaded once) for all of them, made when first needed
        nonlocal tls
        if tls is None:
            tls = httpx.create_ssl_context(verify=_ssl_context(p.verify), trust_env=trust_env)
        return tls

    def make_transport(through: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
        def fallback() -> httpx.AsyncBaseTransport:
            return fallback_transport(
                p.read_size,
                verify=context(),
                limits=limits,
                trust_env=trust_env,
                proxy=through,
                http2=p.http2,
            )

        if not lean or through is not None:
            return fallback()
        # the lean transport serves plain GETs itself: httpx's transport and the TLS context
        # (the CA bundle loaded) are made only once a request needs them; a manager's first
        # small file over plain http took 38-53 ms from its start with them, 11-14 without
        return LeanTransport(
            _Deferred(fallback),
            ssl_context=None if p.http2 else context,  # None: https goes to the HTTP/2 transport
            read_size=p.read_size,
            max_idle_per_host=limits.max_keepalive_connections or 1,
            receive_buffer=p.receive_buffer,
        )

    return _Client(
        make_transport,
        transport=transport,
        proxy=proxy,
        trust_env=trust_env,
        follow_redirects=True,
        max_redirects=p.max_redirects,
        timeout=httpx.Timeout(p.read_timeout, connect=p.connect_timeout, pool=None),
        limits=limits,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        event_hooks={"response": [functools.partial(check_redirect, policy)]},
    )


@contextlib.asynccontextmanager
async def stream_get(
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    auth: httpx.Auth | tuple[str, str] | None,
) -> AsyncIterator[httpx.Response]:
    """``client.stream("GET", url, ...)``, sent straight to the lean transport where that is all
    httpx would do: no auth, no proxy, no cookie to send. httpx's per-request flow (the request
    built from the client's URL and header merging, the auth and redirect generators, the event
    hooks) cost about a fifth of a small file's time on the loop. A redirect goes on through
    the client's own flow from that response (its hooks, such as ``check_redirect``, its
    redirect count and rules); a response that sets a cookie fills the jar as httpx would."""
    lean = client.lean_route() if isinstance(client, _Client) and auth is None else None
    if lean is None or not isinstance(client, _Client):
        async with client.stream("GET", url, headers=headers, auth=auth) as resp:
            yield resp
        return
    merged = client.headers.copy()
    merged.update(headers)
    request = httpx.Request(
        "GET", url, headers=merged, extensions={"timeout": client.timeout.as_dict()}
    )
    resp = await lean.handle_async_request(request)
    resp.request = request
    try:
        client.cookies.extract_cookies(resp)
        if resp.has_redirect_location:
            resp = await client.follow(request, resp)
        yield resp
    finally:
        await resp.aclose()


async def check_redirect(policy: Policy, response: httpx.Response) -> None:
    """Refuse a redirect to another scheme (https → http only when the policy allows it)."""
    if not response.has_redirect_location:
        return
    try:
        target = response.request.url.join(response.headers["location"])
    except httpx.InvalidURL:
        return  # httpx itself refuses it
    src, dst = response.request.url.scheme, target.scheme
    if src == dst or (src == "http" and dst == "https"):
        return
    if src == "https" and dst == "http" and policy.allow_https_to_http:
        return
    raise TransferFailure(
        _codes.ERROR_WINHTTP_REDIRECT_FAILED,
        ErrorContext.REMOTE_FILE,
        transient=False,
        message=f"refused a redirect from {src} to {dst}",
    )
