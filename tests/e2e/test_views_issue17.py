"""Issue 17 in the browser: light and dark screenshots of a job panel and a 150-job queue panel
at 1400 and 700 px, the queue totals against the store, the confirmation on Cancel, and the
final state in the notebook JupyterLab saves.

Uses the Jupyter server and Chromium ``test_jupyterlab`` uses (``conftest.py``'s fixtures,
the same skips), in a JupyterLab workspace of its own (the other test's tabs are not restored).
Screenshots go to ``test-artifacts/e2e/issue17-*.png``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import pytest

from bitsnb.notebook._text import FILTERS

from .test_jupyterlab import (
    ARTIFACTS,
    KERNEL_TIMEOUT,
    UI_TIMEOUT,
    Jupyter,
    assert_no_broken_widgets,
    shot,
    shut_down_kernel,
    wait_for_kernel,
)

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page

pytestmark = [pytest.mark.notebook, pytest.mark.slow, pytest.mark.timeout(300)]

NOTEBOOK = "issue17.ipynb"
CELLS = {
    "setup": """\
import os, pathlib, time
from collections import Counter
import bitsnb
from bitsnb.testing import Fault, FileServer
here = pathlib.Path.cwd()
(here / "kernel.pid").write_text(str(os.getpid()))
srv = FileServer(root=here / "served17").start()
chunks = [srv.add_random_file(f"chunk-{i:02d}.csv", 25_000, seed=i) for i in range(20)]
slow_url = srv.add_random_file("big.bin", 30_000_000, seed=99)
srv.inject("big.bin", Fault.stall_after(150_000, 2.0, times=-1))  # ~70 kB/s: still running at the Cancel click, however slow the machine
policy = bitsnb.Policy(min_retry_delay_floor=0.05, max_active_jobs=8)
mgr = bitsnb.Manager(store=here / "jobs17.db", policy=policy)""",
    "job": 'job = bitsnb.download(chunks, here / "mydata", name="chunks", manager=mgr, wait=True)',
    "big": (
        'big = bitsnb.download(slow_url, here / "big/", name="big download", manager=mgr)\n'
        "big.minimum_retry_delay = 0.05"
    ),
    "queue": """\
(here / "later").mkdir(exist_ok=True)
for i in range(140):
    j = mgr.create_job(f"run-{i:03d}")
    j.add_file(srv.url(f"later-{i}.csv"), str(here / "later" / f"later-{i}.csv"))
bad = []
for i in range(8):
    j = mgr.create_job(f"broken-{i}")
    j.add_file(srv.url(f"missing-{i}.csv"), str(here / "later" / f"missing-{i}.csv"))
    j.resume()
    bad.append(j)
q = mgr.panel()
bitsnb.notebook.show_panel(q)""",
    "check": """\
for j in bad:
    j.wait(30)
# what mgr.panel() shows: the queue (finished jobs such as "chunks" are history)
print("STORE", json.dumps(Counter(j.state.name for j in mgr.enum_jobs())))""",
}
CELL_INDEX = {name: i for i, name in enumerate(CELLS)}


def _write(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    cells = dict(CELLS)
    cells["setup"] = "import json\n" + cells["setup"]
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells.values()]
    nbformat.write(nb, path)


def _cell(page: Page, name: str) -> Locator:
    return page.locator(".jp-Notebook .jp-CodeCell").nth(CELL_INDEX[name])


def _out(page: Page, name: str) -> Locator:
    return _cell(page, name).locator(".jp-OutputArea-output").first


def _group_counts(store: dict[str, int]) -> dict[str, int]:
    counts = dict.fromkeys(("active", "suspended", "transferred", "error", "finished"), 0)
    for state, n in store.items():
        for group in counts:
            states = FILTERS[group]
            if states is not None and any(s.name == state for s in states):
                counts[group] += n
    return counts


def _theme(page: Page, name: str) -> None:
    page.get_by_role("menuitem", name="Settings", exact=True).click()
    page.locator(".lm-Menu-item", has_text="Theme").first.hover()
    page.locator(".lm-Menu-item", has_text=name).first.click()
    page.wait_for_function(
        "(dark) => document.body.dataset.jpThemeLight === (dark ? 'false' : 'true')",
        arg=name.endswith("Dark"),
        timeout=UI_TIMEOUT,
    )
    time.sleep(0.3)  # let the theme's CSS variables settle before the photo


def _photos(page: Page, theme: str) -> list[Path]:
    paths = []
    for width in (1400, 700):
        page.set_viewport_size({"width": width, "height": 900})
        _cell(page, "job").scroll_into_view_if_needed()
        paths.append(
            shot(page, f"issue17-job-{theme}-{width}", _out(page, "job"), _out(page, "big"))
        )
        _cell(page, "queue").scroll_into_view_if_needed()
        paths.append(shot(page, f"issue17-queue-{theme}-{width}", _out(page, "queue")))
    return paths


def test_views_light_dark_totals_confirm_and_saved_state(
    jupyter: Jupyter, browser: BrowserContext
) -> None:
    from playwright.sync_api import expect

    _write(jupyter.root / NOTEBOOK)
    page = browser.new_page()
    page.set_default_timeout(UI_TIMEOUT)
    try:
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(
            jupyter.url(f"/lab/workspaces/issue17/tree/{NOTEBOOK}"), wait_until="domcontentloaded"
        )
        wait_for_kernel(jupyter, NOTEBOOK, KERNEL_TIMEOUT / 1000)
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
            timeout=KERNEL_TIMEOUT
        )
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
        check = _cell(page, "check").locator(".jp-OutputArea")
        expect(check).to_contain_text("STORE", timeout=KERNEL_TIMEOUT)
        store = json.loads(re.search(r"STORE (\{.*\})", check.inner_text()).group(1))  # type: ignore[union-attr]
        n = sum(store.values())
        assert n == 149, store  # 150 jobs made; "chunks" is ACKNOWLEDGED, out of the queue

        # totals on top, against the store; every job counted once
        queue = _out(page, "queue")
        want = _group_counts(store)
        expect(queue).to_contain_text(f"{n} jobs: ")
        totals = queue.locator(".widget-html").filter(has_text=f"{n} jobs").first
        for group, n in want.items():
            if n:
                expect(totals).to_contain_text(f"{n} {group}")
        assert queue.locator("table.bitsnb-q th", has_text="error").count() == 1
        height = page.wait_for_function(  # bounded, scrolls (read in the page: the view may be
            "(el) => { const b = el.querySelector('.bitsnb-qbox');"  # re-made meanwhile)
            " return b && b.getBoundingClientRect().height; }",
            arg=queue.element_handle(),
        ).json_value()
        assert 100 < float(height) < 450, height

        # the finished job reads final; Complete was done by the helper
        job = _out(page, "job")
        expect(job).to_contain_text("ACKNOWLEDGED")
        expect(job).to_contain_text("20/20 files")
        expect(job).to_contain_text(re.compile(r"500\.0 kB in \d+ s \("))

        # confirmation on Cancel for a job with data
        big = _out(page, "big")
        expect(big).to_contain_text(re.compile("TRANSFERRING|TRANSIENT_ERROR"), timeout=30_000)
        page.wait_for_function(
            "(el) => parseFloat(el.querySelector('.progress-bar').style.width || '0') > 0",
            arg=big.element_handle(),
            timeout=30_000,
        )
        light = _photos(page, "light")
        page.set_viewport_size({"width": 1400, "height": 900})
        big.scroll_into_view_if_needed()
        big.locator("button", has_text="Cancel").click()
        expect(big.locator("button", has_text="Confirm cancel")).to_be_visible()
        expect(big).to_contain_text("Cancel deletes the")
        assert "CANCELLED" not in big.inner_text()
        shot(page, "issue17-confirm-cancel", big)
        big.locator("button", has_text="Confirm cancel").click()
        expect(big).to_contain_text("CANCELLED")

        _theme(page, "JupyterLab Dark")
        dark = _photos(page, "dark")
        assert_no_broken_widgets(page)
        _theme(page, "JupyterLab Light")

        # the saved notebook holds the final state of the job panel
        page.keyboard.press("Control+s")
        saved_path = jupyter.root / NOTEBOOK
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            try:
                nb = nbformat.read(saved_path, as_version=4)
            except nbformat.reader.NotJSONError:  # caught mid-save (truncated, not yet written)
                time.sleep(0.2)
                continue
            outs = nb.cells[CELL_INDEX["job"]].outputs
            text = "".join(o.get("data", {}).get("text/plain", "") for o in outs)
            if "ACKNOWLEDGED" in text:
                break
            time.sleep(0.2)
        assert "ACKNOWLEDGED  100%" in text and "20/20 files" in text, text
        for path in (*light, *dark):
            assert path.stat().st_size > 2000
        print("screenshots:", *sorted(p.name for p in ARTIFACTS.glob("issue17-*.png")))
    finally:
        shut_down_kernel(jupyter, NOTEBOOK)
        page.close()
