"""Wall time of a loopback download with a known sha256 against the same without a hash.

``PYTHONPATH=. python bench/integrity_known_hash.py [--size-mib 1024] [--rounds 3] [--inline]``

The file is served by ``bitsnb.testing.FileServer`` in this process (sendfile, outside the
GIL); each download runs in a fresh child process with its own store, alternating plain and
hashed runs, and the medians are compared (the issue's target: hashed ≤ 1.05 × plain). Each
child also reports its CPU seconds. ``--inline`` adds a third variant in the rotation: the
known hash computed on the event loop, as before the background hasher (for comparison).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bitsnb.testing import FileServer

_CHILD = """
import json, os, sys, threading, time
import bitsnb
store, url, local, known, inline = sys.argv[1:6]
if inline == "1":
    import bitsnb._engine, bitsnb._integrity
    bitsnb._engine.streaming_hasher = bitsnb._integrity.new_hasher
with bitsnb.Manager(store=store) as mgr:
    job = mgr.create_job("bench")
    job.add_file(url, local, known_hash=known or None)
    t = time.perf_counter()
    job.resume()
    state = job.wait(timeout=600)
    elapsed = time.perf_counter() - t
    cpu = sum(os.times()[:2])
    loop = [t for t in threading.enumerate() if t.name.startswith("bitsnb-loop")][0]
    with open(f"/proc/self/task/{loop.native_id}/stat") as fh:
        ticks = fh.read().rsplit(")", 1)[1].split()
    loop_cpu = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")
    print(json.dumps({"state": state.name, "seconds": elapsed, "cpu": cpu, "loop_cpu": loop_cpu,
                      "hash": job.files[0].hash}))
    job.cancel()
"""


def _run(
    url: str, work: Path, known: str, n: int, inline: bool = False
) -> tuple[float, float, float]:
    store, local = work / f"s{n}.db", work / f"f{n}.bin"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store), url, str(local), known, "1" if inline else "0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["state"] == "TRANSFERRED", result
    assert not known or result["hash"] == known, result
    local.unlink(missing_ok=True)
    for tmp in work.glob(".BIT*.tmp"):
        tmp.unlink()
    return float(result["seconds"]), float(result["cpu"]), float(result["loop_cpu"])


def main() -> int:
    """Serve one file, time plain and known-hash downloads in turn, print medians and bests."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inline", action="store_true", help="also time the hash on the loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bitsnb-integrity-bench-") as tmp:
        work = Path(tmp)
        with FileServer(work / "served") as server:
            url = server.add_random_file("big.bin", args.size_mib << 20, seed=1)
            h = hashlib.sha256()
            with open(server.path("big.bin"), "rb") as fh:
                for _ in range((args.size_mib << 20) // (1 << 20) + 1):  # bounded: 1 MiB a pass
                    block = fh.read(1 << 20)
                    if not block:
                        break
                    h.update(block)
            known = "sha256:" + h.hexdigest()
            runs: dict[str, list[tuple[float, float, float]]] = {"plain": [], "known sha256": []}
            if args.inline:
                runs["sha256 inline"] = []
            for i in range(args.rounds):
                for j, times in enumerate(runs.values()):
                    times.append(_run(url, work, known if j else "", 3 * i + j, j == 2))
                print(
                    f"round {i}: "
                    + ", ".join(
                        f"{k} {v[-1][0]:.2f} s ({v[-1][1]:.2f} CPU-s, loop {v[-1][2]:.2f})"
                        for k, v in runs.items()
                    )
                )
    p = statistics.median(w for w, _, _ in runs["plain"])
    fastest = min(w for w, _, _ in runs["plain"])
    for k, v in runs.items():
        wall = statistics.median(w for w, _, _ in v)
        best = min(w for w, _, _ in v)
        cpu = statistics.median(c for _, c, _ in v)
        loop = statistics.median(x for _, _, x in v)
        print(
            f"{args.size_mib} MiB {k}: median {wall:.2f} s (x{wall / p:.3f}), best {best:.2f} s "
            f"(x{best / fastest:.3f}); CPU {cpu:.2f} s, of it the loop thread {loop:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
