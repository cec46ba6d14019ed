"""A job's HTTP options as httpx wants them: headers, credentials, proxy and environment.

The job keeps BITS's settings (custom headers, proxy usage and lists) in its record and its
credentials in memory; this module turns both into what the engine's clients take, so the
core never builds an httpx object itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from urllib.parse import quote, urlsplit

import httpx

from ._enums import AuthScheme, AuthTarget, ProxyUsage
from ._records import JobSecrets, JobSettings
from ._validate import parse_headers

__all__ = ["RequestOptions", "request_options"]


@dataclass(frozen=True)
class RequestOptions:
    """Headers, server auth, proxy URL and whether httpx may read proxies from the environment."""

    headers: dict[str, str]
    auth: httpx.Auth | None
    proxy: str | None
    trust_env: bool


def request_options(
    settings: JobSettings, secrets: JobSecrets | None, first_url: str | None
) -> RequestOptions:
    """The options for a job's requests (*first_url*: its first file, for the bypass list)."""
    s = settings
    headers = parse_headers(s.custom_headers)
    auth: httpx.Auth | None = None
    proxy_auth: tuple[str | None, str | None] | None = None
    if secrets is not None:
        headers.update(secrets.headers)
        for (target, scheme), (user, password) in secrets.credentials.items():
            if target is AuthTarget.SERVER and scheme is AuthScheme.BASIC:
                auth = httpx.BasicAuth(user or "", password or "")
            elif target is AuthTarget.SERVER and scheme is AuthScheme.DIGEST:
                auth = httpx.DigestAuth(user or "", password or "")
            elif target is AuthTarget.PROXY:
                proxy_auth = (user, password)
    if s.proxy_usage != ProxyUsage.OVERRIDE:
        # Proxy-Authorization is for a proxy: never hand it to an origin server
        for name in [h for h in headers if h.lower() == "proxy-authorization"]:
            del headers[name]
    proxy: str | None = None
    trust_env = True
    if s.proxy_usage == ProxyUsage.NO_PROXY:
        trust_env = False
    elif s.proxy_usage == ProxyUsage.OVERRIDE and s.proxy_list:
        trust_env = False
        proxy = proxy_url(s.proxy_list.split()[0], proxy_auth)
        if s.proxy_bypass_list and first_url and bypassed(first_url, s.proxy_bypass_list):
            proxy = None
    return RequestOptions(headers, auth, proxy, trust_env)


def proxy_url(entry: str, auth: tuple[str | None, str | None] | None) -> str:
    """``[scheme=][scheme://]host[:port]`` (BITS proxy syntax) as a proxy URL."""
    if "=" in entry:
        entry = entry.split("=", 1)[1]
    if "://" not in entry:
        entry = "http://" + entry
    if auth is not None and auth[0]:
        scheme, rest = entry.split("://", 1)
        entry = f"{scheme}://{quote(auth[0], safe='')}:{quote(auth[1] or '', safe='')}@{rest}"
    return entry


def bypassed(url: str, bypass: str) -> bool:
    """True when *url*'s host matches the bypass list (``<local>``: names without a dot)."""
    host = urlsplit(url).hostname or ""
    for pattern in bypass.split():
        if pattern == "<local>" and "." not in host:
            return True
        if fnmatch(host, pattern):
            return True
    return False
