"""GateInspector in a real JupyterLab, driven by headless Chromium through Playwright.

Starts JupyterLab on 127.0.0.1 (free port, token), opens tests/fixtures/lab_inspector.ipynb
(copied to a temporary folder without its outputs, so Lab's autosave never touches the
committed fixture and the outputs checked are the browser's own), runs
it, picks another task in the inspector's dropdown and checks that the picture changed and
that the kernel-side state followed. Screenshots go to artifacts/ (gitignored).
"""
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import CHROMIUM

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
ARTIFACTS = ROOT / "artifacts"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) "
                "to run the real-browser tests", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)   # polling a socket that is not up yet, not waiting on the page
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on loopback serving a copy of the fixture notebook."""
    home = tmp_path_factory.mktemp("lab")
    shutil.copy(FIXTURES / "gate_data.py", home / "gate_data.py")
    notebook = nbformat.read(FIXTURES / "lab_inspector.ipynb", as_version=4)
    for cell in notebook.cells:     # the committed outputs must not pass for fresh ones
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, home / "lab_inspector.ipynb")
    # Lab settings: no news / update toasts, and start the notebook's kernel without asking.
    for extension, plugin, values in [
            ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False}),
            ("notebook-extension", "tracker", {"autoStartDefaultKernel": True})]:
        folder = home / ".settings" / "@jupyterlab" / extension
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(home / ".runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / ".settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / ".workspaces"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               "--ServerApp.open_browser=False", f"--ServerApp.root_dir={home}",
               "--LabApp.news_url=None"]
    log = open(home / "lab.log", "wb")
    process = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/status?token={token}", process)
        yield dict(base=base, token=token, home=home)
    finally:
        process.send_signal(signal.SIGTERM)   # the server shuts its kernels down on SIGTERM
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        if ARTIFACTS.is_dir():
            shutil.copy(home / "lab.log", ARTIFACTS / "lab_server.log")


@pytest.fixture(scope="module")
def page(lab, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(45_000)
    try:
        yield page
    finally:
        page.close()


def _image_bytes(page) -> bytes:
    """The bytes behind the inspector's <img> (a blob: URL made from the widget's PNG)."""
    data = page.evaluate("""async () => {
        const img = document.querySelector('img.widget-image');
        const buffer = await (await fetch(img.src)).arrayBuffer();
        return Array.from(new Uint8Array(buffer));
    }""")
    return bytes(data)


def _screenshots(page, when: str) -> None:
    """The Lab window with the inspector scrolled into view, and the inspector alone."""
    inspector = page.locator(".jp-OutputArea-output").filter(has=page.locator("img.widget-image"))
    inspector.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"lab_inspector_{when}.png"))
    inspector.screenshot(path=str(ARTIFACTS / f"lab_inspector_{when}_widget_view.png"))


def _wait_idle(page) -> None:
    """Wait until the notebook's kernel is connected and idle (accepting a kernel dialog)."""
    dialog = page.locator(".jp-Dialog .jp-mod-accept")
    if dialog.count():
        dialog.first.click()
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()
    page.wait_for_selector(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator"
                           "[data-status='idle']", state="attached")


def test_inspector_follows_the_task_dropdown_in_jupyterlab(lab, page):
    try:
        _drive_inspector(lab, page)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "lab_inspector_failure.png"), full_page=True)
        raise


def _drive_inspector(lab, page):
    for stale in ARTIFACTS.glob("lab_inspector_*.png"):
        stale.unlink()
    page.goto(f"{lab['base']}/lab/tree/lab_inspector.ipynb?token={lab['token']}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
    _wait_idle(page)                                   # the kernel is up

    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
    summary = page.locator(".jp-OutputArea-output:has-text('task=')")
    summary.wait_for(timeout=90_000)                   # the last cell ran (imports torch, trains)
    _wait_idle(page)
    assert "task=all tasks" in summary.inner_text()
    image = page.locator("img.widget-image")
    image.wait_for()
    page.wait_for_function("() => document.querySelector('img.widget-image').naturalWidth > 0")
    before_src, before = image.get_attribute("src"), _image_bytes(page)
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    (ARTIFACTS / "lab_inspector_png_before.png").write_bytes(before)
    _screenshots(page, "before")

    task = page.locator(".widget-dropdown").filter(has=page.locator("label", has_text="task"))
    task.locator("select").select_option("sub")
    page.wait_for_function("(old) => document.querySelector('img.widget-image').src !== old",
                           arg=before_src)
    page.wait_for_function("() => document.querySelector('img.widget-image').complete")
    after = _image_bytes(page)
    (ARTIFACTS / "lab_inspector_png_after.png").write_bytes(after)
    _screenshots(page, "after")
    assert after[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(after).digest() != hashlib.sha256(before).digest()

    # The kernel-side state followed the browser: re-run the summary cell.
    _wait_idle(page)
    page.locator(".jp-Cell").last.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    page.locator(".jp-OutputArea-output:has-text('task=sub')").wait_for()
    assert "rows=1" in page.locator(".jp-OutputArea-output:has-text('task=sub')").inner_text()
