"""Execute notebooks in place: the one way committed notebook outputs are updated.

Usage: python scripts/run_notebooks.py [notebooks/NN_name.ipynb ...]   (default: all of notebooks/)

The kernel runs in the environment the tests use (scripts/test.sh), so that a rerun under
`pytest --nbval` reproduces the outputs. Widget state is stored, so that the book shows
the widgets; no timing metadata is stored, so that a rerun changes only what changed.
Prints each notebook's wall time and flags the ones over the two-minute budget.
"""
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 120  # every chapter runs top to bottom in under two minutes on 2 CPU cores
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
IGNORE_OUTPUT = "nbval-ignore-output"


def kernel_environment():
    """The test environment (see scripts/test.sh), set before the kernel starts."""
    os.environ.update(PYTHONHASHSEED="0", HF_HUB_OFFLINE="1")
    # The committed outputs are those of the committed training seeds: never shifted.
    if os.environ.pop("CGC_EDU_TRAINING_SEED", None) not in (None, "", "0"):
        print("run_notebooks: CGC_EDU_TRAINING_SEED ignored: committed outputs use seed 0")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    # No OMP_WAIT_POLICY=PASSIVE: sleeping threads made the tiny models' training 2.5x slower
    # (chapter 04: 154 s against 65 s), and a learner's kernel does not run under it.
    # A non-inline MPLBACKEND (e.g. Agg) inherited by the kernel would hide every figure.
    os.environ.pop("MPLBACKEND", None)


def run(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            record_timing=False, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def convention_warnings(path: Path) -> list[str]:
    """Outputs that nbval will find different on a rerun unless the cell is tagged."""
    nb = nbformat.read(path, as_version=4)
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or IGNORE_OUTPUT in cell.metadata.get("tags", []):
            continue
        if any(WIDGET_VIEW in out.get("data", {}) for out in cell.outputs):
            found.append(f"cell {index} displays a widget: tag it {IGNORE_OUTPUT} and print a summary after it")
        if any(out.output_type == "stream" and out.name == "stderr" for out in cell.outputs):
            found.append(f"cell {index} writes to stderr (a warning or a progress bar?): silence it or tag it {IGNORE_OUTPUT}")
    return found


def main(argv):
    kernel_environment()
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    total = 0.0
    for path in paths:
        seconds = run(path)
        total += seconds
        over = f"  OVER THE {BUDGET_S} s BUDGET" if seconds > BUDGET_S else ""
        print(f"{path.name}: {seconds:.1f} s{over}", flush=True)
        for warning in convention_warnings(path):
            print(f"  {path.name}: {warning}", flush=True)
    print(f"total: {total:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
