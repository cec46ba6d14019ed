"""Wall time of a loopback download with a known sha256 against the same without a hash.

``PYTHONPATH=. python bench/integrity_known_hash.py [--size-mib 1024] [--rounds 3]``

The file is served by ``bitsnb.testing.FileServer`` in this process (sendfile, outside the
GIL); each download runs in a fresh child process with its own store, alternating plain and
hashed runs, and the medians are compared (the issue's target: hashed ≤ 1.05 × plain).
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
import json, sys, time
import bitsnb
store, url, local, known = sys.argv[1:5]
with bitsnb.Manager(store=store) as mgr:
    job = mgr.create_job("bench")
    job.add_file(url, local, known_hash=known or None)
    t = time.perf_counter()
    job.resume()
    state = job.wait(timeout=600)
    elapsed = time.perf_counter() - t
    print(json.dumps({"state": state.name, "seconds": elapsed, "hash": job.files[0].hash}))
    job.cancel()
"""


def _run(url: str, work: Path, known: str, n: int) -> float:
    store, local = work / f"s{n}.db", work / f"f{n}.bin"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store), url, str(local), known],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["state"] == "TRANSFERRED", result
    assert not known or result["hash"] == known, result
    return float(result["seconds"])


def main() -> int:
    """Serve one file, time plain and known-hash downloads in turn, print the medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
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
            plain: list[float] = []
            hashed: list[float] = []
            for i in range(args.rounds):
                plain.append(_run(url, work, "", 2 * i))
                hashed.append(_run(url, work, known, 2 * i + 1))
                print(f"round {i}: plain {plain[-1]:.2f} s, known sha256 {hashed[-1]:.2f} s")
    p, k = statistics.median(plain), statistics.median(hashed)
    print(f"{args.size_mib} MiB median: plain {p:.2f} s, known sha256 {k:.2f} s, ratio {k / p:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
