"""Where a known hash's time goes on the loop thread: the same 1 GiB download over one
connection, plain; its views kept and handed to a hasher that does nothing (the hand-off
alone); to one that does sha256's work on a small buffer of its own (the compute, without the
loop's bytes); and to sha256 itself.

``PYTHONPATH=. python bench/integrity_handoff.py [--size-mib 1024] [--rounds 3]``

The server runs in this process (sendfile); the loop thread's user and system CPU seconds come
from ``/proc/self/task``. The no-op and stand-in hashers fail the final check (ERROR), which
does not change what the loop spent.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import bitsnb
from bitsnb import _integrity
from bitsnb.testing import FileServer

_FIXED = memoryview(bytes(64 * 1024))


class _Noop:
    """Hashes nothing: what is left is the hand-off."""

    def update(self, data: bytes | memoryview, /) -> None:
        pass

    def digest(self) -> bytes:
        return bytes(32)


class _Fixed:
    """sha256's work on one cache-resident buffer: the compute without the loop's bytes."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, data: bytes | memoryview, /) -> None:
        n = len(data)
        for _ in range(n // len(_FIXED)):
            self._h.update(_FIXED)
        if n % len(_FIXED):
            self._h.update(_FIXED[: n % len(_FIXED)])

    def digest(self) -> bytes:
        return self._h.digest()


def _loop_cpu(tid: int) -> tuple[float, float]:
    with open(f"/proc/self/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / 100, int(fields[12]) / 100


def main() -> int:
    """Time each variant in turn, *rounds* times; print the loop thread's medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    real = _integrity._HASHERS["sha256"]
    variants = {"plain": real, "no-op": _Noop, "stand-in": _Fixed, "sha256": real}
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory(prefix="bitsnb-handoff-") as tmp:
        work = Path(tmp)
        with FileServer(work / "served") as server:
            url = server.add_random_file("big.bin", args.size_mib << 20, seed=1)
            known = "sha256:" + hashlib.sha256(server.path("big.bin").read_bytes()).hexdigest()
            for r in range(args.rounds):
                for name, make in variants.items():
                    _integrity._HASHERS["sha256"] = make
                    policy = bitsnb.Policy(max_connections_per_file=1)
                    with bitsnb.Manager(store=work / f"{name}{r}.db", policy=policy) as mgr:
                        loop = next(t for t in threading.enumerate() if t.name == "bitsnb-loop")
                        assert loop.native_id is not None
                        u0, s0 = _loop_cpu(loop.native_id)
                        job = mgr.create_job(name)
                        job.add_file(
                            url, work / "out.bin", known_hash=None if name == "plain" else known
                        )
                        t = time.perf_counter()
                        job.resume()
                        job.wait(timeout=600)
                        wall = time.perf_counter() - t
                        u1, s1 = _loop_cpu(loop.native_id)
                        runs[name].append((wall, u1 - u0, s1 - s0))
                        job.cancel()
    _integrity._HASHERS["sha256"] = real
    for name, v in runs.items():
        user = statistics.median(x[1] for x in v)
        system = statistics.median(x[2] for x in v)
        walls = ", ".join(f"{x[0]:.2f}" for x in v)
        print(
            f"{name}: loop user {user:.2f} + sys {system:.2f} = {user + system:.2f} CPU-s; wall {walls} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
