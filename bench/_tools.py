"""Find the external programs the suite needs, installing them from Debian's packages if allowed.

Installing happens only when running as root, with ``apt-get update`` once first; every apt
call is bounded in time. Whatever cannot be had is reported, and its part is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["Toolbox"]

# program -> Debian packages to try, in order
_PACKAGES: dict[str, tuple[str, ...]] = {
    "nginx": ("nginx-light", "nginx"),
    "curl": ("curl",),
    "wget": ("wget",),
    "aria2c": ("aria2",),
}
_EXTRA_PATHS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def _which(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    for folder in _EXTRA_PATHS:
        path = os.path.join(folder, program)
        if os.access(path, os.X_OK):
            return path
    return None


class Toolbox:
    """Locates programs; ``get(name)`` returns a path or None and records why in ``notes``."""

    def __init__(self, *, install: bool = True, log: bool = True) -> None:
        self.install = install and hasattr(os, "geteuid") and os.geteuid() == 0
        self.wanted_install = install
        self.log = log
        self.notes: list[str] = []
        self._updated = False
        self._cache: dict[str, str | None] = {}

    def _say(self, text: str) -> None:
        self.notes.append(text)
        if self.log:
            print(f"  [tools] {text}", flush=True)

    def _apt(self, *args: str, timeout: float) -> bool:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            proc = subprocess.run(
                ["apt-get", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._say(f"apt-get {' '.join(args)} failed: {exc}")
            return False
        if proc.returncode != 0:
            tail = proc.stdout.decode("utf-8", "replace").strip()[-300:]
            self._say(f"apt-get {' '.join(args)} exited {proc.returncode}: {tail}")
        return proc.returncode == 0

    def get(self, program: str) -> str | None:
        """The path of *program*, installed with apt-get when missing and allowed; else None."""
        if program in self._cache:
            return self._cache[program]
        path = _which(program)
        if path is None and self.install and shutil.which("apt-get"):
            if not self._updated:
                self._say("running apt-get update (once)")
                self._apt("update", "-q", timeout=300)
                self._updated = True
            for package in _PACKAGES.get(program, (program,)):
                self._say(f"{program} is missing: apt-get install -y {package}")
                if self._apt("install", "-y", "-q", package, timeout=600):
                    path = _which(program)
                    if path:
                        break
        if path is None:
            if not self.wanted_install:
                how = "installing was turned off (--no-install)"
            elif not self.install:
                how = "not root, so it cannot be installed with apt-get"
            else:
                how = "apt-get could not install it"
            self._say(f"{program} NOT AVAILABLE ({how}); its part is skipped")
        self._cache[program] = path
        return path
