import pytest

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
