"""Start one program, wait for it with wait4 and write its own times and rusage as JSON.

``python -I -S bench/_launch.py RESULT.json -- PROGRAM ARGS...``. Run as a small intermediate
process because Linux folds the parent's memory into a child's ``ru_maxrss`` at exec: spawned
from this ~10 MiB process, a tool's peak RSS is its own (with a floor of about 10 MiB)
instead of the benchmark driver's. Standard library only (``os``, ``json``, ``time``).
"""

import json
import os
import sys
import time


def _find(program: str) -> str:
    if os.sep in program:
        return program
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder, program)
        if os.access(path, os.X_OK):
            return path
    return program


def main() -> int:
    """Spawn argv after ``--``, reap it, write the result file, exit with its status."""
    result_path = sys.argv[1]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    t_spawn = time.monotonic()
    pid = os.posix_spawn(_find(argv[0]), argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    t_exit = time.monotonic()
    result = {
        "t_spawn": t_spawn,
        "t_exit": t_exit,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "maxrss_kib": usage.ru_maxrss,
        "status": status,
    }
    with open(result_path, "w") as fh:
        json.dump(result, fh)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
