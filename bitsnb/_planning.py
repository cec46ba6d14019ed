"""Where downloads land: URL → file name and destination, one rule for the CLI and the helpers.

``bitsnb transfer URL... DEST`` and ``bitsnb.download(urls, dest)`` both call ``plan_downloads``,
so they agree on every case:

- DEST names a folder when it is an existing folder, ends with ``/`` (or ``os.sep``), or when
  several URLs are given; each file is then named after its URL's last path segment
  (percent-decoded). Otherwise (one URL) DEST is the file's full path.
- The folder the files land in (DEST, or a single file's parent) is created when missing, with
  its parents, as pooch, ``wget -P`` and ``curl --create-dirs`` do: what a user who names a
  folder expects. ``DownloadPlan.folder`` says which; the caller creates it (``make_folder``)
  only after every URL and name was checked, so a refused call leaves the disk unchanged.
- Refused with ``BitsError(E_INVALIDARG)``: a bad URL, a name that is empty, ``.``, ``..``, or
  holds ``/``, ``\\`` or a control character after decoding (never silently rewritten), two URLs
  landing on one path, no URLs. A DEST that exists as a file while a folder is needed is refused
  with ``ERROR_PATH_NOT_FOUND``.

Rules only: it reads the file system (is DEST a folder?) through ``is_dir`` and writes nothing;
``make_folder`` is the one call that does, kept here so both callers translate errors alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ._codes import E_INVALIDARG, ERROR_PATH_NOT_FOUND, hresult_from_errno
from ._errors import BitsError
from ._validate import MAX_DISPLAY_NAME, MAX_NAME, MAX_PATH, check_local_name, check_url

__all__ = [
    "DownloadPlan",
    "default_display_name",
    "local_path",
    "make_folder",
    "name_from_url",
    "plan_downloads",
]


@dataclass(frozen=True, slots=True)
class DownloadPlan:
    """(URL, absolute local path) pairs, and the folder they land in (to create if missing)."""

    pairs: list[tuple[str, str]]
    folder: str


def _invalid(message: str) -> BitsError:
    return BitsError(E_INVALIDARG, message)


def local_path(text: str | os.PathLike[str]) -> str:
    """A local name as BITS wants it: absolute and normalised (``~`` expanded, relative to the
    current folder)."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(text))))


def name_from_url(url: str) -> str:
    """The last segment of the URL's path, percent-decoded; refused when unsafe as a file name."""
    try:
        segment = urlsplit(url).path.rsplit("/", 1)[-1]
    except ValueError:
        raise _invalid(f"the URL {url!r} cannot be parsed") from None
    name = unquote(segment)
    if name.strip() in ("", ".", ".."):
        raise _invalid(
            f"cannot derive a file name from {url!r} (its path ends in {segment!r}); "
            "give a full destination path instead"
        )
    if "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise _invalid(f"the file name {name!r} derived from {url!r} is not a safe file name")
    return name


def plan_downloads(
    urls: Sequence[str],
    dest: str | os.PathLike[str],
    *,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> DownloadPlan:
    """Check *urls* and name their files under *dest* (see the module docstring for the rule)."""
    if not urls:
        raise _invalid("no URLs given")
    checked = [check_url(u) for u in urls]
    text = os.fspath(dest)
    target = local_path(text)
    into_folder = len(checked) > 1 or text.endswith(("/", os.sep)) or is_dir(target)
    if into_folder:
        if os.path.lexists(target) and not is_dir(target):
            raise BitsError(
                ERROR_PATH_NOT_FOUND,
                f"{target!r} is a file, but the destination must be a folder here "
                "(several URLs, or a name ending in '/')",
            )
        pairs = [(u, os.path.join(target, name_from_url(u))) for u in checked]
        folder = target
    else:
        pairs = [(checked[0], target)]
        folder = os.path.dirname(target)
    seen: dict[str, str] = {}
    for url, path in pairs:
        if path in seen:
            raise _invalid(
                f"{url!r} and {seen[path]!r} would both be saved as {path!r}; "
                "download them into different folders or one at a time"
            )
        seen[path] = url
    if is_dir(folder):
        for _, path in pairs:
            check_local_name(path)
    else:  # checked again by add_file once make_folder created it; the lengths can be now
        for _, path in pairs:
            if len(path) > MAX_PATH or len(os.path.basename(path)) > MAX_NAME:
                raise _invalid(f"the local name is too long ({len(path)} characters)")
    return DownloadPlan(pairs, folder)


def make_folder(plan: DownloadPlan) -> None:
    """Create the plan's folder (and its parents) when missing; ``BitsError`` with the HRESULT
    of the OS error (``hresult_from_errno``) when that fails."""
    try:
        os.makedirs(plan.folder, exist_ok=True)
    except OSError as exc:
        raise BitsError(
            hresult_from_errno(exc.errno),
            f"cannot create the folder {plan.folder!r}: {exc.strerror or exc}",
        ) from None


def default_display_name(pairs: Sequence[tuple[str, str]]) -> str:
    """``'a.bin'`` for one file, ``'a.bin and 2 more'`` for three (BITS's limit applies)."""
    first = os.path.basename(pairs[0][1])
    name = first if len(pairs) == 1 else f"{first} and {len(pairs) - 1} more"
    return name[:MAX_DISPLAY_NAME]
