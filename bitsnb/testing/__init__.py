"""Test helpers: a loopback HTTP/1.1 file server with fault injection (standard library only).

Used by the test suite, the demo and the notebooks to exercise resume, validators and faults.
"""

from bitsnb.testing._server import Fault, FaultKind, FileServer, RequestRecord

__all__ = ["Fault", "FaultKind", "FileServer", "RequestRecord"]
