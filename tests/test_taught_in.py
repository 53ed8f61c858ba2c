"""Every docstring's "Taught in:" line is true: each notebook it names exists and its code
uses the documented name (d2l generates its "Defined in" links; ours are written by hand, so
this test keeps them honest)."""
import importlib
import inspect
import pkgutil
import re
from functools import lru_cache
from pathlib import Path

import nbformat
import pytest

import cgc_edu

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TAUGHT_IN = re.compile(r"Taught in:(.*)", re.S)
NOTEBOOK = re.compile(r"notebooks/(\d\d_\w+)\.ipynb")


@lru_cache(maxsize=None)
def notebook_code(stem: str) -> str:
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")


def _uses(code: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}\b|\.{re.escape(name)}\b", code) is not None


#: Names too common to count as a use on their own (a word "main" in a comment, a variable
#: "data"): they count only qualified by their module, e.g. ``finetune.main``.
GENERIC = {"main", "data", "io", "figures", "run"}


def _public(module):
    """(label, object, spellings that count as a use) for the module and what it defines."""
    own = {n: o for n, o in vars(module).items() if not n.startswith("_")
           and (inspect.isclass(o) or inspect.isfunction(o)) and o.__module__ == module.__name__}
    short = module.__name__.rsplit(".", 1)[-1]

    def spellings(name):
        return [f"{short}.{name}"] if name in GENERIC else [name]

    yield module.__name__, module, [module.__name__, *(n for n in own if n not in GENERIC)]
    for name, obj in own.items():
        yield f"{module.__name__}.{name}", obj, spellings(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                target = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if not attr.startswith("_") and callable(target):
                    yield f"{module.__name__}.{name}.{attr}", target, spellings(attr)


def _claims():
    modules = [importlib.import_module(m.name) for m in pkgutil.walk_packages(cgc_edu.__path__, "cgc_edu.")
               if not m.name.endswith("__main__")]
    for module in modules:
        for label, obj, names in _public(module):
            doc = inspect.getdoc(obj) or ""
            found = TAUGHT_IN.search(doc)
            if found:
                yield label, names, NOTEBOOK.findall(found.group(1))


CLAIMS = sorted(_claims())


def test_the_library_links_its_names_to_chapters():
    assert len(CLAIMS) > 50, "the docstrings lost their Taught in: lines"
    assert all(stems for _, _, stems in CLAIMS), [label for label, _, stems in CLAIMS if not stems]


@pytest.mark.parametrize("label, names, stems", CLAIMS, ids=[c[0] for c in CLAIMS])
def test_taught_in_names_a_notebook_that_uses_it(label, names, stems):
    for stem in stems:
        assert (NOTEBOOKS / f"{stem}.ipynb").is_file(), f"{label}: notebooks/{stem}.ipynb does not exist"
        code = notebook_code(stem)
        assert any(_uses(code, name) for name in names), (
            f"{label} says 'Taught in: notebooks/{stem}.ipynb', but that notebook's code never uses "
            f"{' or '.join(names[:3])}{' ...' if len(names) > 3 else ''}: name the chapter that does.")
