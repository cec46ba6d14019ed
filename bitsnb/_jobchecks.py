"""A job setter's arguments checked and parsed, before anything changes: notify flags and
command line, proxy settings, custom headers (credentials split off) and credentials."""

from __future__ import annotations

import os

from . import _codes
from ._enums import AuthScheme, AuthTarget, NotifyFlags, ProxyUsage
from ._errors import BitsError
from ._records import SECRET_HEADERS
from ._validate import MAX_HEADERS, check_proxy_list, check_string, parse_headers

__all__ = [
    "check_credentials",
    "check_notify_cmd_line",
    "check_notify_flags",
    "check_proxy_settings",
    "split_custom_headers",
]

_ALL_NOTIFY = int(
    NotifyFlags.JOB_TRANSFERRED
    | NotifyFlags.JOB_ERROR
    | NotifyFlags.DISABLE
    | NotifyFlags.JOB_MODIFICATION
    | NotifyFlags.FILE_TRANSFERRED
    | NotifyFlags.FILE_RANGES_TRANSFERRED
)
_MAX_PROXY_LIST = 32 * 1024
_MAX_USER = 300
_MAX_PASSWORD = 65536


def check_notify_flags(flags: NotifyFlags | int) -> int:
    """SetNotifyFlags' value (E_NOTIMPL for unknown bits)."""
    value = int(flags)
    if value & ~_ALL_NOTIFY or value < 0:
        raise BitsError(_codes.E_NOTIMPL, f"unknown notify flags 0x{value:X}")
    return value


def check_notify_cmd_line(program: str | None, parameters: str | None) -> tuple[str, str] | None:
    """SetNotifyCmdLine's (program, parameters): a full path; None removes the command line."""
    if program is None:
        if parameters is not None:
            raise BitsError(_codes.E_INVALIDARG, "parameters without a program")
        return None
    check_string(program, "program", 4096)
    check_string(parameters or "", "parameters", 4000)
    if not os.path.isabs(program):
        raise BitsError(_codes.E_INVALIDARG, "the program must be given as a full path")
    return (program, parameters or "")


def check_proxy_settings(
    usage: ProxyUsage | int, proxy_list: str | None, bypass_list: str | None
) -> ProxyUsage:
    """SetProxySettings' usage: lists only with OVERRIDE, which needs a proxy list."""
    try:
        use = ProxyUsage(usage)
    except ValueError:
        raise BitsError(_codes.E_NOTIMPL, f"unknown proxy usage {usage!r}") from None
    if use is not ProxyUsage.OVERRIDE and (proxy_list or bypass_list):
        raise BitsError(_codes.E_INVALIDARG, "proxy lists go with ProxyUsage.OVERRIDE only")
    if use is ProxyUsage.OVERRIDE and not proxy_list:
        raise BitsError(_codes.E_INVALIDARG, "ProxyUsage.OVERRIDE needs a proxy list")
    if proxy_list and len(proxy_list) > _MAX_PROXY_LIST:
        raise BitsError(_codes.BG_E_PROXY_LIST_TOO_LARGE, "the proxy list is too long")
    if bypass_list and len(bypass_list) > _MAX_PROXY_LIST:
        raise BitsError(_codes.BG_E_PROXY_BYPASS_LIST_TOO_LARGE, "the bypass list is too long")
    if proxy_list:
        check_proxy_list(proxy_list)  # BG_E_INVALID_PROXY_INFO now, not E_FAIL at run time
    if bypass_list:
        check_string(bypass_list, "bypass list", _MAX_PROXY_LIST)
    return use


def split_custom_headers(headers: str | dict[str, str] | None) -> tuple[dict[str, str], str | None]:
    """SetCustomHeaders' headers parsed: (the secret ones, kept in memory; the rest as text,
    None when empty)."""
    if isinstance(headers, dict):
        text = "\r\n".join(f"{k}: {v}" for k, v in headers.items())
    else:
        text = headers or ""
    check_string(text, "custom headers", MAX_HEADERS - 1)
    parsed = parse_headers(text)
    secret = {k: v for k, v in parsed.items() if k.lower() in SECRET_HEADERS}
    public = "\r\n".join(f"{k}: {v}" for k, v in parsed.items() if k not in secret) or None
    return secret, public


def check_credentials(
    target: AuthTarget | int,
    scheme: AuthScheme | int,
    user_name: str | None,
    password: str | None,
) -> tuple[AuthTarget, AuthScheme, str, str]:
    """SetCredentials' arguments: BASIC or DIGEST, with a user name and password in bounds."""
    try:
        tgt = AuthTarget(target)
    except ValueError:
        raise BitsError(_codes.BG_E_INVALID_AUTH_TARGET, f"bad auth target {target!r}") from None
    try:
        sch = AuthScheme(scheme)
    except ValueError:
        raise BitsError(_codes.BG_E_INVALID_AUTH_SCHEME, f"bad auth scheme {scheme!r}") from None
    if sch not in (AuthScheme.BASIC, AuthScheme.DIGEST):
        raise BitsError(_codes.E_NOTIMPL, f"{sch.name} authentication is Windows-only")
    if user_name is None or password is None:
        raise BitsError(_codes.E_INVALIDARG, "BASIC and DIGEST need a user name and password")
    if len(user_name) > _MAX_USER:
        raise BitsError(_codes.BG_E_USERNAME_TOO_LARGE, "the user name is too long")
    if len(password) > _MAX_PASSWORD:
        raise BitsError(_codes.BG_E_PASSWORD_TOO_LARGE, "the password is too long")
    return tgt, sch, user_name, password
