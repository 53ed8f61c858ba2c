"""Sphinx glue for the cgc_edu book: an API directive that documents the modules that
exist, and keeping the vendored JavaScript off pages that do not need it."""
import importlib.util
import pkgutil
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)
VENDOR = "vendor/"


class CgcApi(SphinxDirective):
    """``.. cgc-api::`` with module names (relative to ``cgc_edu``), one per line.

    Every public module of the package gets a section with its autodoc: first those named,
    in that order, then any others alphabetically. A named module that is not written yet
    is left out (and logged), so the page builds without warnings at every stage of the
    project; a module that exists but fails to import still warns.
    """

    has_content = True

    def run(self):
        package = importlib.util.find_spec("cgc_edu")
        # every module of the package and its sub-packages, named relative to cgc_edu
        found = sorted(m.name.removeprefix("cgc_edu.") for m in pkgutil.walk_packages(
            package.submodule_search_locations, prefix="cgc_edu.")
            if not m.ispkg and not m.name.rsplit(".", 1)[-1].startswith("_"))
        named = [line.strip() for line in self.content if line.strip()]
        for name in named:
            if name not in found:
                logger.info(f"cgc-api: cgc_edu.{name} does not exist yet; left out")
        lines = []
        for name in [n for n in named if n in found] + [n for n in found if n not in named]:
            module = f"cgc_edu.{name}"
            lines += [module, "-" * len(module), "", f".. automodule:: {module}", ""]
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="cgc-api"), node)
        return node.children


# Napoleon's section headers and list items: their indented lines are not formulas.
SECTION = re.compile(r"(Args|Arguments|Parameters|Returns?|Yields?|Raises|Attributes|Examples?|"
                     r"Notes?|Warnings?|Warns|See Also|References|Todo|Keyword Args|"
                     r"Other Parameters|Methods)\s*:\s*$")
LIST_ITEM = re.compile(r"([-*+]|\d+[.)])\s")


def plain_text_docstring(app, what, name, obj, options, lines):
    """Read the library's docstrings as the plain text they are written in.

    They lay out formulas and diagrams as indented blocks after a paragraph, and write set
    sizes as |S_t|; in reStructuredText those would be block quotes (reflowed, often with
    indentation errors) and substitutions. Indented blocks become literal blocks, kept as
    typed, and bars outside them are escaped. Napoleon sections and lists are left alone.
    """
    out, in_block, previous = [], False, ""
    for i, line in enumerate(lines):
        indented = line[:1].isspace() and line.strip()
        if in_block and (indented or not line.strip()):
            out.append(line)
            continue
        in_block = False
        if (indented and i > 0 and not lines[i - 1].strip() and previous and not previous[0].isspace()
                and not SECTION.match(previous) and not LIST_ITEM.match(previous)
                and not previous.rstrip().endswith("::")):
            out += [".. code-block:: text", ""]  # as typed, not highlighted as Python
            in_block = True
            out.append(line)
            continue
        if line.strip():
            previous = line
        stripped = line.lstrip()
        table_row = stripped.startswith(("| ", "+"))  # grid tables and line blocks keep theirs
        out.append(line if table_row else line.replace("|", r"\|"))
    lines[:] = out


def drop_vendor_assets(app, config):
    """Jupyter Book adds every .js/.css under _static/ to every page; the vendored
    bundles (MathJax's components, the widget manager) must load only on demand."""
    for key in ("html_js_files", "html_css_files"):
        kept = [f for f in config[key] if not _name(f).startswith(VENDOR)]
        config[key] = kept


def drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    """sphinx-thebe's inline `const THEBE_JS_URL = ...` ends up twice on every page under
    Sphinx 7.4, a JavaScript error; keep the first copy of each script."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # an inline script's filename is None or "" depending on who added it
        key = (str(getattr(script, "filename", script) or ""),
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def _name(entry):
    return entry[0] if isinstance(entry, (tuple, list)) else str(entry)


def setup(app):
    app.add_directive("cgc-api", CgcApi)
    app.connect("autodoc-process-docstring", plain_text_docstring, priority=400)  # before napoleon
    app.connect("config-inited", drop_vendor_assets, priority=900)
    app.connect("html-page-context", drop_duplicate_scripts, priority=999)  # after all others
    return {"parallel_read_safe": True, "parallel_write_safe": True}
