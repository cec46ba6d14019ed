"""HTTP Basic authentication for the upload server: password hashes and the ``--auth-file``.

An auth file holds one ``user:hash`` line per user; blank lines and lines starting with ``#`` are
skipped. The hash is scrypt (``hashlib.scrypt``, RFC 7914) in this form::

    alice:scrypt$16384$8$1$<salt, base64>$<key, base64>

that is ``scrypt$N$r$p$salt$key``, both in standard base64 with padding. ``python -m bitsnb.server
--hash-password USER`` prints such a line (the password is read from the terminal, or from stdin
when it is not one). Verification derives the key again and compares with ``hmac.compare_digest``;
an unknown user costs the same scrypt run, so timing does not tell which users exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "AuthFile",
    "Authenticator",
    "auth_line",
    "basic_credentials",
    "hash_password",
    "verify_password",
]

Authenticator = Callable[[str, str], bool]
"""``authenticate(user, password) -> bool``: True lets the request in (HTTP Basic credentials)."""

_N, _R, _P = 1 << 14, 8, 1  # scrypt cost: 16 MiB of memory, tens of milliseconds
_KEY_BYTES = 32
_SALT_BYTES = 16
_MAX_N = 1 << 20  # refuse hashes that would make each check cost a gigabyte
_MAXMEM = 256 * 1024 * 1024 + 4096


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_MAXMEM,
        dklen=size,
    )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$key`` for *password* (a fresh random salt unless one is given)."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    key = _scrypt(password, salt, _N, _R, _P, _KEY_BYTES)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(key).decode()}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$N$r$p$salt$key hash")
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters out of range")
    try:
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None
    if not salt or not 16 <= len(key) <= 64:
        raise ValueError("salt or key of the wrong size")
    return n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    """True when *password* matches the ``scrypt$...`` hash (constant-time compare)."""
    n, r, p, salt, key = _parse(encoded)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(key)), key)


def auth_line(user: str, password: str) -> str:
    """One ``user:hash`` line for an auth file."""
    _check_user(user)
    return f"{user}:{hash_password(password)}"


def _check_user(user: str) -> None:
    if not user or ":" in user or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        raise ValueError("a user name must be non-empty, without ':' or control characters")


class AuthFile:
    """The users of an auth file; calling it checks a user and password (an ``Authenticator``).

    The file is read once, when this object is made: a malformed line raises ``ValueError``
    naming the line, so a typo stops the server at start instead of locking people out later.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._users: dict[str, str] = {}
        text = self.path.read_text(encoding="utf-8")
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, encoded = line.partition(":")
            try:
                if not sep:
                    raise ValueError("expected user:hash")
                _check_user(user)
                _parse(encoded)
            except ValueError as exc:
                raise ValueError(f"{self.path}: line {number}: {exc}") from None
            self._users[user] = encoded
        if not self._users:
            raise ValueError(f"{self.path}: no users")
        self._dummy = hash_password("", salt=b"\0" * _SALT_BYTES)

    @property
    def users(self) -> frozenset[str]:
        """The user names the file lists."""
        return frozenset(self._users)

    def __call__(self, user: str, password: str) -> bool:
        encoded = self._users.get(user)
        if encoded is None:
            verify_password(password, self._dummy)  # same cost as a known user
            return False
        return verify_password(password, encoded)

    def __repr__(self) -> str:
        return f"AuthFile({str(self.path)!r}, {len(self._users)} users)"


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from ``Authorization: Basic ...`` (RFC 7617), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, sep, password = text.partition(":")
    return (user, password) if sep else None
