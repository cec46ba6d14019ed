"""Wall time of a loopback download with a known sha256 against the same without a hash.

``PYTHONPATH=. python bench/integrity_known_hash.py [--size-mib 1024] [--rounds 3] [--inline]``

The file is served by ``bitsnb.testing.FileServer`` in this process (sendfile, outside the
GIL); each download runs in a fresh child process with its own store, alternating plain and
hashed runs, and the medians are compared (the issue's target: hashed ≤ 1.05 × plain). Each
child also reports the CPU seconds of the download (imports not counted), by thread, sampled
from ``/proc/self/task`` every 50 ms; the server's are the parent's own. ``--inline`` adds a
third variant in the rotation: the known hash computed on the event loop, as before the
background hasher (for comparison). ``--connections 1`` keeps the file on one connection
(the default policy may fetch it in segments). ``--nginx`` serves the file from nginx instead
(another process; its CPU is not counted), the fastest server on this machine. Each run also
prints what bounds the ratio: sha256 over the same bytes in memory on this CPU (one thread;
the hash is sequential), since a hashed download cannot take less wall time than that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from bitsnb.testing import FileServer

_CHILD = """
import json, os, sys, threading, time
import bitsnb
store, url, local, known, inline, conns = sys.argv[1:7]
if inline == "1":
    import bitsnb._engine, bitsnb._integrity
    bitsnb._engine.streaming_hasher = bitsnb._integrity.new_hasher
tick = os.sysconf("SC_CLK_TCK")
seen = {}  # (tid, name) -> CPU seconds, sampled (a thread that ended keeps its last sample)
done = threading.Event()
def cpu_of(tid):
    with open(f"/proc/self/task/{tid}/stat") as fh:
        x = fh.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / tick
def sample():
    names = {t.native_id: t.name for t in threading.enumerate()}
    for tid in os.listdir("/proc/self/task"):
        try:
            seen[(int(tid), names.get(int(tid), "?"))] = cpu_of(tid)
        except OSError:
            pass
def machine():
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / tick, (v[3] + v[4]) / tick  # busy, idle (+ iowait)
def sampler():
    for _ in range(10000):  # bounded: 0.05 s a pass, the run's timeout is 600 s
        sample()
        if done.wait(0.05):
            return
policy = bitsnb.Policy(max_connections_per_file=int(conns)) if conns else None
with bitsnb.Manager(store=store, policy=policy) as mgr:
    job = mgr.create_job("bench")
    job.add_file(url, local, known_hash=known or None)
    watcher = threading.Thread(target=sampler, name="bench-sampler", daemon=True)
    sample()
    base, cpu0 = dict(seen), sum(os.times()[:2])  # the imports and the store: not counted
    watcher.start()
    m0 = machine()
    t = time.perf_counter()
    job.resume()
    state = job.wait(timeout=600)
    elapsed = time.perf_counter() - t
    m1 = machine()
    sample()
    done.set()
    cpu = sum(os.times()[:2]) - cpu0
    parts = {}
    for key, secs in seen.items():
        kind = key[1].rstrip("0123456789_")
        parts[kind] = parts.get(kind, 0.0) + secs - base.get(key, 0.0)
    print(json.dumps({"state": state.name, "seconds": elapsed, "cpu": cpu,
                      "loop_cpu": parts.get("bitsnb-loop", 0.0), "parts": parts,
                      "busy": m1[0] - m0[0], "idle": m1[1] - m0[1],
                      "hash": job.files[0].hash}))
    job.cancel()
"""


def _run(
    url: str, work: Path, known: str, n: int, inline: bool = False, conns: int | None = None
) -> tuple[float, float, float, float, dict[str, float]]:
    """One download in a child: its wall, its CPU, its loop thread's, the server's CPU, and
    the child's CPU by thread kind."""
    store, local = work / f"s{n}.db", work / f"f{n}.bin"
    mine = os.times()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(store),
            url,
            str(local),
            known,
            "1" if inline else "0",
            str(conns or ""),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    now = os.times()
    server_cpu = (now.user - mine.user) + (now.system - mine.system)  # the FileServer's threads
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["state"] == "TRANSFERRED", result
    assert not known or result["hash"] == known, result
    local.unlink(missing_ok=True)
    for tmp in work.glob(".BIT*.tmp"):
        tmp.unlink()
    return (
        float(result["seconds"]),
        float(result["cpu"]),
        float(result["loop_cpu"]),
        server_cpu,
        {str(k): float(v) for k, v in result["parts"].items()}
        | {"machine busy": float(result["busy"]), "machine idle": float(result["idle"])},
    )


class _Served(Protocol):
    def url(self, name: str) -> str: ...


def _server(work: Path, size: int, nginx: bool) -> tuple[AbstractContextManager[_Served], Path]:
    """The file's server (FileServer here, or nginx) and the file it serves."""
    folder = work / "served"
    folder.mkdir()
    if nginx:
        from bench._nginx import Nginx  # only this mode needs it

        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        srv: AbstractContextManager[_Served] = Nginx(binary, folder, work / "nginx")
    else:
        srv = FileServer(folder)
    path = folder / "big.bin"
    with open(path, "wb") as fh:
        for _ in range(size >> 20):  # bounded: 1 MiB a pass
            fh.write(os.urandom(1 << 20))
    return srv, path


def _hash_speed(path: Path) -> float:
    """Seconds sha256 takes over *path*'s bytes, read from the page cache beforehand."""
    blocks = []
    with open(path, "rb") as fh:
        for _ in range(256):  # bounded: 256 MiB
            block = fh.read(1 << 20)
            if not block:
                break
            blocks.append(block)
    h = hashlib.sha256()
    t = time.perf_counter()
    for block in blocks:
        h.update(block)
    per_mib = (time.perf_counter() - t) / len(blocks)
    return per_mib * (path.stat().st_size >> 20)


def main() -> int:
    """Serve one file, time plain and known-hash downloads in turn, print medians and bests."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inline", action="store_true", help="also time the hash on the loop")
    parser.add_argument("--connections", type=int, default=None, help="per file (the policy's)")
    parser.add_argument("--nginx", action="store_true", help="serve the file from nginx")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bitsnb-integrity-bench-") as tmp:
        work = Path(tmp)
        served, path = _server(work, args.size_mib << 20, args.nginx)
        with served as server:
            url = server.url("big.bin")
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for _ in range((args.size_mib << 20) // (1 << 20) + 1):  # bounded: 1 MiB a pass
                    block = fh.read(1 << 20)
                    if not block:
                        break
                    h.update(block)
            known = "sha256:" + h.hexdigest()
            hash_alone = _hash_speed(path)
            runs: dict[str, list[tuple[float, float, float, float, dict[str, float]]]] = {
                "plain": [],
                "known sha256": [],
            }
            if args.inline:
                runs["sha256 inline"] = []
            for i in range(args.rounds):
                for j, times in enumerate(runs.values()):
                    times.append(
                        _run(url, work, known if j else "", 3 * i + j, j == 2, args.connections)
                    )
                print(
                    f"round {i}: "
                    + ", ".join(
                        f"{k} {v[-1][0]:.2f} s ({v[-1][1]:.2f} CPU-s, loop {v[-1][2]:.2f},"
                        f" server {v[-1][3]:.2f}; "
                        + " ".join(f"{n} {c:.2f}" for n, c in sorted(v[-1][4].items()) if c)
                        + ")"
                        for k, v in runs.items()
                    )
                )
    p = statistics.median(r[0] for r in runs["plain"])
    print(
        f"sha256 of {args.size_mib} MiB in memory, one thread: {hash_alone:.2f} s, i.e. at least"
        f" x{max(1.0, hash_alone / p):.3f} of the plain median for any hashed download"
    )
    fastest = min(r[0] for r in runs["plain"])
    for k, v in runs.items():
        wall = statistics.median(r[0] for r in v)
        best = min(r[0] for r in v)
        cpu, loop, served = (statistics.median(r[i] for r in v) for i in (1, 2, 3))
        print(
            f"{args.size_mib} MiB {k}: median {wall:.2f} s (x{wall / p:.3f}), best {best:.2f} s "
            f"(x{best / fastest:.3f}); CPU {cpu:.2f} s, of it the loop thread {loop:.2f} s;"
            f" server CPU {served:.2f} s"
        )
        kinds = sorted({n for r in v for n in r[4]})
        medians = {n: statistics.median(r[4].get(n, 0.0) for r in v) for n in kinds}
        print(
            "  CPU-s by thread (medians): " + ", ".join(f"{n} {c:.2f}" for n, c in medians.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
