from pathlib import Path

import pytest

# Real-browser tests use Debian's chromium, never a browser downloaded by Playwright.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# The browser test's fixture notebook is driven in JupyterLab by tests/test_browser_lab.py;
# it is not a chapter, so nbval does not collect it.
collect_ignore = ["fixtures"]


@pytest.fixture(scope="session")
def playwright_session():
    """One Playwright driver for the whole run: its sync API cannot be started twice at once,
    so the book checks and the JupyterLab test launch their browsers from this one."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_session):
    """One headless chromium for every real-browser test; skipped where it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (install it: `bash scripts/setup.sh --with-browser`)")
    chromium = playwright_session.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()
