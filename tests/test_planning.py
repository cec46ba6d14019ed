"""bitsnb._planning: one URL → file name and destination rule, same answer from CLI and helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bitsnb
from bitsnb import JobState, _cli
from bitsnb._codes import E_INVALIDARG, ERROR_PATH_NOT_FOUND
from bitsnb._planning import default_display_name, name_from_url, plan_downloads
from bitsnb.helpers import download, download_many
from bitsnb.testing import FileServer

TIMEOUT = 15.0


def test_names_come_from_the_last_segment() -> None:
    assert name_from_url("http://h/a/b%20c.bin?q=1#f") == "b c.bin"
    for bad in (
        "http://h/",
        "http://h/x/.",
        "http://h/x/%2E%2E",
        "http://h/a%2Fb",
        "http://h/a%00",
    ):
        with pytest.raises(bitsnb.BitsError) as info:
            name_from_url(bad)
        assert info.value.code == E_INVALIDARG, bad
    assert default_display_name([("u", "/x/a.bin")]) == "a.bin"
    assert default_display_name([("u", "/x/a.bin"), ("v", "/x/b.bin")]) == "a.bin and 1 more"


def test_the_plan_writes_nothing(tmp_path: Path) -> None:
    plan = plan_downloads(["http://h/a.bin", "http://h/b.bin"], tmp_path / "new" / "deeper")
    assert plan.folder == str(tmp_path / "new" / "deeper")
    assert [p for _, p in plan.pairs] == [
        str(tmp_path / "new" / "deeper" / "a.bin"),
        str(tmp_path / "new" / "deeper" / "b.bin"),
    ]
    assert os.listdir(tmp_path) == []


CASES = [
    # (URL names, destination relative to tmp_path, the files' paths relative to tmp_path)
    (["a.bin"], "dl", ["dl/a.bin"]),  # existing folder
    (["a.bin"], "dl/renamed.bin", ["dl/renamed.bin"]),  # a file path
    (["a.bin"], "fresh/", ["fresh/a.bin"]),  # trailing '/': a folder, created
    (["a.bin", "b.bin"], "many", ["many/a.bin", "many/b.bin"]),  # several: a folder, created
    (["a.bin"], "p/q/file.bin", ["p/q/file.bin"]),  # a file whose folder is created
]


@pytest.mark.parametrize(("names", "where", "expected"), CASES)
def test_cli_and_download_agree(
    tmp_path: Path,
    manager: bitsnb.Manager,
    server: FileServer,
    names: list[str],
    where: str,
    expected: list[str],
) -> None:
    urls = [server.add_file(n, n.encode()) for n in names]
    (tmp_path / "dl").mkdir(exist_ok=True)
    cli_root, helper_root = tmp_path / "cli", tmp_path / "helper"
    for root in (cli_root, helper_root):
        root.mkdir()
        (root / "dl").mkdir()
    cli_dest = os.path.join(cli_root, where)
    helper_dest = os.path.join(helper_root, where)

    cli_pairs = _cli.plan_destinations(urls, cli_dest)
    job = download(urls, helper_dest, manager=manager, display=False, complete=True)
    assert job.state is JobState.ACKNOWLEDGED
    helper_pairs = [(f.remote_name, f.local_name) for f in job.files]

    assert [os.path.relpath(p, cli_root) for _, p in cli_pairs] == expected
    assert [os.path.relpath(p, helper_root) for _, p in helper_pairs] == expected
    for name, rel in zip(names, expected, strict=True):  # folders made, downloads landed
        assert os.path.isdir(os.path.dirname(cli_root / rel))
        assert (helper_root / rel).read_bytes() == name.encode()


@pytest.mark.parametrize(
    ("urls", "where", "code"),
    [
        (["http://h/a.bin", "http://h/x/a.bin"], "out", E_INVALIDARG),  # same name twice
        (["http://h/"], "out/", E_INVALIDARG),  # no name in the URL
        (["ftp://h/a.bin"], "out", E_INVALIDARG),  # not http(s)
        ([], "out", E_INVALIDARG),
        (["http://h/a.bin", "http://h/b.bin"], "a-file", ERROR_PATH_NOT_FOUND),
    ],
)
def test_cli_and_download_refuse_alike(
    tmp_path: Path, manager: bitsnb.Manager, urls: list[str], where: str, code: int
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a-file").write_bytes(b"x")
    dest = os.path.join(work, where)
    with pytest.raises(bitsnb.BitsError) as from_cli:
        _cli.plan_destinations(urls, dest)
    with pytest.raises(bitsnb.BitsError) as from_helpers:
        download(urls, dest, manager=manager, display=False)
    assert from_cli.value.code == from_helpers.value.code == code
    if where != "a-file":
        with pytest.raises(bitsnb.BitsError) as many:
            download_many(urls, dest, manager=manager, display=False)
        assert many.value.code == code
    assert os.listdir(work) == ["a-file"]  # nothing created
    assert list(manager.enum_jobs()) == []
