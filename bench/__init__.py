"""bitsnb's benchmark suite: bitsnb against curl, wget, aria2c and plain httpx, served by nginx.

Run it with ``python -m bench`` (``--quick`` for about a minute); see ``bench/README.md``.
Nothing here is imported by the package, and this module imports nothing, so the runner
subprocesses (``python -m bench._run_bitsnb``) start with bitsnb's own imports only.
"""
