"""JupyterLab in a real browser: notebook 00 runs from "Run All Cells", module 02's rank slider redraws when
moved, and nbgrader's Validate button names a failing visible test of a blank exercise.

Headless Chromium from Debian (`apt-get install chromium chromium-driver`, which the test runs itself when it is
missing and we are root, as on CI's clean machine; COURSE_NO_APT=1 turns that off), driven by Playwright pointed at
/usr/bin/chromium (no browser download). Screenshots land in a pytest temporary folder, and are also copied to
$COURSE_ARTIFACTS when it is set (for CI to upload). Skips only where Chromium cannot be installed or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.helpers import REPO, slow_extra

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="Playwright is not installed: pip install 'course-lib[dev]'"),
    pytest.mark.xdist_group("browser"),  # one JupyterLab server and one browser, on one worker
]

APT_PACKAGES = ("chromium", "chromium-driver")
# Running a whole notebook in the browser (00's Run All, 02's slider) costs about 200 s of one CI worker and re-runs
# what the papermill smoke runs execute; the default run keeps the Validate test, these two run with
# COURSE_SLOW_TESTS=1 (see the README).
WHOLE_NOTEBOOK = slow_extra("runs a whole notebook in the browser")


def _find_chromium() -> str | None:
    candidates = (os.environ.get("COURSE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser"))
    return next((p for p in candidates if p and Path(p).exists()), None)


def _install_chromium() -> str:
    """Install Debian's Chromium with apt-get where we are root (CI's clean machine); say why not otherwise."""
    if os.environ.get("COURSE_NO_APT"):
        return "COURSE_NO_APT is set"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root, or no apt-get"
    import fcntl

    # Both pytest-xdist workers may get here; dpkg allows one install at a time.
    with open(Path(tempfile.gettempdir()) / "course-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _find_chromium():
            return ""
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
    return ""


@pytest.fixture(scope="module")
def chromium() -> str:
    """The path of Chromium, installed from Debian's packages first if it is missing and we may."""
    found = _find_chromium()
    if found is None:
        why = _install_chromium()
        found = _find_chromium()
        if found is None:
            pytest.skip(f"Chromium is not installed and could not be installed ({why or 'no binary after install'}): "
                        f"apt-get install {' '.join(APT_PACKAGES)}, or set COURSE_CHROMIUM to its path")
    return found


TOKEN = "course-browser-test"
RUN_TIMEOUT = 240  # seconds for "Run All Cells" of one notebook in the smoke profile
LAB_02 = REPO / "solutions" / "02_lora_math.ipynb"
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on screen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_parameters(source: Path, target: Path, profile: str) -> None:
    """Copy a notebook, setting PROFILE in its parameters cell (as papermill would)."""
    nb = nbformat.read(source, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "PROFILE = None" in cell.source, f"{source.name}: parameters cell without 'PROFILE = None'"
    cell.source = cell.source.replace("PROFILE = None", f'PROFILE = "{profile}"')
    nbformat.write(nb, target)


class Lab:
    """A JupyterLab server on a free localhost port, serving a temporary folder."""

    def __init__(self, root: Path, home: Path):
        self.root, self.port = root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = home / "settings" / "@jupyterlab" / "notebook-extension"
        settings.mkdir(parents=True)
        # Every cell stays in the page (no virtual scrolling), so prompts and widgets can be found.
        (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        labconfig = home / "config" / "labconfig"
        labconfig.mkdir(parents=True)
        # No "would you like news?" toast over the notebook.
        (labconfig / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        env = dict(os.environ, COURSE_PROFILE="smoke", JUPYTER_CONFIG_DIR=str(home / "config"),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self.log = open(home / "jupyterlab.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
             f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
             f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
             "--KernelManager.shutdown_wait_time=1", *(["--allow-root"] if os.geteuid() == 0 else [])],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=root)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.api("status")
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not start: {(home / 'jupyterlab.log').read_text()[-2000:]}")

    def api(self, path: str):
        request = urllib.request.Request(f"{self.url}/api/{path}", headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def kernel_state(self, notebook: str) -> str | None:
        for session in self.api("sessions"):
            if session["path"] == notebook and session.get("kernel"):
                return session["kernel"]["execution_state"]
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where screenshots go; copied to $COURSE_ARTIFACTS at the end when it is set."""
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    if os.environ.get("COURSE_ARTIFACTS"):
        target = Path(os.environ["COURSE_ARTIFACTS"]) / "browser"
        target.mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy2(png, target / png.name)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    shutil.copy2(REPO / "solutions" / "00_quick_start.ipynb", root / "00_quick_start.ipynb")
    # The released (blank) student notebook, graded as the grader would: in the grade profile.
    _with_parameters(REPO / "notebooks" / "00_quick_start.ipynb", root / "00_blank_student.ipynb", "grade")
    if LAB_02.exists():
        shutil.copy2(LAB_02, root / LAB_02.name)
    server = Lab(root, tmp_path_factory.mktemp("lab-home"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(chromium):
    # No background networking: this machine's closed network refuses Chromium's update and sync connections.
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=args)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


def _open(page, lab: Lab, notebook: str) -> None:
    # ?reset: a fresh workspace, so notebooks an earlier test opened are not in the page too.
    page.goto(f"{lab.url}/lab/tree/{notebook}?reset&token={TOKEN}")
    page.locator(f"{PANEL} .jp-Cell").first.wait_for(timeout=60_000)
    deadline = time.monotonic() + 60
    while lab.kernel_state(notebook) != "idle":
        assert time.monotonic() < deadline, f"the kernel of {notebook} did not start"
        time.sleep(0.5)


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


def _prompts(page) -> list[str]:
    return page.eval_on_selector_all(f"{PANEL} .jp-CodeCell .jp-InputPrompt",
                                     "els => els.map(e => e.textContent.trim())")


def _run_all(page, lab: Lab, notebook: str) -> float:
    """Run All Cells and wait until every code cell has run; returns the seconds it took."""
    started = time.monotonic()
    _menu(page, "Run", "Run All Cells")
    idle_since = None
    while True:
        prompts = _prompts(page)
        done = prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
        if done and lab.kernel_state(notebook) == "idle":
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 1.0:
                return time.monotonic() - started
        else:
            idle_since = None
        assert time.monotonic() - started < RUN_TIMEOUT, f"{notebook} still running after {RUN_TIMEOUT} s: {prompts}"
        time.sleep(0.5)


def _save(page, lab: Lab, notebook: str) -> nbformat.NotebookNode:
    """Save from the browser and read back what JupyterLab wrote, outputs included."""
    path = Path(lab.api(f"contents/{notebook}?content=0")["path"])
    before = lab.api(f"contents/{notebook}?content=0")["last_modified"]
    page.locator(f"{PANEL} .jp-Notebook").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while lab.api(f"contents/{notebook}?content=0")["last_modified"] == before:
        assert time.monotonic() < deadline, f"{notebook} was not saved"
        time.sleep(0.3)
    return nbformat.reads(json.dumps(lab.api(f"contents/{path}?type=notebook")["content"]), as_version=4)


def _errors(nb) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" for o in cell.get("outputs", []) if o.get("output_type") == "error"]


@WHOLE_NOTEBOOK
def test_notebook_00_runs_all_cells_without_an_error(page, lab, shots):
    _open(page, lab, "00_quick_start.ipynb")
    page.screenshot(path=shots / "00_opened.png")
    seconds = _run_all(page, lab, "00_quick_start.ipynb")
    saved = _save(page, lab, "00_quick_start.ipynb")
    page.locator(f"{PANEL} .jp-Cell").last.scroll_into_view_if_needed()
    page.screenshot(path=shots / "00_after_run_all.png")
    assert _errors(saved) == []
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a code cell did not run"
    assert any(o.get("data", {}).get("image/png") for c in code for o in c.outputs), "no plot was drawn"
    # The same in the page: no output shows a traceback.
    assert page.locator(f"{PANEL} .jp-OutputArea-output:has-text('Traceback')").count() == 0
    print(f"Run All Cells of notebook 00 (smoke) took {seconds:.0f} s in the browser")


def test_validate_reports_a_failing_visible_test_of_a_blank_exercise(page, lab, shots):
    _open(page, lab, "00_blank_student.ipynb")
    page.get_by_role("button", name="Validate").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=180_000)
    dialog.get_by_text(re.compile("failed", re.I)).first.wait_for(timeout=180_000)
    page.screenshot(path=shots / "00_validate_blank.png")
    text = dialog.inner_text()
    assert "The following cell failed" in text or "VALIDATION FAILED" in text, text
    assert "Visible tests" in text and "NotImplementedError" in text, text
    assert "build_messages" in text, text  # it names the failing visible test
    assert "HIDDEN" not in text and "José" not in text, "hidden tests must not show"


def _static_slider(notebook: Path) -> bool:
    text = notebook.read_text(encoding="utf-8") if notebook.exists() else ""
    return "IntSlider" in text or ".slider(" in text


@pytest.mark.skipif(not _static_slider(LAB_02),
                    reason="solutions/02_lora_math.ipynb does not exist yet or shows no ipywidgets IntSlider")
@WHOLE_NOTEBOOK
def test_notebook_02_rank_slider_renders_and_redraws(page, lab, shots):
    _open(page, lab, LAB_02.name)
    _run_all(page, lab, LAB_02.name)
    saved = _save(page, lab, LAB_02.name)
    assert _errors(saved) == []
    widget = page.locator(f"{PANEL} .widget-hslider, {PANEL} .jupyter-widget-hslider").first
    widget.wait_for(timeout=30_000)
    widget.scroll_into_view_if_needed()
    box = widget.locator(
        "xpath=ancestor::div[contains(@class,'widget-vbox') or contains(@class,'jupyter-widget-vbox')][1]")
    readout = widget.locator(".widget-readout, .jupyter-widget-readout")
    page.screenshot(path=shots / "02_slider_before.png")
    images = []
    for direction in (1, 1):  # two moves to the right: two new values, two new plots
        value = readout.inner_text().strip()
        handle = widget.locator(".noUi-handle").first
        start = handle.bounding_box()
        track = widget.locator(".noUi-target").first.bounding_box()
        target_x = start["x"] + start["width"] / 2 + direction * track["width"] / 4
        page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
        page.mouse.down()
        page.mouse.move(target_x, start["y"] + start["height"] / 2, steps=8)
        page.mouse.up()
        page.wait_for_function("([el, old]) => el.textContent.trim() !== old",
                               arg=[readout.element_handle(), value], timeout=10_000)
        # continuous_update=False: the plot redraws once, on release, into the widget's own output area.
        img = box.locator(".widget-output img, .jupyter-widget-output img, .jp-OutputArea-output img").first
        img.wait_for(timeout=60_000)
        deadline = time.monotonic() + 60
        while img.get_attribute("src") in images:
            assert time.monotonic() < deadline, "the plot did not redraw after the slider moved"
            time.sleep(0.3)
        images.append(img.get_attribute("src"))
        page.screenshot(path=shots / f"02_slider_moved_{len(images)}.png")
    assert len(set(images)) == 2
