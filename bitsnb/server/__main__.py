"""``python -m bitsnb.server --root DIR``: accept BITS uploads into DIR until Ctrl-C.

Loopback only unless ``--allow-remote``; prints the base URL once (flushed) so scripts and
notebooks can pick it up.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from bitsnb._net import is_loopback
from bitsnb.server._app import create_app

INSTALL_HINT = "pip install 'bitsnb[server]'"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, serve until SIGINT/SIGTERM, and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bitsnb.server",
        description="Accept BITS uploads (BITS_POST, MC-BUP) into a folder.",
    )
    parser.add_argument("--root", required=True, type=Path, help="folder the uploads land in")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest upload accepted (default: no limit)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=1_209_600,
        metavar="SECONDS",
        help="idle sessions are removed after this long (default 14 days)",
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print(f"uvicorn is not installed: {INSTALL_HINT}", file=sys.stderr, flush=True)
        return 1
    root: Path = args.root
    host: str = args.host.strip("[]")
    if not root.is_dir():
        parser.error(f"--root {str(root)!r} is not a directory")
    if not args.allow_remote and not is_loopback(host):
        parser.error(f"refusing to serve on non-loopback host {host!r} without --allow-remote")
    if args.max_size is not None and args.max_size < 0:
        parser.error("--max-size must be >= 0")
    if args.session_timeout <= 0:
        parser.error("--session-timeout must be > 0")

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, args.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        print(f"error: cannot listen on {host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    port = int(sock.getsockname()[1])
    app = create_app(root, max_upload_size=args.max_size, session_timeout=args.session_timeout)
    # h11, not httptools: llhttp refuses methods it does not know, and BITS_POST is one
    config = uvicorn.Config(
        app, interface="asgi3", http="h11", lifespan="off", log_level="warning", server_header=False
    )
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"http://{shown}:{port}", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
