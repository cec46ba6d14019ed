"""The notebook panels the way a user meets them: JupyterLab 4 and Notebook 7 in headless Chromium.

A real Jupyter server on 127.0.0.1 runs a generated notebook that downloads from a loopback
``FileServer`` with stalled files; Playwright clicks Run → Run All Cells, then the panels' buttons,
and reads the rendered widgets back from the DOM. Screenshots go to ``test-artifacts/e2e/``.
Skipped when ``/usr/bin/chromium``, ``playwright`` or ``jupyterlab`` (``notebook`` for Notebook 7)
is missing: ``.ci/apt-packages`` installs chromium; Playwright's own browser download is never used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
UI_TIMEOUT = 30_000  # ms, Playwright's default for every wait, click and expect
KERNEL_TIMEOUT = 90_000  # ms, first page load + kernel start + the setup cell
BLOCK_TIMEOUT = 25_000  # ms, bound on watching the bar during the 10 s blocking cell
NOTEBOOK = "e2e.ipynb"
QUICK_FILES, QUICK_SIZE = 3, 400_000
# slow.bin comes in 64 pieces: each request gets 200 kB, a 0.5 s stall, then a dropped
# connection (a known size, so a real bar, unlike a multi-file job whose total stays unknown);
# 32 s of stalls at least, so it still runs at the Suspend click on a slow, loaded machine;
# once suspended, the rest comes after one short stall (RESUMED_STALL), not in pieces.
SLOW_SIZE, SLOW_CHUNK, SLOW_STALL = 12_800_000, 200_000, 0.5
SLOW_TIMEOUT = 120_000  # ms, bound on the slow job's remaining bytes after Resume
RESUMED_STALL = 1.5  # s, the stall before the rest of slow.bin after Resume (seen running)

STATE_RE = re.compile(
    r"^\s*(QUEUED|CONNECTING|TRANSFERRING|SUSPENDED|ERROR|TRANSIENT_ERROR|TRANSFERRED"
    r"|ACKNOWLEDGED|CANCELLED)\s*$"
)
RUNNING_RE = re.compile(r"^\s*(QUEUED|CONNECTING|TRANSFERRING|TRANSIENT_ERROR)\s*$")
FULL_RE = re.compile(r"width:\s*100%")
BROKEN_WIDGET_TEXT = ("Error displaying widget", "Model not found")

pytestmark = [pytest.mark.notebook, pytest.mark.slow, pytest.mark.timeout(240)]


# -- the notebook the browser runs ------------------------------------------------------------

SETUP = f"""\
# Setup: a loopback file server with slow files, and a manager on a store in this folder
import os, pathlib, time
import bitsnb
from bitsnb.testing import Fault, FileServer
try:
    from bitsnb import download
except ImportError:  # the helpers are not exported yet
    from bitsnb.helpers import download

here = pathlib.Path.cwd()
(here / "kernel.pid").write_text(str(os.getpid()))  # the test kills it whatever happens
srv = FileServer(root=here / "served").start()
quick = [srv.add_random_file(f"quick-{{i}}.bin", {QUICK_SIZE}, seed=i) for i in range({QUICK_FILES})]
srv.inject("quick-1.bin", Fault.stall(1.5))  # a transfer you can see
slow_url = srv.add_random_file("slow.bin", {SLOW_SIZE}, seed=7)
# every request for slow.bin gets {SLOW_CHUNK} bytes, a stall, then a dropped connection
srv.inject("slow.bin", Fault.stall_after({SLOW_CHUNK}, {SLOW_STALL}, times=-1))
for folder in ("quick", "slow"):
    (here / folder).mkdir(exist_ok=True)
policy = bitsnb.Policy(files_in_flight=1, min_retry_delay_floor=0.05, poll_interval=0.05)
mgr = bitsnb.Manager(store=here / "jobs.db", policy=policy)"""

CELLS = {
    "setup": SETUP,
    "quick": (
        "# complete=False: BITS's two steps, so the panel's Complete button is tested\n"
        'job = download(quick, here / "quick", name="e2e-quick", manager=mgr, complete=False)'
    ),
    "slow": (
        'big = download(slow_url, here / "slow", name="e2e-slow", manager=mgr, complete=False)\n'
        "big.minimum_retry_delay = 0.05  # retry each dropped connection at once\n"
        "# once it has run and is suspended (the panel's button), the rest of slow.bin comes in\n"
        "# one piece after a short stall: Resume is seen running, and finishes in seconds\n"
        "ran = set()\n"
        "def unstall(event):\n"
        "    if event.job_id == big.id and event.state is bitsnb.JobState.TRANSFERRING:\n"
        "        ran.add(event.job_id)\n"
        "    if event.job_id in ran and event.state is bitsnb.JobState.SUSPENDED:\n"
        "        srv.clear_faults()\n"
        f'        srv.inject("slow.bin", Fault.stall({RESUMED_STALL}))\n'
        "unsubscribe = mgr.subscribe(unstall)"
    ),
    "queue": "mgr.panel()",
    "block": (
        "# the kernel is busy for 10 s; the panels above keep moving\n"
        "# (first, bounded, until the slow job knows its size: a loaded machine starts it late)\n"
        "until = time.monotonic() + 60\n"
        "while big.progress.bytes_total is None and time.monotonic() < until:\n"
        "    time.sleep(0.05)\n"
        'print("block start", flush=True)\n'
        "time.sleep(10)\n"  # a loaded machine's front end can lag the kernel by seconds
        'print("block end", flush=True)'
    ),
}
CELL_INDEX = {name: i for i, name in enumerate(CELLS)}


def write_notebook(path: Path) -> None:
    """The e2e notebook: setup, a quick job, a slow job, the queue panel, a blocking cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS.values()]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


# -- the Jupyter server -----------------------------------------------------------------------


def require(*modules: str) -> None:
    """Skip (with the reason) unless Chromium and every module named are there."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; see .ci/apt-packages)")
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install {name})")


@dataclass
class Jupyter:
    """A running Jupyter server: where it listens, its token and the folder it serves."""

    base_url: str
    token: str
    root: Path

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}?token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        """Call the server's REST API (bounded); the parsed JSON answer, or None."""
        req = urllib.request.Request(self.url(path), method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None


# -- reading the page -------------------------------------------------------------------------


def cell(page: Page, name: str) -> Locator:
    """The notebook's code cell *name* (a key of CELLS), input and output."""
    return page.locator(".jp-Notebook .jp-CodeCell").nth(CELL_INDEX[name])


def output(page: Page, name: str) -> Locator:
    return cell(page, name).locator(".jp-OutputArea-output")


@dataclass
class PanelView:
    """A JobPanel as rendered (ipywidgets 8): its state label, its bar and its buttons."""

    root: Locator

    @property
    def state(self) -> Locator:
        return self.root.locator(".widget-label").filter(has_text=STATE_RE)

    @property
    def bar(self) -> Locator:
        return self.root.locator(".progress-bar")  # FloatProgress: style="width: N%"

    def button(self, label: str) -> Locator:
        return self.root.locator("button", has_text=label)

    def width(self) -> float:
        """The bar's width in percent, as the browser has it."""
        value: float = self.bar.evaluate("el => parseFloat(el.style.width || '0')")
        return value


def panel(page: Page, name: str) -> PanelView:
    return PanelView(output(page, name))


def shot(page: Page, name: str, *parts: Locator) -> Path:
    """Save a PNG of the page region holding *parts* (the whole page without parts)."""
    path = ARTIFACTS / f"{name}.png"
    if not parts:
        page.screenshot(path=str(path), full_page=True)
        return path
    boxes = [b for b in (p.bounding_box() for p in parts) if b is not None]
    assert boxes, f"nothing to photograph for {name}"
    x0 = max(0.0, min(b["x"] for b in boxes) - 4)
    y0 = max(0.0, min(b["y"] for b in boxes) - 4)
    x1 = max(b["x"] + b["width"] for b in boxes) + 4
    y1 = max(b["y"] + b["height"] for b in boxes) + 4
    page.screenshot(
        path=str(path), clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}, full_page=True
    )
    return path


def assert_no_broken_widgets(page: Page) -> None:
    text = page.locator("body").inner_text()
    for phrase in BROKEN_WIDGET_TEXT:
        assert phrase not in text, f"the page shows {phrase!r}"


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *pred* (a filesystem check) until true; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def same_bytes(folder: Path, served: Path, names: list[str]) -> bool:
    """Every file of *names* is in *folder* with the bytes the server has."""
    return all(
        (folder / n).is_file() and (folder / n).read_bytes() == (served / n).read_bytes()
        for n in names
    )


# -- driving a front end ----------------------------------------------------------------------

FRONT_ENDS = {
    # name: (URL of the notebook, module that must be importable)
    "lab": ("/lab/tree/{path}", "jupyterlab"),
    "notebook7": ("/notebooks/{path}", "notebook"),
}

IDLE = ".jp-Notebook-ExecutionIndicator[data-status='idle']"


def wait_for_kernel(jupyter: Jupyter, notebook: str, timeout: float) -> None:
    """Until the server says the notebook's kernel is idle with a browser connected to it (the
    front end shows 'idle' before its kernel even exists, and cells run then are lost)."""
    deadline = time.monotonic() + timeout
    while True:
        for session in jupyter.api("/api/sessions"):
            if session.get("path") == notebook and session.get("kernel"):
                kernel = jupyter.api(f"/api/kernels/{session['kernel']['id']}")
                if kernel.get("connections", 0) >= 1 and kernel.get("execution_state") == "idle":
                    return
        if time.monotonic() > deadline:
            pytest.fail(f"no idle, connected kernel for {notebook} after {timeout} s")
        time.sleep(0.1)


def shut_down_kernel(jupyter: Jupyter, notebook: str) -> None:
    """Best effort: end the notebook's session (its kernel, manager and file server)."""
    with contextlib.suppress(Exception):
        for session in jupyter.api("/api/sessions"):
            if session.get("path") == notebook:
                jupyter.api(f"/api/sessions/{session['id']}", method="DELETE")


def open_and_run_all(page: Page, jupyter: Jupyter, url: str, notebook: str) -> None:
    """Open the notebook, wait for its kernel to be idle, then Run → Run All Cells."""
    from playwright.sync_api import expect

    page.goto(url, wait_until="domcontentloaded")
    wait_for_kernel(jupyter, notebook, KERNEL_TIMEOUT / 1000)
    page.locator(IDLE).first.wait_for(timeout=KERNEL_TIMEOUT)
    expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(len(CELLS))
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    # Every cell is queued ([*]) or done ([n]) at once; a blank prompt means Run All was lost.
    expect(cell(page, "setup").locator(".jp-InputPrompt")).not_to_have_text(re.compile(r"\[\s*\]"))


# Poll the slow job's bar while the blocking cell runs: first a width below 100 % (the total
# is known, the bar is real), then a larger one; either answer says whether the block ended.
_FIRST_WIDTH = """([bar, out]) => {
    const w = parseFloat(bar.style.width || '0');
    const ended = out.textContent.includes('block end');
    return (w < 100 || ended) ? {w: w, ended: ended} : false;
}"""
_WIDER = """([bar, out, w0]) => {
    const w = parseFloat(bar.style.width || '0');
    const ended = out.textContent.includes('block end');
    return (w > w0 || ended) ? {w: w, ended: ended} : false;
}"""


def bar_moves_while_blocked(page: Page, slow: PanelView, block_out: Locator) -> tuple[float, float]:
    """(first, later) bar widths of the slow job, both read while the blocking cell sleeps."""
    from playwright.sync_api import expect

    expect(block_out).to_contain_text("block start", timeout=KERNEL_TIMEOUT)
    bar, out = slow.bar.element_handle(), block_out.element_handle()
    first: Any = page.wait_for_function(
        _FIRST_WIDTH, arg=[bar, out], polling=50, timeout=BLOCK_TIMEOUT
    ).json_value()
    assert not first["ended"], "the slow job's size was still unknown when the block ended"
    later: Any = page.wait_for_function(
        _WIDER, arg=[bar, out, first["w"]], polling=50, timeout=BLOCK_TIMEOUT
    ).json_value()
    assert not later["ended"], f"the bar stayed at {first['w']}% until the block ended"
    return float(first["w"]), float(later["w"])


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_panels_in_the_browser(front_end: str, jupyter: Jupyter, browser: BrowserContext) -> None:
    """Run All shows live job and queue panels; the bar moves while a cell blocks; Suspend,
    Resume and Complete work from the buttons; the completed files are on disk."""
    from playwright.sync_api import expect

    url_template, module = FRONT_ENDS[front_end]
    require(module)
    for old in ARTIFACTS.glob(f"{front_end}-*"):
        old.unlink()
    folder = jupyter.root / front_end
    notebook = f"{front_end}/{NOTEBOOK}"
    write_notebook(jupyter.root / notebook)
    page = browser.new_page()
    page.set_default_timeout(UI_TIMEOUT)
    expect.set_options(timeout=UI_TIMEOUT)
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    try:
        open_and_run_all(page, jupyter, jupyter.url(url_template.format(path=notebook)), notebook)
        _check_panels(page, front_end, folder)
    except BaseException:
        with contextlib.suppress(Exception):
            shot(page, f"{front_end}-failure")
        raise
    finally:
        (ARTIFACTS / f"{front_end}-console.log").write_text("\n".join(console), "utf-8")
        page.close()
        shut_down_kernel(jupyter, notebook)


def _check_panels(page: Page, fe: str, folder: Path) -> None:
    from playwright.sync_api import expect

    quick, slow = panel(page, "quick"), panel(page, "slow")
    queue = output(page, "queue")
    block_out = cell(page, "block").locator(".jp-OutputArea").first
    served = folder / "served"

    # 1. While the last cell sleeps, the slow job's bar moves (the panels update from a thread).
    first, later = bar_moves_while_blocked(page, slow, block_out)
    assert 0 <= first < later <= 100
    shot(page, f"{fe}-running", cell(page, "quick"), cell(page, "slow"), cell(page, "queue"))

    # 2. The queue panel lists both jobs.
    table = queue.locator("table.bitsnb-q")
    expect(table).to_contain_text("e2e-quick")
    expect(table).to_contain_text("e2e-slow")

    # 3. The quick job reaches 100 % and TRANSFERRED; Complete -> ACKNOWLEDGED, files in place.
    expect(quick.state).to_have_text(re.compile("TRANSFERRED"))
    expect(quick.bar).to_have_attribute("style", FULL_RE)
    shot(page, f"{fe}-quick-transferred", output(page, "quick"))
    quick_names = [f"quick-{i}.bin" for i in range(QUICK_FILES)]
    assert not (folder / "quick" / quick_names[0]).exists()  # only complete() renames
    quick.button("Complete").click()
    expect(quick.state).to_have_text(re.compile("ACKNOWLEDGED"))
    wait_until(lambda: same_bytes(folder / "quick", served, quick_names), 10, "the quick files")

    # 4. The slow job: Suspend while it transfers, Resume, it finishes; Complete.
    expect(block_out).to_contain_text("block end")
    expect(slow.state).to_have_text(RUNNING_RE)
    slow.button("Suspend").click()
    expect(slow.state).to_have_text(re.compile("SUSPENDED"))
    assert slow.width() < 100, "the slow job finished before it could be suspended"
    expect(slow.button("Suspend")).to_be_disabled()
    expect(slow.button("Resume")).to_be_enabled()
    shot(page, f"{fe}-suspended", output(page, "slow"), queue)
    slow.button("Resume").click()
    expect(slow.state).to_have_text(RUNNING_RE)
    expect(slow.state).to_have_text(re.compile("TRANSFERRED"), timeout=SLOW_TIMEOUT)
    expect(slow.bar).to_have_attribute("style", FULL_RE)
    slow.button("Complete").click()
    expect(slow.state).to_have_text(re.compile("ACKNOWLEDGED"))
    wait_until(lambda: same_bytes(folder / "slow", served, ["slow.bin"]), 10, "the slow file")
    for button in ("Suspend", "Resume", "Cancel", "Complete"):
        expect(slow.button(button)).to_be_disabled()  # a finished panel offers nothing

    assert_no_broken_widgets(page)
    shot(page, f"{fe}-done", cell(page, "quick"), cell(page, "slow"), cell(page, "queue"))
    shot(page, f"{fe}-page")
