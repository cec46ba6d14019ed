"""A saved notebook shows each panel's final state (issue 17): the panels carry display ids and
re-publish their ``text/plain`` and ``text/html``, so a reader without the kernel (GitHub,
nbviewer, this test) sees "ACKNOWLEDGED 20/20 files 100%", not the state at display time.

A real kernel runs the notebook through nbclient; the outputs are written with nbformat and
read back from the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.notebook


def _plain(cell: object) -> list[str]:
    return [
        o["data"]["text/plain"]
        for o in cell.outputs  # type: ignore[attr-defined]
        if o.output_type in ("display_data", "execute_result") and "text/plain" in o["data"]
    ]


def _html(cell: object) -> list[str]:
    return [
        o["data"]["text/html"]
        for o in cell.outputs  # type: ignore[attr-defined]
        if o.output_type == "display_data" and "text/html" in o["data"]
    ]


def test_saved_notebook_shows_the_final_state(tmp_path: Path) -> None:
    cells = [
        f"""
import time, pathlib
import bitsnb
from bitsnb.testing import Fault, FileServer
tmp = pathlib.Path({str(tmp_path)!r})
srv = FileServer().start()
urls = [srv.add_random_file(f"chunk-{{i:02d}}.csv", 20_000, seed=i) for i in range(20)]
srv.inject("chunk-*.csv", Fault.stall(0.02, times=-1))
mgr = bitsnb.Manager(tmp / "jobs.db")
""",
        # 1: blocks until the files are in place; the panel shown at the start is updated
        """job = bitsnb.download(urls, tmp / "data", manager=mgr, wait=True)""",
        # 2: a 404 shown while CONNECTING, ERROR a cell later
        """bad = bitsnb.download(srv.url("missing.csv"), tmp / "bad/", manager=mgr)""",
        # 3: returns at once, completes in the background
        """later = bitsnb.download(urls[:5], tmp / "later", manager=mgr)""",
        # 4: wait for both; the after-cell hook re-publishes the panels of cells 2 and 3
        """
deadline = time.monotonic() + 60
while time.monotonic() < deadline and (
    bad.state is not bitsnb.JobState.ERROR or later.state is not bitsnb.JobState.ACKNOWLEDGED
):
    time.sleep(0.05)
print(bad.state, later.state, sorted(p.name for p in bitsnb.helpers.paths(job))[:2])
""",
        """mgr.close(); srv.stop()""",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    saved = tmp_path / "saved.ipynb"
    nbformat.write(nb, saved)
    nb = nbformat.read(saved, as_version=4)
    for cell in nb.cells:
        for out in cell.outputs:
            assert out.output_type != "error", out

    assert "ERROR ACKNOWLEDGED ['chunk-00.csv', 'chunk-01.csv']" in nb.cells[4].outputs[0].text

    (done,) = _plain(nb.cells[1])
    assert " ACKNOWLEDGED  100% 400.0 kB / 400.0 kB  20/20 files  400.0 kB in " in done, done
    (done_html,) = _html(nb.cells[1])
    assert ">ACKNOWLEDGED</b>" in done_html and "20/20 files" in done_html
    assert "width:100.0%" in done_html

    (failed,) = _plain(nb.cells[2])
    assert "  ERROR  " in failed and "missing.csv" in failed and "BG_E_HTTP_ERROR_404" in failed, (
        failed
    )
    (failed_html,) = _html(nb.cells[2])
    assert ">ERROR</b>" in failed_html and "width:0.0%" in failed_html

    (later_text,) = _plain(nb.cells[3])
    assert "ACKNOWLEDGED  100%" in later_text and "5/5 files" in later_text, later_text
