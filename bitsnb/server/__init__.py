"""The server side of BITS uploads [MC-BUP]: a plain ASGI 3 app plus a threaded test server.

``create_app(root)`` accepts ``BITS_POST`` uploads into ``root`` (Ping, Create-Session, Fragment,
Close-Session, Cancel-Session) and serves upload-reply bodies with ``GET``. ``UploadServer`` runs
it under uvicorn on loopback for tests and demos, with fault injection. ``python -m bitsnb.server
--root DIR`` serves a folder from the command line (needs ``pip install 'bitsnb[server]'``).
"""

from bitsnb.server._app import ReplyFunc, UploadApp, create_app, default_reply
from bitsnb.server._protocol import STATE_DIR, UPLOAD_PROTOCOL
from bitsnb.server._runner import FaultKind, PacketRecord, UploadServer

__all__ = [
    "STATE_DIR",
    "UPLOAD_PROTOCOL",
    "FaultKind",
    "PacketRecord",
    "ReplyFunc",
    "UploadApp",
    "UploadServer",
    "create_app",
    "default_reply",
]
