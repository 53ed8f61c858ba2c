"""Execute notebooks in place: the one way committed notebook outputs are updated.

Usage: python scripts/run_notebooks.py [notebooks/NN_name.ipynb ...]   (default: all of notebooks/)
Prints each notebook's wall time. Widget state is stored so the book can show widgets statically.
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def run(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def main(argv):
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    total = 0.0
    for path in paths:
        seconds = run(path)
        total += seconds
        print(f"{path.name}: {seconds:.1f} s", flush=True)
    print(f"total: {total:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
