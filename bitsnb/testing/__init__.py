"""Test servers on loopback with one fault vocabulary: files for downloads, BITS uploads.

``FileServer`` (standard library only) serves files with Range, ETag and keep-alive;
``UploadServer`` runs bitsnb's upload app under uvicorn (``pip install 'bitsnb[server]'``). Both
take ``Fault`` objects (``server.inject(name_glob, Fault.drop_after(1000))``) and log what they
saw. Used by the test suite, the demo, the benchmarks and the notebooks.
"""

from bitsnb.testing._base import ThreadedServer
from bitsnb.testing._faults import CodeFormat, Fault, FaultKind
from bitsnb.testing._requests import RequestRecord
from bitsnb.testing._server import FileServer
from bitsnb.testing._upload import PacketRecord, UploadServer
from bitsnb.testing._wire import unacked_bytes

__all__ = [
    "CodeFormat",
    "Fault",
    "FaultKind",
    "FileServer",
    "PacketRecord",
    "RequestRecord",
    "ThreadedServer",
    "UploadServer",
    "unacked_bytes",
]
