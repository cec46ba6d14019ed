"""``python -m bitsnb.server --root DIR``: accept BITS uploads into DIR until Ctrl-C.

Loopback only unless ``--allow-remote``; a remote-reachable server also needs ``--auth-file``
(or, knowingly, ``--insecure-no-auth``). Prints the base URL once (flushed) so scripts and
notebooks can pick it up. ``--hash-password USER`` prints an auth-file line and exits.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from bitsnb._net import is_loopback
from bitsnb.server._app import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_SESSIONS_PER_CLIENT,
    create_app,
)
from bitsnb.server._auth import AuthFile, auth_line

INSTALL_HINT = "pip install 'bitsnb[server]'"

_AUTH_HELP = """\
authentication:
  --auth-file FILE holds one 'user:hash' line per user ('#' comments allowed); the hash is
  scrypt, written scrypt$N$r$p$salt$key (base64). Make a line with
      python -m bitsnb.server --hash-password alice >> users.txt
  (the password is asked on the terminal, or read from stdin's first line). Clients send
  HTTP Basic credentials; use --certfile/--keyfile so they do not cross the network in clear.
"""


def _password_from_user() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise SystemExit("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _cap(text: str) -> int | None:
    """A positive whole number, or 0/'none' for no cap."""
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, serve until SIGINT/SIGTERM, and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bitsnb.server",
        description="Accept BITS uploads (BITS_POST, MC-BUP) into a folder.",
        epilog=_AUTH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, help="folder the uploads land in (required)")
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
        "--max-sessions",
        type=_cap,
        default=DEFAULT_MAX_SESSIONS,
        metavar="N",
        help=f"sessions held at once, all clients (default {DEFAULT_MAX_SESSIONS}; 0: no cap)",
    )
    parser.add_argument(
        "--max-sessions-per-client",
        type=_cap,
        default=DEFAULT_MAX_SESSIONS_PER_CLIENT,
        metavar="N",
        help="sessions held at once by one user (or IP address without auth) "
        f"(default {DEFAULT_MAX_SESSIONS_PER_CLIENT}; 0: no cap)",
    )
    parser.add_argument(
        "--max-bytes-held",
        type=_cap,
        default=None,
        metavar="BYTES",
        help="bytes all unfinished uploads may hold together (default: no cap)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding a non-loopback address (needs --auth-file or --insecure-no-auth)",
    )
    parser.add_argument(
        "--auth-file", type=Path, metavar="FILE", help="require HTTP Basic users listed in FILE"
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="with --allow-remote: serve without authentication (anyone who can connect uploads)",
    )
    parser.add_argument("--certfile", type=Path, metavar="PEM", help="serve HTTPS: certificate")
    parser.add_argument("--keyfile", type=Path, metavar="PEM", help="serve HTTPS: private key")
    parser.add_argument(
        "--hash-password",
        metavar="USER",
        help="print an auth-file line for USER (password from the terminal or stdin) and exit",
    )
    args = parser.parse_args(argv)
    if args.hash_password is not None:
        try:
            print(auth_line(args.hash_password, _password_from_user()), flush=True)
        except ValueError as exc:
            parser.error(str(exc))
        return 0
    if args.root is None:
        parser.error("--root is required")
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
    if args.allow_remote and args.auth_file is None and not args.insecure_no_auth:
        parser.error(
            "refusing --allow-remote without --auth-file: anyone who can connect could write "
            "any file under --root (give --insecure-no-auth to do it anyway)"
        )
    if args.max_size is not None and args.max_size < 0:
        parser.error("--max-size must be >= 0")
    if args.session_timeout <= 0:
        parser.error("--session-timeout must be > 0")
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    authenticate = None
    if args.auth_file is not None:
        try:
            authenticate = AuthFile(args.auth_file)
        except (OSError, ValueError) as exc:
            parser.error(f"--auth-file: {exc}")
    for option in ("certfile", "keyfile"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            parser.error(f"--{option} {str(path)!r} is not a file")

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
    app = create_app(
        root,
        max_upload_size=args.max_size,
        session_timeout=args.session_timeout,
        authenticate=authenticate,
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        max_bytes_held=args.max_bytes_held,
    )
    # h11, not httptools: llhttp refuses methods it does not know, and BITS_POST is one
    config = uvicorn.Config(
        app,
        interface="asgi3",
        http="h11",
        lifespan="off",
        log_level="warning",
        server_header=False,
        ssl_certfile=str(args.certfile) if args.certfile else None,
        ssl_keyfile=str(args.keyfile) if args.keyfile else None,
    )
    try:
        config.load()  # builds the TLS context: a bad certificate or key fails here, clearly
    except Exception as exc:
        sock.close()
        print(f"error: cannot set up the server: {exc}", file=sys.stderr, flush=True)
        return 1
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    scheme = "https" if args.certfile else "http"
    print(f"{scheme}://{shown}:{port}", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
