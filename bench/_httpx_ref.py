"""Reference client: a minimal plain-httpx download loop, default settings.

``python -m bench._httpx_ref [-j N] [--url-file F] URL... DEST``: ``httpx.AsyncClient()`` as it
comes, ``client.stream`` + ``aiter_bytes`` into a file, at most N files at once. No fsync.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import httpx


async def _fetch_all(urls: list[str], dest: Path, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as client:

        async def one(url: str) -> None:
            async with sem, client.stream("GET", url) as resp:
                resp.raise_for_status()
                with open(dest / url.rsplit("/", 1)[-1], "wb") as fh:
                    async for chunk in resp.aiter_bytes():
                        fh.write(chunk)

        await asyncio.gather(*(one(u) for u in urls))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and download."""
    ap = argparse.ArgumentParser(prog="python -m bench._httpx_ref", description=__doc__)
    ap.add_argument("items", nargs="+", help="URL... DEST")
    ap.add_argument("-j", type=int, default=1, help="files at once")
    ap.add_argument("--url-file")
    args = ap.parse_args(argv)
    dest = Path(args.items[-1])
    urls = list(args.items[:-1])
    if args.url_file:
        urls += [u.strip() for u in Path(args.url_file).read_text().splitlines() if u.strip()]
    dest.mkdir(parents=True, exist_ok=True)
    asyncio.run(_fetch_all(urls, dest, max(1, args.j)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
