"""Checks on what callers hand in (URLs, local names, strings, ranges): pure, no state changed."""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Sequence
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from . import _codes
from ._errors import BitsError

MAX_URL = 2200
MAX_PATH = 4096
MAX_NAME = 255
MAX_DISPLAY_NAME = 256
MAX_DESCRIPTION = 1024
MAX_HEADERS = 16384

_BAD_URL_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


def _invalid(message: str) -> BitsError:
    return BitsError(_codes.E_INVALIDARG, message)


def _unicode(text: str, what: str) -> str:
    """*text* if it can be stored (UTF-8); a lone surrogate (an undecodable name from the OS,
    say ``"bad\udce9"``) is E_INVALIDARG before anything changes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"the {what} is not valid text (it holds undecodable bytes)") from None
    return text


def redact_url(url: str) -> str:
    """*url* with any user:password part removed, safe for messages and reprs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()


def check_url(url: object) -> str:
    """A remote name must be an absolute http(s) URL with a host, no spaces and no credentials."""
    if not isinstance(url, str) or not url:
        raise _invalid("the remote name must be a non-empty URL string")
    _unicode(url, "URL")
    if len(url) > MAX_URL:
        raise BitsError(
            _codes.E_INVALIDARG, f"the URL is {len(url)} characters long; BITS allows {MAX_URL}"
        )
    if _BAD_URL_CHARS.search(url):
        raise _invalid(
            f"the URL {redact_url(url)!r} contains spaces or control characters; escape them"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise _invalid(f"the URL {redact_url(url)!r} cannot be parsed ({exc})") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise _invalid(f"the URL {redact_url(url)!r} has no scheme; use http:// or https://")
    if scheme not in ("http", "https"):
        raise _invalid(f"unsupported protocol {scheme!r}: only http and https are transferred")
    if not parts.hostname:
        raise _invalid(f"the URL {redact_url(url)!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise _invalid(
            "the URL carries credentials; pass them with job.set_credentials() instead "
            f"(URL without them: {redact_url(url)})"
        )
    return url


def _absolute_path(local: object) -> str:
    """A non-empty absolute path string without NUL (str or PathLike given)."""
    if isinstance(local, os.PathLike):
        local = os.fspath(local)
    if not isinstance(local, str) or not local:
        raise _invalid("the local name must be a non-empty path")
    if "\x00" in local:
        raise _invalid("the local name contains a NUL character")
    _unicode(local, "local name")
    if not os.path.isabs(local):
        raise _invalid(f"the local name {local!r} is relative; give an absolute path")
    return local


def check_local_name(local: object, *, must_not_exist_as_dir: bool = True) -> str:
    """A local name must be an absolute, normalised path in an existing, writable folder."""
    local = _absolute_path(local)
    if ".." in PurePosixPath(local).parts:
        raise _invalid(f"the local name {local!r} contains '..'; give a normalised path")
    if len(local) > MAX_PATH or len(os.path.basename(local)) > MAX_NAME:
        raise _invalid(f"the local name is too long ({len(local)} characters)")
    if local.endswith(os.sep) or not os.path.basename(local):
        raise _invalid(f"the local name {local!r} names a folder, not a file")
    if must_not_exist_as_dir and os.path.isdir(local):
        raise _invalid(f"the local name {local!r} is an existing folder")
    try:
        mode = os.lstat(local).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise BitsError(
            _codes.hresult_from_errno(exc.errno), f"{local!r}: {exc.strerror}"
        ) from None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        # a FIFO or a device: the temporary file would land beside it, and complete() replace it
        raise _invalid(f"the local name {local!r} exists and is not a regular file")
    folder = os.path.dirname(local)
    if not os.path.isdir(folder):
        raise BitsError(_codes.ERROR_PATH_NOT_FOUND, f"the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BitsError(_codes.E_ACCESSDENIED, f"the folder {folder!r} is not writable")
    return local


def check_string(value: object, what: str, limit: int) -> str:
    """A non-None string no longer than *limit* (BG_E_STRING_TOO_LONG past it)."""
    if not isinstance(value, str):
        raise _invalid(f"the {what} must be a string")
    _unicode(value, what)
    if len(value) > limit:
        raise BitsError(
            _codes.BG_E_STRING_TOO_LONG,
            f"the {what} is {len(value)} characters long; the limit is {limit}",
        )
    return value


def check_seconds(value: object, what: str) -> float:
    """A finite, non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{what} must be a number of seconds")
    if value != value or value < 0 or value == float("inf"):
        raise _invalid(f"{what} must be zero or more seconds, not {value!r}")
    return float(value)


def check_ranges(ranges: Sequence[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
    """BG_FILE_RANGE list: at least one, no zero lengths, no EOF start, no overlaps."""
    out: list[tuple[int, int | None]] = []
    for item in ranges:
        offset, length = item
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BitsError(_codes.BG_E_INVALID_RANGE, f"bad range offset {offset!r}")
        if offset == 0xFFFFFFFFFFFFFFFF:
            raise BitsError(_codes.BG_E_INVALID_RANGE, "a range may not start at BG_LENGTH_TO_EOF")
        if length == 0xFFFFFFFFFFFFFFFF:
            length = None
        if length is not None and (not isinstance(length, int) or length <= 0):
            raise BitsError(_codes.BG_E_INVALID_RANGE, f"bad range length {length!r}")
        out.append((offset, length))
    if not out:
        raise _invalid("add_file_with_ranges needs at least one range")
    spans = sorted(out)
    for (a, alen), (b, _) in itertools.pairwise(spans):
        if alen is None or a + alen > b:
            raise BitsError(_codes.BG_E_OVERLAPPING_RANGES, "the ranges overlap")
    return out


def parse_headers(text: str | None) -> dict[str, str]:
    """``Name: value`` lines (CR/LF separated) as a dict; malformed lines are E_INVALIDARG."""
    headers: dict[str, str] = {}
    if not text:
        return headers
    for line in re.split(r"\r?\n", text):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or re.search(r"[\s\x00-\x1f]", name.strip()):
            raise _invalid(f"malformed header line {line.split(':', 1)[0]!r}: use 'Name: value'")
        _unicode(line, "header")
        headers[name.strip()] = value.strip()
    return headers


_PROXY_SCHEMES = ("http", "https")


def check_proxy_list(text: str) -> list[str]:
    """A BITS proxy list (entries ``[scheme=][scheme://]host[:port]``, space separated) as proxy
    URLs; a malformed entry, or one carrying user:password (credentials go through
    ``set_credentials(PROXY, ...)``, kept in memory), is BG_E_INVALID_PROXY_INFO."""
    _unicode(text, "proxy list")
    urls = []
    for entry in text.split():
        url = entry.split("=", 1)[1] if "=" in entry else entry
        if "://" not in url:
            url = "http://" + url
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise BitsError(
                _codes.BG_E_INVALID_PROXY_INFO, f"bad proxy {entry!r} ({exc})"
            ) from None
        if parts.scheme.lower() not in _PROXY_SCHEMES:
            raise BitsError(
                _codes.BG_E_INVALID_PROXY_INFO,
                f"proxy {entry!r}: only http and https proxies are supported",
            )
        if not parts.hostname or _BAD_URL_CHARS.search(url) or parts.path not in ("", "/"):
            raise BitsError(_codes.BG_E_INVALID_PROXY_INFO, f"bad proxy {entry!r}")
        if parts.username is not None or parts.password is not None:
            raise BitsError(
                _codes.BG_E_INVALID_PROXY_INFO,
                "the proxy carries credentials; pass them with "
                "set_credentials(AuthTarget.PROXY, ...) instead (kept in memory only)",
            )
        if port == 0:
            raise BitsError(_codes.BG_E_INVALID_PROXY_INFO, f"bad proxy port in {entry!r}")
        urls.append(url)
    if not urls:
        raise BitsError(_codes.BG_E_INVALID_PROXY_INFO, "the proxy list is empty")
    return urls


def check_source_file(local: object) -> str:
    """An upload's local file: an absolute path to an existing, readable regular file."""
    local = _absolute_path(local)
    if os.path.isdir(local):
        raise _invalid(f"the local name {local!r} is a folder; uploads send one file")
    if not os.path.isfile(local):
        raise BitsError(_codes.ERROR_FILE_NOT_FOUND, f"the file {local!r} does not exist")
    if not os.access(local, os.R_OK):
        raise BitsError(_codes.E_ACCESSDENIED, f"the file {local!r} is not readable")
    return local


def is_admin() -> bool:
    """True for root: the user BITS's administrator rights map to (all users' jobs)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def os_user() -> str:
    """The name of the user this process runs as (from its uid, not from $USER, which any
    process may set)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):  # no pwd (Windows) or an unnamed uid
        import getpass

        return getpass.getuser()
