"""The bandwidth options of the command line (issue 14): ``set --max-bandwidth``, ``transfer
--max-bandwidth`` (curl's units), and the manager-wide options of commands that run the queue.
Run in this process (``bitsnb._cli.main``) against the test's own BITSNB_HOME store."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

import bitsnb
from bitsnb import _cli
from bitsnb._cli import parse_rate_arg
from bitsnb._cli_args import bandwidth_policy
from bitsnb._manager import default_store_path
from bitsnb.testing import FileServer


def run(capsys: pytest.CaptureFixture[str], *args: object) -> subprocess.CompletedProcess[str]:
    capsys.readouterr()
    code = _cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def cap_of(job_id: str) -> float | None:
    with bitsnb.Manager(store=default_store_path(), policy=bitsnb.Policy(max_active_jobs=0)) as m:
        return m.get_job(job_id).max_bandwidth


def test_rates_read_as_curl_writes_them() -> None:
    assert parse_rate_arg("5MB") == 5_000_000
    assert parse_rate_arg("200k") == 200_000
    assert parse_rate_arg("1.5G") == 1_500_000_000
    assert parse_rate_arg("off") is None
    with pytest.raises(Exception, match="cannot read"):
        parse_rate_arg("fast")


def test_set_max_bandwidth_sets_and_clears_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    made = run(capsys, "create", "capped")
    assert made.returncode == 0, made.stderr
    job_id = made.stdout.strip()
    done = run(capsys, "set", job_id, "--max-bandwidth", "5MB")
    assert done.returncode == 0 and "max bandwidth" in done.stdout
    assert cap_of(job_id) == 5_000_000
    assert run(capsys, "set", job_id, "--max-bandwidth", "off").returncode == 0
    assert cap_of(job_id) is None


def test_a_bad_rate_is_a_usage_error_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = run(capsys, "create", "capped").stdout.strip()
    run(capsys, "set", job_id, "--max-bandwidth", "1M")
    bad = run(capsys, "set", job_id, "--max-bandwidth=-5M")
    assert bad.returncode == _cli.EXIT_USAGE
    assert "cannot read '-5M' as a rate" in bad.stderr
    assert cap_of(job_id) == 1_000_000


def test_transfer_with_a_cap_takes_at_least_size_over_rate(
    capsys: pytest.CaptureFixture[str], server: FileServer, dest: Path
) -> None:
    url = server.add_random_file("c.bin", 300_000)
    began = time.monotonic()
    out = run(
        capsys,
        "transfer",
        url,
        dest / "c.bin",
        "--max-bandwidth",
        "150k",
        "--json",
        "--background",
        "full",
        "--background-max-bandwidth",
        "10M",
    )
    took = time.monotonic() - began
    assert out.returncode == 0, out.stderr
    assert (dest / "c.bin").stat().st_size == 300_000
    assert took >= (300_000 - 64 * 1024) / 150_000  # a cap only bounds time from below


def test_the_manager_wide_options_reach_the_policy() -> None:
    parser = _cli.build_parser()
    args = parser.parse_args(
        ["wait", "job", "--background-max-bandwidth", "2M", "--background", "full"]
    )
    policy = bitsnb.Policy()
    bandwidth_policy(args, policy)
    assert policy.max_bandwidth == 2_000_000 and policy.background == "full"
    args = parser.parse_args(["monitor", "--count", "1"])
    policy = bitsnb.Policy()
    bandwidth_policy(args, policy)
    assert policy.max_bandwidth is None and policy.background == "yield"
