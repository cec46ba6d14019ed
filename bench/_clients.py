"""The clients under test: bitsnb's runner and the references (curl, wget, aria2c, plain httpx).

Each client turns (URLs, destination folder, list files) into an argv. Many-file runs use the
tools' own list formats: a curl config (``--parallel --parallel-max 16``), an aria2c input file
(``-j16``), a URL list for wget (``-i``) and for the Python clients.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PARALLEL", "Client", "ListFiles", "wan_clients", "wan_small_clients", "write_lists"]

PARALLEL = 16
"""Files at once for the parallel references, and bitsnb's many-jobs policy limits."""


@dataclass(frozen=True)
class ListFiles:
    """URL lists for one workload, in each tool's format."""

    urls: Path
    curl: Path
    aria2: Path


def write_lists(folder: Path, urls: Sequence[str], dest: Path) -> ListFiles:
    """Write the URL list, curl config and aria2c input file for *urls* into *folder*."""
    folder.mkdir(parents=True, exist_ok=True)
    lists = ListFiles(folder / "urls.txt", folder / "curl.cfg", folder / "aria2.txt")
    lists.urls.write_text("".join(f"{u}\n" for u in urls))
    lists.curl.write_text(
        "".join(f'url = "{u}"\noutput = "{dest / u.rsplit("/", 1)[-1]}"\n' for u in urls)
    )
    lists.aria2.write_text("".join(f"{u}\n" for u in urls))
    return lists


Argv = Callable[[Sequence[str], Path, ListFiles], list[str]]


@dataclass(frozen=True)
class Client:
    """One tool configuration: ``name`` shows in tables, ``program`` must exist to run it."""

    name: str
    program: str  # "python" for the Python clients, else the executable looked up
    argv: Argv
    is_bitsnb: bool = False
    note: str = ""
    is_baseline: bool = False  # bitsnb from another checkout: a reference for the ratios


# ``--baseline DIR``: every bitsnb client also runs from that checkout (say, the commit before a
# change), interleaved with the others, and its figures are a reference like curl's
BASELINE_ENV = "BITSNB_BENCH_BASELINE"
# The baseline's own runner is run; ``--policy K=V`` (bench/_run_bitsnb.py) is applied here, by
# giving the checkout's ``bitsnb.Policy`` those defaults, so that a checkout older than that flag
# runs the same policy (a field the baseline lacks fails the run, which is then reported)
_BOOT = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); a = sys.argv; kv = []\n"
    "while '--policy' in a:\n"
    "    i = a.index('--policy'); kv.append(a[i + 1]); del a[i:i + 2]\n"
    "if kv:\n"
    "    import functools, bitsnb\n"
    "    ch = {}\n"
    "    for item in kv:\n"
    "        k, _, v = item.partition('=')\n"
    "        lv = v.strip().lower()\n"
    "        ch[k] = None if lv == 'none' else (lv == 'true') if lv in ('true', 'false') else "
    "int(v) if v.lstrip('-').isdigit() else float(v) if v.replace('.', '', 1).isdigit() else v\n"
    "    bitsnb.Policy = functools.partial(bitsnb.Policy, **ch)\n"
    "runpy.run_module('bench._run_bitsnb', run_name='__main__', alter_sys=True)"
)


def with_baseline(clients: list[Client]) -> list[Client]:
    """*clients*, plus a baseline twin of each bitsnb client when ``BASELINE_ENV`` names one."""
    base = os.environ.get(BASELINE_ENV)
    if not base:
        return clients
    out = list(clients)
    for c in clients:
        if c.is_bitsnb and not c.is_baseline:
            out.append(
                Client(
                    f"{c.name} (baseline)",
                    "python",
                    _baseline_argv(c.argv, base),
                    is_bitsnb=True,
                    note=f"{c.note}; from {base}",
                    is_baseline=True,
                )
            )
    return out


def _baseline_argv(argv: Argv, base: str) -> Argv:
    def baseline(u: Sequence[str], d: Path, lf: ListFiles) -> list[str]:
        ours = argv(u, d, lf)
        assert ours[1:3] == ["-m", "bench._run_bitsnb"], ours
        return [ours[0], "-c", _BOOT, base, *ours[3:]]

    return baseline


def _name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _py() -> str:
    return sys.executable


ARIA2_COMMON = [
    "-q",
    "--file-allocation=none",
    "--allow-overwrite=true",
    "--auto-file-renaming=false",
    "--console-log-level=error",
    "--summary-interval=0",
]


def one_file_clients(paths: dict[str, str]) -> list[Client]:
    """Clients for a single big file, bitsnb first."""
    return with_baseline(
        [
            Client(
                "bitsnb",
                "python",
                lambda u, d, _l: [_py(), "-m", "bench._run_bitsnb", *u, str(d)],
                is_bitsnb=True,
                note="one job, default Policy()",
            ),
            Client(
                "curl",
                "curl",
                lambda u, d, _l: [paths["curl"], "-s", "-o", str(d / _name(u[0])), u[0]],
            ),
            Client(
                "wget",
                "wget",
                lambda u, d, _l: [paths["wget"], "-q", "-O", str(d / _name(u[0])), u[0]],
            ),
            Client(
                "aria2c -x1",
                "aria2c",
                lambda u, d, _l: [
                    paths["aria2c"],
                    *ARIA2_COMMON,
                    "-x1",
                    "-d",
                    str(d),
                    "-o",
                    _name(u[0]),
                    u[0],
                ],
            ),
            Client(
                "httpx",
                "python",
                lambda u, d, _l: [_py(), "-m", "bench._httpx_ref", *u, str(d)],
                note="httpx.AsyncClient() defaults, aiter_bytes",
            ),
        ]
    )


def many_file_clients(paths: dict[str, str], jobs: int, *, one_job: bool) -> list[Client]:
    """Clients for many files: bitsnb (one job, and/or *jobs* jobs), then the references."""
    out: list[Client] = []
    if one_job:
        out.append(
            Client(
                "bitsnb 1 job",
                "python",
                lambda _u, d, lf: [
                    _py(),
                    "-m",
                    "bench._run_bitsnb",
                    "--url-file",
                    str(lf.urls),
                    str(d),
                ],
                is_bitsnb=True,
                note="one job, default Policy()",
            )
        )
    out.append(
        Client(
            f"bitsnb {jobs} jobs",
            "python",
            lambda _u, d, lf: [
                _py(),
                "-m",
                "bench._run_bitsnb",
                "--many",
                "--jobs",
                str(jobs),
                "--url-file",
                str(lf.urls),
                str(d),
            ],
            is_bitsnb=True,
            note=f"{jobs} jobs, Policy(max_active_jobs={PARALLEL}, max_connections_per_host={PARALLEL})",
        )
    )
    out += [
        Client(
            f"curl --parallel {PARALLEL}",
            "curl",
            lambda _u, _d, lf: [
                paths["curl"],
                "-s",
                "--parallel",
                "--parallel-max",
                str(PARALLEL),
                "-K",
                str(lf.curl),
            ],
        ),
        Client(
            "wget -i",
            "wget",
            lambda _u, d, lf: [paths["wget"], "-q", "-i", str(lf.urls), "-P", str(d)],
            note="one file after another",
        ),
        Client(
            f"aria2c -j{PARALLEL}",
            "aria2c",
            lambda _u, d, lf: [
                paths["aria2c"],
                *ARIA2_COMMON,
                f"-j{PARALLEL}",
                "-x1",
                "-i",
                str(lf.aria2),
                "-d",
                str(d),
            ],
        ),
        Client(
            f"httpx ×{PARALLEL}",
            "python",
            lambda _u, d, lf: [
                _py(),
                "-m",
                "bench._httpx_ref",
                "-j",
                str(PARALLEL),
                "--url-file",
                str(lf.urls),
                str(d),
            ],
            note=f"httpx.AsyncClient() defaults, {PARALLEL} at once",
        ),
    ]
    return with_baseline(out)


def wan_clients(paths: dict[str, str]) -> list[Client]:
    """Clients of the WAN testbed (``--wan``): bitsnb with the default ``Policy()`` (whose
    ``receive_buffer`` is None now: kernel autotuning), curl, aria2c with one connection and
    with 16 segments of at least 1 MiB."""

    def bitsnb(*extra: str) -> Argv:
        return lambda u, d, _l: [_py(), "-m", "bench._run_bitsnb", *extra, *u, str(d)]

    def aria2(*flags: str) -> Argv:
        return lambda u, d, _l: [
            paths["aria2c"],
            *ARIA2_COMMON,
            *flags,
            "-d",
            str(d),
            "-o",
            _name(u[0]),
            u[0],
        ]

    return with_baseline(
        [
            Client("bitsnb", "python", bitsnb(), is_bitsnb=True, note="one job, default Policy()"),
            Client(
                "curl",
                "curl",
                lambda u, d, _l: [paths["curl"], "-s", "-o", str(d / _name(u[0])), u[0]],
            ),
            Client("aria2c -x1", "aria2c", aria2("-x1")),
            Client("aria2c -x16 -s16 -k1M", "aria2c", aria2("-x16", "-s16", "-k1M")),
        ]
    )


def wan_small_clients(
    paths: dict[str, str], https: ListFiles | None = None, ca_file: Path | None = None
) -> list[Client]:
    """Clients of the WAN small-files run: bitsnb (default ``Policy()``: 16 connections per
    host, as curl has; and the 8 it had before), ``curl --parallel 16``; with *https* lists (and the server's *ca_file*)
    the same over TLS: bitsnb on HTTP/1.1 and with ``Policy(http2=True)``, curl forced to
    HTTP/1.1 and curl multiplexing over HTTP/2."""

    def bitsnb(lists: ListFiles | None, *extra: str) -> Argv:
        def argv(_u: Sequence[str], d: Path, lf: ListFiles) -> list[str]:
            urls = (lists or lf).urls
            return [_py(), "-m", "bench._run_bitsnb", *extra, "--url-file", str(urls), str(d)]

        return argv

    def curl(lists: ListFiles | None, *extra: str) -> Argv:
        def argv(_u: Sequence[str], _d: Path, lf: ListFiles) -> list[str]:
            cfg = (lists or lf).curl
            return [paths["curl"], "-s", *extra, "--parallel", "--parallel-max", str(PARALLEL), "-K", str(cfg)]  # fmt: skip

        return argv

    hosts = f"max_connections_per_host={PARALLEL}"
    out = [
        Client(
            "bitsnb",
            "python",
            bitsnb(None),
            is_bitsnb=True,
            note=f"one job, default Policy() ({PARALLEL} connections per host)",
        ),
        Client(
            "bitsnb 8/host",
            "python",
            bitsnb(None, "--policy", "max_connections_per_host=8"),
            is_bitsnb=True,
            note="one job, Policy(max_connections_per_host=8): the default before session 6",
        ),
        Client(f"curl --parallel {PARALLEL}", "curl", curl(None), note="HTTP/1.1"),
    ]
    if https is not None and ca_file is not None:
        verify = f"verify={ca_file}"
        out += [
            Client(
                "bitsnb https h1",
                "python",
                bitsnb(https, "--policy", verify, "--policy", hosts),
                is_bitsnb=True,
                note=f"TLS, HTTP/1.1, Policy({hosts})",
            ),
            Client(
                "bitsnb https h2",
                "python",
                bitsnb(https, "--policy", verify, "--policy", hosts, "--policy", "http2=true"),
                is_bitsnb=True,
                note=f"TLS, Policy(http2=True, {hosts}): streams on one connection",
            ),
            Client(
                "curl https h1",
                "curl",
                curl(https, "--cacert", str(ca_file), "--http1.1"),
                note=f"TLS, HTTP/1.1, {PARALLEL} connections",
            ),
            Client(
                "curl https h2",
                "curl",
                curl(https, "--cacert", str(ca_file)),
                note=f"TLS, HTTP/2 multiplexed, {PARALLEL} streams",
            ),
        ]
    return with_baseline(out)
