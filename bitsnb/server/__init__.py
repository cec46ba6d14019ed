"""The server side of BITS uploads [MC-BUP]: a plain ASGI 3 app, for production use.

``create_app(root)`` accepts ``BITS_POST`` uploads into ``root`` (Ping, Create-Session, Fragment,
Close-Session, Cancel-Session) and serves upload-reply bodies with ``GET``. ``python -m
bitsnb.server --root DIR`` serves a folder from the command line (needs ``pip install
'bitsnb[server]'``). The threaded test server with fault injection is
``bitsnb.testing.UploadServer``.
"""

from bitsnb.server._app import ReplyFunc, UploadApp, create_app, default_reply
from bitsnb.server._protocol import STATE_DIR, UPLOAD_PROTOCOL

__all__ = [
    "STATE_DIR",
    "UPLOAD_PROTOCOL",
    "ReplyFunc",
    "UploadApp",
    "create_app",
    "default_reply",
]
