"""The server side of BITS uploads [MC-BUP]: a plain ASGI 3 app, for production use.

``create_app(root)`` accepts ``BITS_POST`` uploads into ``root`` (Ping, Create-Session, Fragment,
Close-Session, Cancel-Session) and serves upload-reply bodies with ``GET``. ``python -m
bitsnb.server --root DIR`` serves a folder from the command line (needs ``pip install
'bitsnb[server]'``). The threaded test server with fault injection is
``bitsnb.testing.UploadServer``.

Security: ``create_app(root, authenticate=AuthFile(path))`` requires HTTP Basic credentials
(``python -m bitsnb.server --auth-file FILE``; ``--hash-password USER`` makes a line); sessions
are capped globally and per client, and the bytes held can be; ``--certfile/--keyfile`` serve
HTTPS. Without authentication, a server on a non-loopback address refuses to start unless
``--insecure-no-auth`` is given.
"""

from bitsnb.server._app import ReplyFunc, UploadApp, create_app, default_reply
from bitsnb.server._auth import Authenticator, AuthFile, auth_line, hash_password, verify_password
from bitsnb.server._protocol import STATE_DIR, UPLOAD_PROTOCOL

__all__ = [
    "STATE_DIR",
    "UPLOAD_PROTOCOL",
    "AuthFile",
    "Authenticator",
    "ReplyFunc",
    "UploadApp",
    "auth_line",
    "create_app",
    "default_reply",
    "hash_password",
    "verify_password",
]
