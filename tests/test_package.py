"""The package's layout shows the method: sub-packages by concept, imports that flow one way
(no cycle, no function-local import to dodge one), no private name used across sub-packages,
and every module listed in docs/design.md and book/api.rst."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "cgc_edu"
SUBPACKAGES = {"adapters", "data", "models", "train", "framework", "study", "course"}


def modules() -> dict[str, Path]:
    """dotted name below cgc_edu ("" for the package) -> file."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def resolve(me: str, is_package: bool, level: int, target: str | None) -> str:
    base = me.split(".") if me else []
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([target] if target else [])])


def imports(me: str, path: Path):
    """(imported module, imported names, at module level?) of one module's relative imports."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = resolve(me, is_package, node.level, node.module)
            yield target, [a.name for a in node.names], id(node) in top


def package_of(dotted: str) -> str:
    return dotted.split(".")[0] if dotted else ""


def test_the_library_is_in_subpackages_by_concept():
    found = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert found == SUBPACKAGES
    flat = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert flat <= {"utils", "moe", "mtl", "methods"}, f"modules outside a sub-package: {flat}"


def test_no_import_cycle():
    mods = modules()
    graph = {}
    for me, path in mods.items():
        deps = set()
        for target, names, _ in imports(me, path):
            for name in names:   # "from . import plots" imports a module
                full = f"{target}.{name}" if target else name
                deps.add(full if full in mods else target)
        graph[me] = {d for d in deps if d in mods and d != me}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join([*trail, node])
        state[node] = "open"
        for dep in sorted(graph[node]):
            if dep != "" and not (node.startswith(dep + ".") or node == dep):  # a package's __init__
                visit(dep, [*trail, node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def test_no_private_name_crosses_a_subpackage():
    crossing = []
    for me, path in modules().items():
        for target, names, _ in imports(me, path):
            if package_of(target) != package_of(me):
                crossing += [f"{me} imports {target}.{n}" for n in names if n.startswith("_")]
    assert not crossing, crossing


def test_imports_sit_at_the_top_of_each_module():
    """A function-local import is how an import cycle hides; the ones left are deliberate:
    optional heavy dependencies a function needs (peft, ipywidgets' display)."""
    local = []
    for me, path in modules().items():
        for target, names, at_top in imports(me, path):
            if not at_top:
                local.append(f"{me}: from {target} import {', '.join(names)}")
    assert not local, local


@pytest.mark.parametrize("listing", ["docs/design.md", "book/api.rst"])
def test_every_module_is_listed(listing):
    text = (ROOT / listing).read_text()
    shown = lambda m: m in text or m.replace(".", "/") + ".py" in text  # noqa: E731
    missing = [m for m, path in modules().items()
               if m and path.name not in ("__init__.py", "__main__.py") and not shown(m)]
    assert not missing, f"{listing} misses {missing}"


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_each_name_is_imported_from_the_module_that_defines_it():
    """One path for each idea: inside the package a name comes from its own module, never
    through another module that imported it (a sub-package's __init__ is its public face)."""
    mods = modules()
    detours = []
    for me, path in mods.items():
        for target, names, _ in imports(me, path):
            file = mods.get(target)
            if file is None or file.name == "__init__.py":
                continue
            own = _defined(file)
            detours += [f"{me}: {n} from {target}" for n in names
                        if n not in own and f"{target}.{n}" not in mods]
    assert not detours, detours
