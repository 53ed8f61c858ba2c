"""Run the notebooks under several training seeds and numeric backends, and report the margin
left by every trained claim (every comparison asserted in a cell tagged `nbval-ignore-output`).

    python scripts/seed_margins.py                       # seeds 0-4, both backends, every notebook
    python scripts/seed_margins.py notebooks/00_tour.ipynb --seeds 0,1 --backends portable
    python scripts/seed_margins.py --report-only         # rebuild the report from stored runs
    python scripts/seed_margins.py --verify notebooks/01_lora_from_scratch.ipynb \
        --backends default-1thread,portable    # after a library edit, on the same machine

Each run executes a notebook top to bottom in a fresh kernel with `CGC_EDU_TRAINING_SEED` set
(notebooks/README.md, "The portability rule"); the portable backend adds
`ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1`. After each checked cell, a probe evaluates
both sides of each top-level `assert a <op> b` (and each part of `assert p and q`); asserts in
loops or over collections are recorded as passed or failed. One JSON file per notebook, seed
and backend goes to `--store` (resumable: a stored run of the notebook's current code is not
repeated; one of an older version is), and the report,
per notebook, each claim's worst value over all runs and the margin left, to `--report`.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {
    "default": {},                                   # this CPU's kernels, 2 threads
    "default-1thread": {"OMP_NUM_THREADS": "1"},     # this CPU's kernels, one thread
    "portable": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
}
ORDER = (ast.Gt, ast.GtE, ast.Lt, ast.LtE)
IGNORE = "nbval-ignore-output"   # the tag of cells whose asserts are measured claims


def _claims(source: str) -> list[dict]:
    """The asserts of one cell: for a top-level comparison, the expressions of its two sides."""
    try:
        tree = ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))))
    except SyntaxError:
        return []
    found = []
    top = {id(node) for node in tree.body}

    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        parts = node.test.values if isinstance(node.test, ast.BoolOp) and isinstance(
            node.test.op, ast.And) else [node.test]
        for part in parts:
            claim = {"line": node.lineno, "assert": " ".join(text.split())[:160],
                     "part": ast.unparse(part)[:160]}
            every = (isinstance(part, ast.Call) and isinstance(part.func, ast.Attribute)
                     and part.func.attr == "all" and not part.args)
            compare = part.func.value if every else part
            if (id(node) in top and isinstance(compare, ast.Compare) and len(compare.ops) == 1
                    and isinstance(compare.ops[0], ORDER)):
                op = type(compare.ops[0]).__name__
                left = ast.unparse(compare.left)
                if every:  # (values > bound).all(): the worst of the values
                    worst = "min" if op in ("Gt", "GtE") else "max"
                    left = f"__import__('numpy').{worst}(__import__('numpy').asarray({left}))"
                claim.update(op=op, left=left, right=ast.unparse(compare.comparators[0]))
            found.append(claim)
    return found


PROBE = """
import json as _json
def _cgc_value(expr):
    try:
        return float(eval(expr))
    except Exception:
        return None
print("CGC_PROBE" + _json.dumps([[_cgc_value(l), _cgc_value(r)] for l, r in {pairs!r}]))
"""


def code_hash(path: Path) -> str:
    """A fingerprint of what a notebook runs up to its last measured claim (its code cells
    and their tags, not outputs, through the last ``nbval-ignore-output`` cell): a stored
    run of another version is stale and is run again. Cells after that one cannot change
    a recorded claim (they run later, and their outputs are byte-compared by nbval), so an
    exercise added at the end keeps the records."""
    import nbformat

    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    measured = [i for i, c in enumerate(code) if IGNORE in c.metadata.get("tags", [])]
    kept = code[:measured[-1] + 1] if measured else code
    text = json.dumps([[c.source, c.metadata.get("tags", [])] for c in kept])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _code_only(source: str) -> str:
    """A module's code without its comments and docstrings (its syntax tree, docstrings
    dropped): a docstring or comment edit cannot move a trained number."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def library_hash(root: Path = ROOT, modules: list[str] | None = None) -> str:
    """A fingerprint of the library's code, comments and docstrings left out: of the
    ``modules`` a run loaded (paths under ``root``, `LOADED`), or of every
    ``cgc_edu/**/*.py``. A notebook's numbers come from the library code it ran, so a
    stored run made with other code in one of its modules is reported as such, and rerun
    with ``--library`` (not by default: one library edit would rerun many runs); an edit
    to a module the notebook never loads keeps its records."""
    files = ([root / m for m in modules] if modules is not None
             else sorted((root / "cgc_edu").rglob("*.py")))
    digest = hashlib.sha256()
    for file in sorted(files):
        code = _code_only(file.read_text()) if file.is_file() else "(missing)"
        digest.update(str(file.relative_to(root)).encode() + b"\0" + code.encode())
    return digest.hexdigest()[:16]


#: Run last in a notebook's kernel: the cgc_edu modules it loaded, as paths under ROOT.
LOADED = """
import json as _json, sys as _sys, pathlib as _pathlib
_root = _pathlib.Path({root!r})
_files = set()
for _m in list(_sys.modules.values()):
    _f = getattr(_m, "__file__", None) or ""
    if _f and _pathlib.Path(_f).resolve().is_relative_to(_root / "cgc_edu"):
        _files.add(str(_pathlib.Path(_f).resolve().relative_to(_root)))
print("CGC_LOADED" + _json.dumps(sorted(_files)))
"""


def _library_current(record: dict) -> bool:
    """The record was made with the library code that its modules hold now (a record
    without its module list: with the whole library as it is now)."""
    return record.get("library") == library_hash(modules=record.get("library_modules"))


def _is_current(record_path: Path, notebook: Path, library: bool = False) -> bool:
    """The stored run is of the notebook's current code (and, with ``library``, was made
    with the library code its modules hold now)."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    return record.get("code") == code_hash(notebook) and (
        not library or _library_current(record))


def run_notebook(path: Path, seed: int, backend: str) -> dict:
    """Execute one notebook under one seed and backend (in this process's environment)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=900, allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    claims, errors = [], []
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index)
            tags = cell.metadata.get("tags", [])
            error = next((o for o in cell.outputs if o.output_type == "error"), None)
            if error is not None and "raises-exception" not in tags:
                errors.append({"cell": index, "error": f"{error.ename}: {error.evalue}"[:400]})
            if IGNORE not in tags:
                continue
            found = _claims(cell.source)
            pairs = [(c["left"], c["right"]) for c in found if "op" in c]
            values = []
            if pairs:
                probe = nbformat.v4.new_code_cell(PROBE.format(pairs=pairs))
                client.execute_cell(probe, index)
                text = "".join(o.get("text", "") for o in probe.outputs if o.output_type == "stream")
                line = next((l for l in text.splitlines() if l.startswith("CGC_PROBE")), None)
                values = json.loads(line[len("CGC_PROBE"):]) if line else [[None, None]] * len(pairs)
            it = iter(values)
            for claim in found:
                claim["cell"] = index
                claim["failed"] = error is not None and "raises-exception" not in tags
                if "op" in claim:
                    claim["values"] = next(it)
                claims.append(claim)
        loaded = nbformat.v4.new_code_cell(LOADED.format(root=str(ROOT)))
        client.execute_cell(loaded, len(nb.cells) - 1)   # index: where nbclient writes it back
        text = "".join(o.get("text", "") for o in loaded.outputs if o.output_type == "stream")
        line = next((l for l in text.splitlines() if l.startswith("CGC_LOADED")), None)
        modules = json.loads(line[len("CGC_LOADED"):]) if line else None
    return {"notebook": path.name, "seed": seed, "backend": backend, "code": code_hash(path),
            "library": library_hash(modules=modules), "library_modules": modules,
            "claims": claims, "errors": errors}


def _outcome(record: dict) -> list:
    """What a run measured: every claim's cell, text, values and failure, and its errors."""
    return [[(c["cell"], c["part"], c.get("values"), c["failed"]) for c in record["claims"]],
            record["errors"]]


def restamp(store: Path, notebook: Path, fresh: list[dict]) -> list[str]:
    """After a library edit, the notebook's stored runs stand if ``fresh`` runs (made with
    the library as it is now, at some of the stored seeds and backends) measured exactly
    what the stored runs of the same seed and backend did: bit-identical values say the
    edit changed nothing this notebook computes. Then every stored run of its current code
    takes the new library fingerprint (and notes the check); otherwise nothing changes.
    Returns the differences found (empty: re-stamped)."""
    stored = {}
    for file in store.glob(f"{notebook.stem}__seed*__*.json"):
        record = json.loads(file.read_text())
        if record.get("code") == code_hash(notebook):
            stored[(record["seed"], record["backend"])] = (file, record)
    differences = []
    for run in fresh:
        key = (run["seed"], run["backend"])
        if key not in stored:
            differences.append(f"seed {key[0]}, {key[1]}: no stored run of this code")
        elif _outcome(stored[key][1]) != _outcome(run):
            differences.append(f"seed {key[0]}, {key[1]}: other values than the stored run")
    if differences or not fresh:
        return differences or ["no fresh run to compare"]
    checked = [f"{r['seed']}/{r['backend']}" for r in fresh]
    for file, record in stored.values():
        record.update(library=fresh[0]["library"], library_modules=fresh[0]["library_modules"],
                      restamped={"checked": checked, "previous_library": record.get("library")})
        file.write_text(json.dumps(record, indent=1))
    return []


def margin(claim: dict) -> float | None:
    """How far the claim is from failing: the left side's distance to the bound, in the
    direction the claim needs (negative: it failed)."""
    left, right = claim.get("values") or (None, None)
    if left is None or right is None:
        return None
    return left - right if claim["op"] in ("Gt", "GtE") else right - left


def _current_parts(name: str):
    """The claims the notebook makes now (a stored run of an older version may hold others)."""
    import nbformat

    path = ROOT / "notebooks" / name
    if not path.is_file():
        return None
    nb = nbformat.read(path, as_version=4)
    return {c["part"] for cell in nb.cells if cell.cell_type == "code"
            and IGNORE in cell.metadata.get("tags", []) for c in _claims(cell.source)}


def report(store: Path, out: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(store.glob("*.json"))]
    hashes = {}
    for name in {r["notebook"] for r in runs}:
        path = ROOT / "notebooks" / name
        hashes[name] = code_hash(path) if path.is_file() else None
    stale = sum(r.get("code") != hashes[r["notebook"]] for r in runs)
    outdated = sorted({r["notebook"] for r in runs if hashes[r["notebook"]]}
                      - {r["notebook"] for r in runs if r.get("code") == hashes[r["notebook"]]})
    runs = [r for r in runs if r.get("code") == hashes[r["notebook"]]]
    lines = ["# Margins of the trained claims over training seeds and numeric backends", "",
             "Made by `python scripts/seed_margins.py` (notebooks/README.md, \"The portability "
             "rule\"). For each trained assert: the runs it was checked on, its worst left-hand "
             "value and the bound, and the margin left at that worst run (negative: it failed). "
             "Asserts in loops or over collections show passed or failed only. Only runs of "
             "each notebook's current code count"
             + (f" ({stale} stored runs of older versions left out)." if stale else "."), ""]
    if outdated:   # their claims are not measured until they are rerun
        lines += ["## Notebooks whose stored runs are all of an older version", "",
                  "Their code changed since their last runs, so no margin of theirs is "
                  "reported; rerun them: `python scripts/seed_margins.py "
                  + " ".join(f"notebooks/{n}" for n in outdated)
                  + " --backends default-1thread,portable`.", "",
                  *[f"- {n}" for n in outdated], ""]
    by_nb: dict[str, list[dict]] = {}
    for run in runs:
        by_nb.setdefault(run["notebook"], []).append(run)
    for name in sorted(by_nb):
        group = by_nb[name]
        combos = sorted({(r["seed"], r["backend"]) for r in group})
        seeds = sorted({s for s, _ in combos})
        backends = sorted({b for _, b in combos})
        older = sum(not _library_current(r) for r in group)
        checks = sorted({c for r in group for c in r.get("restamped", {}).get("checked", [])})
        kept = sum(bool(r.get("restamped")) for r in group)
        lines += [f"## {name}", "",
                  f"{len(combos)} runs: seeds {', '.join(map(str, seeds))}; backends "
                  f"{', '.join(backends)}."
                  + (f" **{older} of them with an earlier library** (code in the `cgc_edu/` "
                     "modules it loaded changed since; `--library` reruns them)."
                     if older else "")
                  + (f" {kept} of them kept across a library edit: a rerun of "
                     f"{', '.join(checks)} with the edited library gave bit-identical "
                     "values (`--verify`)." if kept else ""), ""]
        errors = [(r["seed"], r["backend"], e) for r in group for e in r["errors"]]
        for seed, backend, e in errors:
            lines.append(f"- **error** in cell {e['cell']} (seed {seed}, {backend}): `{e['error']}`")
        if errors:
            lines.append("")
        lines += ["| cell | claim | worst value | bound | margin | worst run | failed runs |",
                  "|---|---|---|---|---|---|---|"]
        current = _current_parts(name)
        keyed: dict[tuple, list] = {}
        for run in group:
            for c in run["claims"]:
                if current is None or c["part"] in current:   # claims since removed: left out
                    keyed.setdefault((c["cell"], c["part"]), []).append((run, c))
        for (cell, part), items in sorted(keyed.items()):
            scored = [(margin(c), r, c) for r, c in items if margin(c) is not None]
            # a measured claim fails by its own margin; an unmeasured one with its cell
            failed = [f"{r['seed']}/{r['backend']}" for r, c in items
                      if (margin(c) < 0 if margin(c) is not None else c["failed"])]
            if scored:
                m, r, c = min(scored, key=lambda t: t[0])
                row = (f"| {cell} | `{part.replace('|', '/')}` | {c['values'][0]:.4g} | "
                       f"{c['values'][1]:.4g} | {m:+.4g} | {r['seed']}/{r['backend']} | "
                       f"{', '.join(failed) or 'none'} |")
            else:
                row = (f"| {cell} | `{part.replace('|', '/')}` | {'passed' if not failed else 'failed'} "
                       f"| | | | {', '.join(failed) or 'none'} |")
            lines.append(row)
        lines.append("")
    text = "\n".join(lines)
    out.write_text(text)
    return text


def _run_one(path: Path, seed: int, backend: str, store: Path) -> None:
    """One run of a notebook under one seed and backend, in a child process of its own."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "CGC_EDU_TRAINING_SEED": str(seed), **BACKENDS[backend]}
    subprocess.run([sys.executable, __file__, "--one", str(path), str(seed), backend,
                    "--store", str(store)], env=env, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--backends", default="default,portable")
    parser.add_argument("--store", type=Path, default=ROOT / "results" / "seed_margins")
    parser.add_argument("--report", type=Path, default=None,
                        help="default: seed_margins.md in the store's parent folder")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--library", action="store_true",
                        help="also rerun stored runs made with another version of cgc_edu/")
    parser.add_argument("--verify", action="store_true",
                        help="after a library edit, on the machine that made the records "
                        "(another CPU's BLAS gives other bits): rerun the first of --seeds "
                        "under each of --backends and, where every value is bit-identical to "
                        "the stored run's, keep the notebook's records (re-stamped)")
    parser.add_argument("--one", nargs=3, metavar=("NOTEBOOK", "SEED", "BACKEND"),
                        help=argparse.SUPPRESS)  # a single run, in the child process
    args = parser.parse_args(argv)
    if args.one:
        path, seed, backend = Path(args.one[0]), int(args.one[1]), args.one[2]
        result = run_notebook(path, seed, backend)
        args.store.mkdir(parents=True, exist_ok=True)
        (args.store / f"{path.stem}__seed{seed}__{backend}.json").write_text(json.dumps(result, indent=1))
        return 0
    report_path = args.report or args.store.parent / "seed_margins.md"
    if args.verify:
        import tempfile

        seed = int(args.seeds.split(",")[0])
        for path in args.notebooks:
            with tempfile.TemporaryDirectory() as scratch:
                for backend in args.backends.split(","):
                    _run_one(path, seed, backend, Path(scratch))
                fresh = [json.loads(f.read_text()) for f in Path(scratch).glob("*.json")]
                differences = restamp(args.store, path, fresh)
            print(f"{path.name}: " + ("records kept, re-stamped" if not differences
                                       else "; ".join(differences)), flush=True)
    elif not args.report_only:
        notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        seeds = [int(s) for s in args.seeds.split(",")]
        backends = args.backends.split(",")
        for b in backends:
            if b not in BACKENDS:
                parser.error(f"--backends: {b!r} is not one of {sorted(BACKENDS)}")
        for path in notebooks:          # one notebook's runs together: its picture first
            for backend in backends:
                for seed in seeds:
                    target = args.store / f"{path.stem}__seed{seed}__{backend}.json"
                    if _is_current(target, path, args.library):
                        continue
                    print(f"{path.name}: seed {seed}, {backend}", flush=True)
                    _run_one(path, seed, backend, args.store)
    print(report(args.store, report_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
