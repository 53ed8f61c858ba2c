"""The map: which method wins where (``python -m cgc_edu.study.map``).

The study (`cgc_edu.study.runner`) compares every method at one budget on one suite. The
map asks where each of five methods wins: one shared LoRA (the integrated model), a LoRA
per task, MoE-LoRA, CGC-LoRA and CGC-LoRA with a uniform gate. It runs them in *cells*:
a suite, a prompt setting and a budget (the study's total ``--rank``), from budgets far
below the central model's hidden size (128), where capacity binds, to above it, where it
cannot. A cell is a small study in its own folder of ``results/map/``
(``tinytasks_named_r24/``), trained by `runner.run_jobs` under the study's run keys: its
``runs/`` hold the study's per-run JSON files, so an interrupted map resumes where it
stopped, and a cell folder holds what ``python -m cgc_edu.study --suite S --rank R
--grid-steps 0 --lr-grid <rate>`` would store for those runs.

Learning rates: each method's rate chosen by the stored study (``results/config.json``),
or with ``--lr-grid`` a grid per cell on its first seed (as the study's, but at the
map's steps, so the first seed's run at the chosen rate is the grid's own).
`map_report` judges the cells and writes ``map.csv`` and ``map.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, replace
from itertools import count, islice
from pathlib import Path
from typing import Optional, Sequence

from ..data.suites import suite
from .map_report import write_map
from ..methods import METHODS
from .methods import SEEDS, Settings, check_methods
from .runner import _key, _run_file, choose_lr, run_jobs, stored_config

COMMAND = "python -m cgc_edu.study.map"
DEFAULT_OUT = Path("results/map")
DEFAULT_STEPS = 600     # half the study's 1200: the whole map fits a few core-hours
SETTINGS = ("named", "anonymous")


#: one shared LoRA, a LoRA per task, MoE-LoRA, CGC-LoRA, CGC-LoRA with a uniform gate
MAP_METHODS = ("integrated", "separate", "moe_lora", "cgc_lora", "cgc_uniform")
CGC = "cgc_lora"
#: budgets per suite. Every map method splits them: on TinyTasks (8 tasks) CGC-LoRA's
#: 4 + 8 experts need a multiple of 12; on 26 tasks its 4 + 26 experts a multiple of 30
#: and MoE-LoRA's 4 one of 4, so of 60.
BUDGETS = {"tinytasks": (12, 24, 48, 144), "derangements:6x26": (60, 120, 180, 240)}
ANONYMOUS_BUDGETS = {"tinytasks": (24,)}


@dataclass(frozen=True)
class Cell:
    """One cell of the map: a suite (`cgc_edu.data.suites`), prompts, a total budget."""

    suite: str
    setting: str
    rank: int

    @property
    def name(self) -> str:
        return f"{self.suite.replace(':', '_')}_{self.setting}_r{self.rank}"

    @classmethod
    def parse(cls, name: str) -> "Cell":
        """A cell from its folder name, ``<suite>_<setting>_r<rank>``."""
        parts = name.rsplit("_", 2)
        if len(parts) != 3 or parts[1] not in SETTINGS or parts[2][:1] != "r" \
                or not parts[2][1:].isdigit():
            raise ValueError(f"cell {name!r}: write <suite>_<setting>_r<rank> with "
                             f"setting one of {SETTINGS}, e.g. tinytasks_named_r24 or "
                             "derangements_6x26_named_r60.")
        spec = parts[0].replace("_", ":", 1)
        suite(spec)   # an unknown suite fails here, naming the suites there are
        return cls(spec, parts[1], int(parts[2][1:]))

    def settings(self, recipe: Settings) -> Settings:
        """The recipe at this cell (the grid, if any, at the map's own steps)."""
        return replace(recipe, rank=self.rank, suite=self.suite, grid_steps=None,
                       name_in_prompt=self.setting == "named")


MAP_CELLS = ([Cell(s, "named", r) for s, ranks in BUDGETS.items() for r in ranks]
             + [Cell(s, "anonymous", r) for s, ranks in ANONYMOUS_BUDGETS.items()
                for r in ranks])


def splits(cell: Cell, methods: Sequence[str] = MAP_METHODS) -> list[str]:
    """The methods that cannot split the cell's budget among its suite's tasks."""
    n_tasks = len(suite(cell.suite))
    bad = []
    for m in methods:
        try:
            METHODS[m].task_rank(cell.rank, n_tasks)
        except ValueError:
            bad.append(m)
    return bad


def check_cell(cell: Cell, methods: Sequence[str] = MAP_METHODS) -> Cell:
    """The cell, checked: a budget a method cannot split fails with ranks that work."""
    bad = splits(cell, methods)
    if bad:
        fit = (r for r in count(1) if not splits(replace(cell, rank=r), methods))
        raise ValueError(f"cell {cell.name}: {', '.join(bad)} cannot split rank "
                         f"{cell.rank} among the {len(suite(cell.suite))} tasks of "
                         f"{cell.suite}; ranks every method splits there: "
                         f"{', '.join(map(str, islice(fit, 4)))}, ...")
    return cell


def select_cells(cells: Optional[Sequence[str]] = None, suites=None, budgets=None,
                 settings=None, methods: Sequence[str] = MAP_METHODS) -> list[Cell]:
    """The cells to run: the named ones (any cell, not only the map's) or the map's,
    kept where suite, budget and setting are among those given (None: any)."""
    chosen = [Cell.parse(c) for c in cells] if cells else list(MAP_CELLS)
    kept = [c for c in chosen if (suites is None or c.suite in suites)
            and (budgets is None or c.rank in budgets)
            and (settings is None or c.setting in settings)]
    if not kept:
        raise ValueError(f"no cell left: suites {suites}, budgets {budgets}, settings "
                         f"{settings} match none of {[c.name for c in chosen]}; drop a "
                         "filter, or name a cell (--cells tinytasks_named_r36).")
    return [check_cell(c, methods) for c in kept]


def stored_rates(path: Path, methods: Sequence[str]) -> dict[str, float]:
    """Each method's learning rate chosen by the study stored at ``path``."""
    lr = stored_config(path)["lr"]
    missing = [m for m in methods if m not in lr]
    if missing:
        raise ValueError(f"the study at {path} chose no rate for {missing}; run it "
                         "with them, or give the map its own grid "
                         "(--lr-grid 0.003,0.006,0.012).")
    return {m: lr[m] for m in methods}


def _gather(jobs: list, out: Path, train: bool, workers: int, progress: bool,
            desc: str) -> tuple[list, int]:
    """The jobs' runs: trained where missing (``train``), else only those stored."""
    if train:
        runs = run_jobs(jobs, out, workers, progress, desc=desc)
        return runs, run_jobs.trained
    files = [_run_file(out, kind, key) for kind, key, _ in jobs]
    return [json.loads(f.read_text()) for f in files if f.is_file()], 0


def _grid_rates(grid: list, methods, tuned, lr_grid) -> dict:
    """Each method's rate from a cell's grid (None while a tuned method's grid is not
    complete); untuned methods take their ``lr_from``'s, else the grid's middle."""
    done = {m for m in tuned if sum(g["method"] == m for g in grid) == len(lr_grid)}
    chosen = {m: r for m, r in choose_lr(grid).items() if m in done}
    middle = lr_grid[len(lr_grid) // 2]

    def rate(m):
        source = m if m in tuned else METHODS[m].lr_from
        return chosen.get(source, None if source in tuned else middle)
    return {m: rate(m) for m in methods}


def run_cell(cell: Cell, out: Path, methods: Sequence[str], seeds: Sequence[int],
             recipe: Settings, lr: Optional[dict] = None, lr_grid=None,
             workers: int = 1, progress: bool = True, train: bool = True) -> dict:
    """One cell: its runs at the rates ``lr``, or at those its own grid chooses
    (``lr_grid``, on the first seed). ``train=False`` reads what is stored and trains
    nothing. Returns the cell, its runs, the rates and the runs this call trained."""
    folder, settings = Path(out) / cell.name, cell.settings(recipe)
    trained = 0
    if lr_grid:
        tuned = [m for m in methods if METHODS[m].tuned]
        grid_jobs = [("run", _key("run", settings, method=m, seed=seeds[0], lr=r),
                      settings) for m in tuned for r in lr_grid]
        grid, trained = _gather(grid_jobs, folder, train, workers, progress,
                                f"{cell.name} lr grid")
        lr = _grid_rates(grid, methods, tuned, lr_grid)
    jobs = [("run", _key("run", settings, method=m, seed=s, lr=lr[m]), settings)
            for m in methods if lr.get(m) is not None for s in seeds]
    runs, n = _gather(jobs, folder, train, workers, progress, cell.name)
    return {"cell": cell, "runs": runs, "lr": lr, "trained": trained + n,
            "seeds": sorted(set(seeds))}


def stored_seeds(cell: Cell, out: Path) -> set[int]:
    """The seeds of the runs stored in a cell's folder (any method, rate or length)."""
    return {json.loads(f.read_text())["seed"]
            for f in (Path(out) / cell.name / "runs").glob("run_*.json")}


def _stored_cells(out: Path) -> list[Cell]:
    """Cells whose folders are in the map's results folder (from earlier calls)."""
    found = []
    for folder in sorted(p for p in Path(out).glob("*_r*") if p.is_dir()):
        try:
            found.append(Cell.parse(folder.name))
        except ValueError:
            continue
    return found


def _names(text: Optional[str]) -> Optional[list[str]]:
    return text if text is None else [s for s in text.split(",") if s]


def _integers(text: str, option: str) -> list[int]:
    values = [v for v in text.split(",") if v]
    if not values or not all(v.isdigit() for v in values):
        raise ValueError(f"{option} {text!r}: give comma-separated integers, e.g. "
                         f"{option} 0,1,2.")
    return [int(v) for v in values]


def _rates(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--lr-grid {text!r}: give comma-separated rates, e.g. "
                         "--lr-grid 0.003,0.006,0.012.") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--cells", help="comma-separated cell names, <suite>_<setting>_r<rank> "
        "(default: the map's)")
    add("--suites", help=f"keep these suites' cells ({', '.join(BUDGETS)})")
    add("--budgets", help="keep the cells of these ranks")
    add("--settings", help=f"keep the cells of these prompts {SETTINGS}")
    add("--methods", default=",".join(MAP_METHODS))
    add("--seeds", default=",".join(map(str, SEEDS)))
    add("--steps", default=str(DEFAULT_STEPS), help="steps of a joint run")
    add("--lr-grid", help="rates to choose from per cell, on its first seed "
        "(default: the stored study's choices)")
    add("--rates-from", type=Path, default=Path("results"),
        help="the stored study whose chosen rates the map uses")
    add("--workers", default="1", help="parallel processes")
    add("--base", help="central model folder (default: the shipped one)")
    add("--out", type=Path, default=DEFAULT_OUT)
    add("--report-only", action="store_true", help="train nothing: report the stored")
    add("--dry-run", action="store_true", help="print the runs each cell still needs")
    add("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    methods = check_methods([m for m in args.methods.split(",") if m])
    steps = _integers(args.steps, "--steps")[0]
    workers = _integers(args.workers, "--workers")[0]
    if steps < 1 or workers < 1:
        raise ValueError(f"--steps {args.steps} --workers {args.workers}: both must be "
                         "at least 1, e.g. --steps 600 --workers 2.")
    budgets = None if args.budgets is None else _integers(args.budgets, "--budgets")
    cells = select_cells(_names(args.cells), _names(args.suites), budgets,
                         _names(args.settings), methods)
    seeds = _integers(args.seeds, "--seeds")
    lr_grid = _rates(args.lr_grid) if args.lr_grid else None
    lr = None if lr_grid else stored_rates(args.rates_from, methods)
    common = {"methods": methods, "seeds": seeds, "lr": lr, "lr_grid": lr_grid,
              "workers": workers, "recipe": Settings(steps=steps, base=args.base),
              "progress": not args.no_progress}
    if args.dry_run:
        for cell in cells:
            stored = len(run_cell(cell, args.out, train=False, **common)["runs"])
            print(f"{cell.name}: {len(methods) * len(seeds) - stored} of "
                  f"{len(methods) * len(seeds)} runs to train")
        return {}
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-progress"]
    config = {"command": " ".join([COMMAND, *map(shlex.quote, argv)]), "steps": steps,
              "methods": methods, "cgc": CGC, "seeds": seeds, "lr": lr,
              "lr_grid": lr_grid,
              "lr_source": f"per cell, a grid on seed {seeds[0]}: {lr_grid}" if lr_grid
              else f"the stored study's choices ({args.rates_from / 'config.json'})"}
    # the report covers the map, this call's cells and any cell stored before
    report = list(dict.fromkeys(MAP_CELLS + cells + _stored_cells(args.out)))
    # this call, named among the stored ones: its entry is rewritten after each cell
    this = {"call": uuid.uuid4().hex[:8], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start, trained, result = time.perf_counter(), 0, {}
    asked = () if args.report_only else cells
    for cell in asked:
        trained += run_cell(cell, args.out, **common)["trained"]
        # a report after each cell: an interrupted map keeps what it has, and its time
        result = _report(report, args.out, common, config, this, trained, start, asked)
    return result or _report(report, args.out, common, config, this, trained, start,
                             asked)


def _report(cells, out, common, config, this, trained, start, asked=()) -> dict:
    """Report every cell on its own seeds: those this call asked of it (``asked``: its
    cells) and those of any run stored before, so that a call with more seeds on some
    cells leaves the others judged on the seeds they were run on."""
    stored = []
    for c in cells:
        seeds = stored_seeds(c, out) | (set(common["seeds"]) if c in asked else set())
        seeds = seeds or set(common["seeds"])     # a cell not run yet: the seeds it needs
        stored.append(run_cell(c, out, train=False, **{**common,
                                                       "seeds": sorted(seeds)}))
    call = {"command": config["command"], **this, "trained": trained,
            "wall_seconds": round(time.perf_counter() - start, 1)}
    return write_map(stored, out, config, call)


if __name__ == "__main__":
    main()
