"""The example notebooks run clean, top to bottom, on a real kernel; the Binder files are sane."""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import bitsnb

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
HELPER_NAMES = ("default_manager", "download", "download_many", "errors_frame", "explain", "jobs_frame", "run")  # fmt: skip
CHECK_KERNEL = "import sys\nprint(sys.prefix)"


def test_the_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01-quickstart.ipynb",
        "02-job-life-cycle.ipynb",
        "03-queue-dataframes.ipynb",
        "04-teaching-the-state-machine.ipynb",
        "05-uploads.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_clean(path: Path) -> None:
    """Execute with nbclient on the ``python3`` kernel (ipykernel of this interpreter)."""
    missing = [n for n in HELPER_NAMES if not hasattr(bitsnb, n)]
    assert not missing, f"bitsnb/__init__.py does not export {missing} from bitsnb.helpers yet"
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(CHECK_KERNEL))
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    first = nb.cells[0].outputs
    assert first and first[0]["text"].strip() == sys.prefix, "the kernel runs another Python"
    stderr = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            if out["output_type"] == "stream" and out["name"] == "stderr":
                stderr.append(out["text"])
    assert "Traceback" not in "".join(stderr)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    text = "".join(o.get("text", "") for o in last.outputs)
    assert text.rstrip().endswith("-> False"), "the last cell must remove its temporary folder"


def test_binder_requirements_match_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    lines = (ROOT / "binder" / "requirements.txt").read_text("utf-8").splitlines()
    listed = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    extras = project["optional-dependencies"]["server"]  # the upload notebook runs the server
    assert sorted(listed) == sorted(project["dependencies"] + extras)
    assert not any(ln.startswith(("-e", ".")) for ln in listed)


def test_binder_post_build_installs_the_package() -> None:
    post_build = ROOT / "binder" / "postBuild"
    text = post_build.read_text("utf-8")
    assert text.startswith("#!/bin/bash\n")
    assert "pip install --no-cache-dir --no-deps -e ." in text
    assert os.stat(post_build).st_mode & stat.S_IXUSR
    runtime = (ROOT / "binder" / "runtime.txt").read_text("utf-8").strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    minimum = project["requires-python"].removeprefix(">=")
    assert runtime == f"python-{minimum}"  # repo2docker's default Python is older
