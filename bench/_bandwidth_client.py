"""One bandwidth run inside the WAN testbed's client namespace (a child process of the bench).

``python bench/_bandwidth_client.py URL STORE OUTDIR SECONDS [FG_START FG_STOP]``: a background
(NORMAL) bitsnb job downloads URL under the default ``Policy()`` (background="yield") or
``--full``; a probe opens a TCP connection to the server every 100 ms and records how long the
connect took (one round trip, plus whatever queue the bottleneck holds); between FG_START and
FG_STOP a ``curl`` (the foreground flow, Reno like any program) downloads the same URL, or with
``--fg-job`` a FOREGROUND bitsnb job in the same manager (never under the yield rate). Every
100 ms the bytes each has so far are recorded ("curl" is the foreground flow's column either
way). Prints one JSON object; bounded by SECONDS.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import bitsnb


def main(argv: list[str]) -> int:
    full = "--full" in argv
    fg_job = "--fg-job" in argv
    args = [a for a in argv if not a.startswith("--")]
    url, store, outdir, seconds = args[0], Path(args[1]), Path(args[2]), float(args[3])
    fg = (float(args[4]), float(args[5])) if len(args) >= 6 else None
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    probes: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def probe() -> None:
        for _ in range(int(seconds * 10) + 10):  # bounded: one connect per 100 ms
            if stop.is_set():
                return
            began = time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=5.0):
                    probes.append((began - t0, time.monotonic() - began))
            except OSError:
                probes.append((began - t0, float("nan")))
            stop.wait(max(0.0, 0.1 - (time.monotonic() - began)))

    samples: list[tuple[float, int, int, str]] = []
    curl_file = outdir / "curl.out"
    curl: subprocess.Popen[bytes] | None = None
    fg_file = outdir / "fg.bin"
    foreground: bitsnb.Job | None = None
    policy = bitsnb.Policy(background="full" if full else "yield")
    with bitsnb.Manager(store=store, policy=policy) as mgr:
        job = mgr.create_job("background")
        job.add_file(url, outdir / "bg.bin")
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        job.resume()
        got = 0
        for _ in range(int(seconds * 10)):  # bounded: SECONDS at 10 samples a second
            now = time.monotonic() - t0
            if now >= seconds or job.state.is_final or job.state is bitsnb.JobState.TRANSFERRED:
                break
            if fg is not None and fg_job and foreground is None and now >= fg[0]:
                foreground = mgr.create_job("foreground", priority=bitsnb.JobPriority.FOREGROUND)
                foreground.add_file(url, fg_file)
                foreground.resume()
            if fg is not None and foreground is not None and now >= fg[1]:
                if not foreground.state.is_final:
                    foreground.cancel()
            if fg is not None and not fg_job and curl is None and now >= fg[0]:
                curl = subprocess.Popen(
                    ["curl", "-s", "--noproxy", "*", "-o", str(curl_file), url],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            if fg is not None and curl is not None and now >= fg[1] and curl.poll() is None:
                curl.terminate()
                curl.wait(timeout=10)
            if foreground is not None:
                got = foreground.progress.bytes_transferred if now < fg[1] else got
            else:
                got = curl_file.stat().st_size if curl_file.exists() else 0
            status = job.bandwidth.state or ""
            samples.append((now, job.progress.bytes_transferred, got, status))
            time.sleep(0.1)
        stop.set()
        if curl is not None and curl.poll() is None:
            curl.terminate()
            curl.wait(timeout=10)
        job.cancel()
        if foreground is not None and not foreground.state.is_final:
            foreground.cancel()
    prober.join(timeout=10)
    flow = "job" if fg_job else "curl"
    out = {"samples": samples, "probes": probes, "mode": policy.background, "foreground": flow}
    print(json.dumps(out))
    for f in (curl_file, fg_file, outdir / "bg.bin"):
        with __import__("contextlib").suppress(OSError):
            os.unlink(f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
