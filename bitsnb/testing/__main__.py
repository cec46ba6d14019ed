"""``python -m bitsnb.testing --root DIR``: serve DIR over loopback HTTP until Ctrl-C.

Prints the base URL once (flushed) so scripts and notebooks can pick it up.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bitsnb._net import is_loopback
from bitsnb.testing._server import FileServer


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, serve until SIGINT/SIGTERM, and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bitsnb.testing",
        description="Serve a directory over HTTP/1.1 (Range, ETag, keep-alive) for testing.",
    )
    parser.add_argument("--root", required=True, type=Path, help="directory to serve")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    host: str = args.host.strip("[]")
    if not root.is_dir():
        parser.error(f"--root {str(root)!r} is not a directory")
    if not args.allow_remote and not is_loopback(host):
        parser.error(f"refusing to serve on non-loopback host {host!r} without --allow-remote")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    server = FileServer(root, host=host, port=args.port)
    try:
        server.start()
    except OSError as exc:
        server.stop()
        print(f"error: cannot listen on {host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    try:
        print(server.base_url, flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
