"""The book: it builds with warnings as errors, has a page for every notebook, references
nothing outside itself, and renders offline in a real browser (math, figures, widgets).

The build runs once per session (scripts/build_book.sh into a temporary folder, so every
page is read afresh and every warning is reported). The browser tests use Debian's
chromium through Playwright with every request that leaves the book blocked; screenshots
go to artifacts/book/.
"""
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GATE_LAB = ROOT / "notebooks" / "08_gate_lab.ipynb"
ARTIFACTS = ROOT / "artifacts" / "book"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
REMOTE_ASSET = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""")


@pytest.fixture(scope="session")
def book_html(tmp_path_factory):
    """Build the book once into a fresh folder and return its html/ directory."""
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    build = subprocess.run(["bash", str(ROOT / "scripts" / "build_book.sh"), str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, (
        f"the book build failed (warnings are errors):\n{build.stdout[-6000:]}\n{build.stderr[-6000:]}")
    return out / "_build" / "html"


def notebook_page(html, notebook):
    return html / "notebooks" / f"{notebook.stem}.html"


def image_outputs(notebook):
    """Number of figures a notebook shows outside widgets (each becomes an <img>)."""
    nb = nbformat.read(notebook, as_version=4)
    return sum("image/png" in out.get("data", {}) and WIDGET_VIEW not in out.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def test_every_notebook_has_a_page(book_html):
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"
    for notebook in NOTEBOOKS:
        page = notebook_page(book_html, notebook)
        assert page.is_file(), f"{notebook.name} has no page in the book ({page} missing)"
        title = nbformat.read(notebook, as_version=4).cells[0].source.splitlines()[0].lstrip("# ")
        # Sphinx turns straight quotes into typographic ones ("study's" -> "study’s")
        shown = html.unescape(page.read_text()).replace("\u2019", "'").replace("\u2018", "'")
        assert title in shown, f"{page.name} does not show the notebook's title {title!r}"


def test_code_lines_fit_the_book_column():
    """The column test below in a second, without a browser: a code line longer than 88
    characters scrolls sideways in the book (the 752 px column at 11.5 px a character)."""
    long = [f"{notebook.name} cell {i}: {len(line)} characters: {line[:50]}..."
            for notebook in NOTEBOOKS
            for i, cell in enumerate(nbformat.read(notebook, as_version=4).cells)
            if cell.cell_type == "code" for line in cell.source.splitlines() if len(line) > 88]
    assert not long, "code lines over 88 characters (wrap them):\n" + "\n".join(long)


def test_committed_notebooks_are_ready_for_the_book():
    """The book shows committed outputs: every notebook must be executed, titled, and carry
    the state of the widgets it displays (scripts/run_notebooks.py does all three)."""
    for notebook in NOTEBOOKS:
        nb = nbformat.read(notebook, as_version=4)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), (
            f"{notebook.name}: the first cell must be a markdown '# Title' (the book's page title)")
        code = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.strip()]
        unrun = [i for i, cell in enumerate(code) if cell.execution_count is None]
        assert not unrun, (f"{notebook.name}: code cells {unrun} were not executed; "
                           f"run `python scripts/run_notebooks.py notebooks/{notebook.name}`")
        shows_widgets = any(WIDGET_VIEW in out.get("data", {}) for cell in code for out in cell.outputs)
        state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        assert state.get("state") or not shows_widgets, (
            f"{notebook.name} displays widgets but has no saved widget state; "
            f"run it with `python scripts/run_notebooks.py notebooks/{notebook.name}`")


def test_pages_load_nothing_from_outside_the_book(book_html):
    """Scripts, styles and images all come from the book itself (links to papers are fine)."""
    for page in book_html.rglob("*.html"):
        remote = REMOTE_ASSET.findall(page.read_text())
        assert not remote, f"{page.relative_to(book_html)} loads remote assets: {remote}"


def test_bibliography_lists_every_reference(book_html):
    bib = (ROOT / "book" / "references.bib").read_text()
    titles = [re.sub(r"[{}\\]", "", t) for t in re.findall(r"\btitle\s*=\s*\{(.*)\},?\s*$", bib, re.M)]
    assert len(titles) == bib.count("\n@") + bib.startswith("@")
    page = re.sub(r"<[^>]+>|\s+", " ", (book_html / "bibliography.html").read_text()).lower()
    for title in titles:  # the bibliography style changes the titles' case only
        assert " ".join(title.split()).lower() in page, f"bibliography.html does not list {title!r}"


def test_api_reference_documents_the_library(book_html):
    page = (book_html / "api.html").read_text()
    listed = re.findall(r"^   ([a-z_.]+)$", (ROOT / "book" / "api.rst").read_text(), re.M)
    assert {"adapters.config", "adapters.layer", "adapters.injection"} <= set(listed)
    for module in listed:   # every module book/api.rst lists gets its section
        assert f'id="module-cgc_edu.{module}"' in page, f"api.html has no section for cgc_edu.{module}"
    assert 'id="cgc_edu.adapters.injection.add_adapters"' in page


def test_docstrings_are_read_as_plain_text():
    """The API page's docstring reader keeps formulas as typed and sections for napoleon."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        from cgc_book import plain_text_docstring
    finally:
        sys.path.pop(0)
    lines = ["A layer of rank |S_t|*r_e:", "", "    y = W0 x + B A x", "      (aligned)", "",
             "Args:", "    x: the input.", "", "- a list item", "", "  its second paragraph"]
    plain_text_docstring(None, "function", "f", None, {}, lines)
    assert lines == ["A layer of rank \\|S_t\\|*r_e:", "", ".. code-block:: text", "",
                     "    y = W0 x + B A x", "      (aligned)", "",
                     "Args:", "    x: the input.", "", "- a list item", "", "  its second paragraph"]


# ---------------------------------------------------------------- real browser, offline
try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the browser fixture skips before any page is opened
    PlaywrightTimeout = TimeoutError


class OfflinePage:
    """A page opened from disk with every request outside the book blocked and recorded."""

    def __init__(self, browser, html, relpath):
        self.html_url = html.resolve().as_uri() + "/"
        self.blocked, self.failed, self.errors = [], [], []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.route("**/*", self._route)
        self.page.on("requestfailed", lambda request: self.failed.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(self.html_url + relpath, wait_until="load")

    def _route(self, route):
        if route.request.url.startswith((self.html_url, "data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def wait_for_math(self):
        """Wait until MathJax has typeset the page; return the number of formulas."""
        if self.page.locator(".math").count() == 0:
            return 0
        try:
            self.page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                        timeout=20_000)
        except PlaywrightTimeout:
            pytest.fail(f"MathJax did not start on {self.page.url} "
                        f"(requests blocked: {self.blocked}, failed: {self.failed}, errors: {self.errors})")
        self.page.evaluate("() => MathJax.startup.promise")
        return self.page.locator("mjx-container").count()

    def wait_for_widgets(self):
        """Wait until every saved widget view is rendered; return the controls per view."""
        script = f"""() => [...document.querySelectorAll('script[type="{WIDGET_VIEW}"]')]
            .map(view => view.parentElement.querySelectorAll('.jupyter-widgets').length)"""
        if not self.page.evaluate(script):
            return []
        try:
            self.page.wait_for_function(f"() => ({script})().every(n => n > 0)", timeout=30_000)
        except PlaywrightTimeout:
            pass  # the caller reports which views stayed empty
        self.page.wait_for_timeout(300)  # let the views' images decode
        return self.page.evaluate(script)

    def raw_tex(self):
        """Formulas MathJax left untouched, and TeX delimiters left in prose."""
        return self.page.evaluate(r"""() => {
            const left = [...document.querySelectorAll('.math')]
                .filter(el => !el.querySelector('mjx-container')).map(el => el.textContent);
            const prose = [...document.querySelectorAll('article p, article li, article td')]
                .filter(el => !el.closest('pre, code, .highlight, .cell_output'))
                .map(el => {  // the text outside code spans and typeset formulas
                    const copy = el.cloneNode(true);
                    copy.querySelectorAll('code, pre, mjx-container').forEach(c => c.remove());
                    return copy.textContent;
                })
                .filter(text => /\$[^$\s][^$]*\$|\\\(|\\\[|\\(frac|sum|alpha|mathbf)\b/.test(text));
            return left.concat(prose);
        }""")

    def broken_images(self):
        return self.page.evaluate("""async () => {
            const bad = [];
            for (const img of document.images) {
                img.loading = 'eager';
                try { await img.decode(); } catch (e) {}
                if (!img.complete || img.naturalWidth === 0) bad.push(img.currentSrc || img.src);
            }
            return bad;
        }""")

    def screenshot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # whole pages, except very long ones (the API reference), which cost seconds each
        full = self.page.evaluate("document.documentElement.scrollHeight") <= 12_000
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)

    def assert_offline(self):
        assert not self.blocked, f"the page tried to leave the book: {self.blocked}"
        assert not self.failed, f"requests failed (missing files in the book?): {self.failed}"
        assert not self.errors, f"JavaScript errors: {self.errors}"


def content_pages():
    return ["intro.html", "learners.html", "instructors.html", "glossary.html", "api.html",
            "notebooks/README.html", "bibliography.html"] + [f"notebooks/{nb.stem}.html" for nb in NOTEBOOKS]


@pytest.mark.browser
def test_pages_render_offline(book_html, browser):
    """Every page renders with the network blocked: math typeset, no raw TeX, images loaded,
    widgets drawn from their saved state, and each notebook's figures on its page."""
    formulas = {}
    for relpath in content_pages():
        page = OfflinePage(browser, book_html, relpath)
        try:
            formulas[relpath] = page.wait_for_math()
            views = page.wait_for_widgets()
            assert all(views), f"{relpath}: widget views left unrendered (controls per view: {views})"
            page.screenshot(relpath.replace("/", "_").removesuffix(".html"))
            assert not page.raw_tex(), f"{relpath}: TeX left unrendered: {page.raw_tex()[:5]}"
            assert not page.broken_images(), f"{relpath}: images that did not load: {page.broken_images()}"
            page.assert_offline()
            notebook = ROOT / relpath.replace(".html", ".ipynb")
            if notebook.is_file():
                shown = page.page.locator(".cell_output img").count()
                assert shown >= image_outputs(notebook), (
                    f"{notebook.name} has {image_outputs(notebook)} figures, its page shows {shown}")
        finally:
            page.page.close()
    assert formulas["intro.html"] > 0, "the intro's formulas were not typeset by MathJax"


#: What overflows the book's column on a notebook page: code that scrolls sideways, and
#: output figures whose own width is more than the column (the browser shrinks them).
COLUMN_OVERFLOW = """() => {
    const column = document.querySelector('article.bd-article') || document.querySelector('main');
    const width = column.clientWidth;
    // A collapsed cell (a hidden solution) has no width at all: it cannot scroll.
    const code = [...document.querySelectorAll('.cell_input div.highlight pre')]
        .filter(pre => pre.clientWidth > 0 && pre.scrollWidth > pre.clientWidth + 1)
        .map(pre => pre.textContent.split('\\n').reduce((a, b) => (b.length > a.length ? b : a)));
    // A 7.5 in figure saved with matplotlib's tight bounding box comes out a few pixels wider
    // than 750 px; the theme scales an image to the column, which up to 3 % is invisible.
    const images = [...document.querySelectorAll('.cell_output img')]
        .filter(img => img.naturalWidth > 1.03 * width)
        .map(img => `${img.naturalWidth} px`);
    return {width, code, images};
}"""


@pytest.mark.browser
def test_notebook_pages_fit_the_column(book_html, browser):
    """At a 1280 x 900 window no code cell scrolls sideways and no figure is wider than the
    content column: code lines stay within the column (88 characters at the 11.5 px of
    book/_static/code.css) and figures within about 7.5 inches at 100 dpi."""
    overflowing = {}
    for notebook in NOTEBOOKS:
        page = OfflinePage(browser, book_html, f"notebooks/{notebook.stem}.html")
        try:
            page.page.evaluate("""async () => { for (const img of document.images) {
                img.loading = 'eager'; try { await img.decode(); } catch (e) {} } }""")
            found = page.page.evaluate(COLUMN_OVERFLOW)
        finally:
            page.page.close()
        if found["code"] or found["images"]:
            overflowing[notebook.name] = (
                f"column {found['width']} px; {len(found['code'])} code cells scroll (longest "
                f"lines: {[line[:60] for line in found['code'][:3]]}); figures wider than the "
                f"column: {found['images']}")
    assert not overflowing, "pages wider than the book's column:\n" + "\n".join(
        f"  {name}: {why}" for name, why in overflowing.items())


@pytest.mark.browser
@pytest.mark.skipif(not GATE_LAB.exists(), reason="notebooks/08_gate_lab.ipynb is not written yet")
def test_gate_lab_widget_renders_from_saved_state(book_html, browser):
    page = OfflinePage(browser, book_html, f"notebooks/{GATE_LAB.stem}.html")
    try:
        views = page.wait_for_widgets()
        page.screenshot("gate_lab_widget")
        assert views, ("the gate lab page has no widget views: run "
                       "`python scripts/run_notebooks.py notebooks/08_gate_lab.ipynb`")
        assert all(views), f"widget views left unrendered (controls per view: {views})"
        assert not page.broken_images(), f"widget images that did not load: {page.broken_images()}"
        page.assert_offline()
    finally:
        page.page.close()
