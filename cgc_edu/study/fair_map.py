"""The map under the fair protocol: which method wins where (``python -m cgc_edu.study.fair_map``).

Five methods (one shared LoRA, a LoRA per task, MoE-LoRA, CGC-LoRA, CGC-LoRA with a uniform
gate) in *cells*: a suite (`cgc_edu.data.suites`), prompts that name the task or hide it,
and a budget on one of two axes:

* ``r<k>``, **equal trainable parameters**: every method within one LoRA of rank k (the
  independent LoRAs at the largest rank whose N copies fit);
* ``t<k>``, **equal rank per task**: every task sees rank k (CGC-LoRA's private experts then
  cost parameters, not rank), which tells "private experts cost rank" from "isolation helps".

Every budget stays below the width (128) of the central model's projections. Each method is
trained under `cgc_edu.study.protocol.Protocol`: its own rate grid per cell on a tuning seed
that is never reported, warm-up, clipping, rsLoRA scaling, the best validation checkpoint;
then the reported seeds at the chosen rate. Every run is one JSON file under
``OUT/<cell>/runs/`` (the study's run keys), so an interrupted map resumes where it stopped.
The report (`write_report`) writes ``grid.csv``, ``map_seeds.csv``, ``items.csv.gz``,
``curves.csv``, ``map.csv`` (one row per comparison: difference, ci_low, ci_high, p, p_holm,
verdict), ``map.md`` and ``config.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..data.suites import suite
from ..data.tinytasks import PROMPT_SETTINGS
from ..methods import METHODS
from .methods import Settings
from .protocol import (Protocol, choose, collapsed, compare, flat_last_third, judge, parse_methods,
                       parse_seeds)
from .runner import _key, _run_file, run_jobs
from .statistics import rise

COMMAND = "python -m cgc_edu.study.fair_map"
DEFAULT_OUT = Path("results/fair_map")
METHODS_MAPPED = ("integrated", "separate", "moe_lora", "cgc_lora", "cgc_uniform")
#: chapter 07's ablations, each with its own tuned rate, in the study's cell (TinyTasks,
#: named prompts, budget 24): no common experts, 8 + 2 and 16 + 1 experts, 1+N
ABLATIONS = ("cgc_no_common", "cgc_c8_s2", "cgc_c16_s1", "one_plus_n")
AXES = {"r": "params", "t": "per_task"}
#: how a cell's prompts show the task (`make_tiny_tasks`'s name_in_prompt): not at all,
#: "reverse:cab=" (the name and a ":", which the central model never saw as a boundary)
#: or "reverse cab=" (the name and a space, as in its pretraining)
SETTINGS = PROMPT_SETTINGS
HIDDEN = 128   # the central model's projections' width: no budget at or above it


@dataclass(frozen=True)
class Cell:
    """A suite, a prompt setting (a key of `SETTINGS`), a budget and its axis."""

    suite: str
    setting: str
    rank: int
    budget: str = "params"
    steps: int = 500

    @property
    def name(self) -> str:
        axis = {v: k for k, v in AXES.items()}[self.budget]
        return f"{self.suite.replace(':', '_')}_{self.setting}_{axis}{self.rank}"

    def settings(self, protocol: Protocol, base: Optional[str] = None) -> Settings:
        """The study's Settings of this cell under ``protocol``."""
        return protocol.settings(Settings(
            steps=self.steps, rank=self.rank, suite=self.suite, budget=self.budget, base=base,
            name_in_prompt=SETTINGS[self.setting], curve_points=6, grid_steps=None))

    def check(self, methods: Sequence[str]) -> "Cell":
        """The cell, checked: every method splits its budget, which stays below the width."""
        n_tasks = len(suite(self.suite))
        if self.setting not in SETTINGS:
            raise ValueError(f"cell {self.name}: setting {self.setting!r}; use one of "
                             f"{list(SETTINGS)}.")
        for m in methods:
            METHODS[m].task_rank(self.rank, n_tasks, self.budget)   # a rank it cannot split fails
            if METHODS[m].kind == "adapters":
                bank = METHODS[m].config(self.rank, n_tasks, self.budget)
                if bank.expert_rank * bank.n_experts >= HIDDEN:
                    raise ValueError(f"cell {self.name}: {m}'s bank has rank "
                                     f"{bank.expert_rank * bank.n_experts}, at or above the "
                                     f"projections' width {HIDDEN}; use a smaller budget.")
        return self


#: The map: on TinyTasks three parameter budgets with named prompts, one with anonymous
#: prompts, one with the name and a space, and one at equal rank per task; two on the 26
#: contradicting tables.
CELLS = (Cell("tinytasks", "named", 24), Cell("tinytasks", "named", 20, "per_task"),
         Cell("tinytasks", "anonymous", 24), Cell("tinytasks", "spaced", 24),
         Cell("derangements:6x26", "named", 60),
         Cell("tinytasks", "named", 12), Cell("tinytasks", "named", 48),
         Cell("derangements:6x26", "named", 120))


def parse_cell(name: str) -> Cell:
    """A cell from its name, ``<suite>_<setting>_<r|t><rank>`` (r: equal parameters, t:
    equal rank per task), e.g. ``tinytasks_named_r24`` or ``derangements_6x26_named_r60``."""
    for cell in CELLS:
        if cell.name == name:
            return cell
    parts = name.rsplit("_", 2)
    if len(parts) != 3 or parts[1] not in SETTINGS or parts[2][:1] not in AXES \
            or not parts[2][1:].isdigit():
        raise ValueError(f"cell {name!r}: write <suite>_<setting>_<r|t><rank>, e.g. "
                         "tinytasks_named_r24 (equal parameters) or tinytasks_named_t20 "
                         "(equal rank per task).")
    spec = parts[0].replace("_", ":", 1)
    suite(spec)   # an unknown suite fails here, naming the suites there are
    return Cell(spec, parts[1], int(parts[2][1:]), AXES[parts[2][0]])


# ------------------------------------------------------------------ training
def _jobs(cell, settings, method, rates, seeds):
    return [("run", _key("run", settings, method=method, seed=s, lr=r), settings)
            for r in rates for s in seeds]


def _stored(folder, jobs):
    files = [_run_file(folder, kind, key) for kind, key, _ in jobs]
    return [json.loads(f.read_text()) for f in files if f.is_file()]


def _score(run) -> float:
    return sum(run["validation"].values()) / len(run["validation"])


def run_cell(cell: Cell, out: Path, protocol: Protocol, methods: Sequence[str] = METHODS_MAPPED,
             seeds: Optional[Sequence[int]] = None, workers: int = 1, train: bool = True,
             base: Optional[str] = None, progress: bool = True) -> dict:
    """One cell: each method's grid on the tuning seed (extended while its best rate is at
    an edge), then the reported seeds at the chosen rate. ``train=False`` reads what is
    stored. Returns {"grid": runs, "runs": runs, "lr": chosen rate per method}."""
    folder, settings = Path(out) / cell.name, cell.settings(protocol, base)
    seeds = list(protocol.seeds if seeds is None else seeds)
    rates = {m: protocol.grid(METHODS[m].lr) for m in methods}
    grid, chosen = {}, {}
    while True:
        jobs = [j for m in methods if m not in chosen
                for j in _jobs(cell, settings, m, rates[m], [protocol.tuning_seed])]
        runs = (run_jobs(jobs, folder, workers, progress, f"{cell.name} grid") if train
                else _stored(folder, jobs))
        for m in [m for m in methods if m not in chosen]:
            scores = {r["lr"]: _score(r) for r in runs if r["method"] == m}
            grid[m] = [r for r in runs if r["method"] == m]
            if len(scores) < len(rates[m]):
                chosen[m] = None            # not trained yet (train=False)
                continue
            more = protocol.next_rate(METHODS[m].lr, scores)
            if more is None:
                chosen[m] = choose(scores)
            else:
                rates[m].append(more)
        if all(m in chosen for m in methods):
            break
    jobs = [j for m in methods if chosen[m] is not None
            for j in _jobs(cell, settings, m, [chosen[m]], seeds)]
    runs = run_jobs(jobs, folder, workers, progress, cell.name) if train else _stored(folder, jobs)
    return {"cell": cell, "grid": [r for g in grid.values() for r in g], "runs": runs,
            "lr": chosen, "seeds": seeds}


# ------------------------------------------------------------------- report
def _average(run) -> float:
    return sum(run["test"].values()) / len(run["test"])


def tables(cells: Sequence[dict], protocol: Protocol) -> dict[str, pd.DataFrame]:
    """The map's tables from its cells' runs: grid, seeds, items, curves and comparisons."""
    grid, seeds, items, curves, comps = [], [], [], [], []
    for c in cells:
        name = c["cell"].name
        for r in c["grid"]:
            grid.append({"cell": name, "method": r["method"], "lr": r["lr"], "seed": r["seed"],
                         "validation": _score(r), "chosen": r["lr"] == c["lr"].get(r["method"])})
        for r in c["runs"]:
            seeds.append({"cell": name, "method": r["method"], "seed": r["seed"], "lr": r["lr"],
                          "steps": r["settings"]["steps"], "average": _average(r),
                          "trainable_params": r["trainable_params"], "task_rank": r["task_rank"],
                          "train_seconds": r["train_seconds"],
                          "flat": flat_last_third(r["curve"], protocol.flat),
                          "collapsed": collapsed(_average(r), r["curve"])})
            items += [{"cell": name, "method": r["method"], "seed": r["seed"], "task": t,
                       "item": i, "exact_match": v}
                      for t, vs in r.get("items", {}).items() for i, v in enumerate(vs)]
            for share, s in r["curve"]:
                scores = [v for t, v in s.items() if not t.startswith("_")]
                curves.append({"cell": name, "method": r["method"], "seed": r["seed"],
                               "step": round(share * r["settings"]["steps"]),
                               "validation": sum(scores) / len(scores),
                               "train_loss": s.get("_loss"), "best": bool(s.get("_best"))})
        by = {}
        for r in c["runs"]:
            by.setdefault(r["method"], {})[r["seed"]] = [v for t in r["tasks"] for v in r["items"][t]]
        pairs = list(combinations([m for m in METHODS_MAPPED if m in by], 2))
        pairs += [(a, "cgc_lora") for a in ABLATIONS if a in by and "cgc_lora" in by]
        for a, b in pairs:
            if len(set(by[a]) & set(by[b])) >= 2:
                row = compare(by[a], by[b], protocol.level)
                row.pop("seed_differences")
                comps.append({"cell": name, "method": a, "baseline": b, **row})
    frame = pd.DataFrame(comps, columns=["cell", "method", "baseline", "difference", "ci_low",
                                         "ci_high", "p", "n_seeds"])
    # Holm within each cell: a cell is one question, and its verdicts must not move as
    # other cells are added to the map
    comparisons = (pd.concat([judge(g, protocol) for _, g in frame.groupby("cell", sort=False)],
                             ignore_index=True) if len(frame) else judge(frame, protocol))
    return {"grid": pd.DataFrame(grid), "map_seeds": pd.DataFrame(seeds),
            "items": pd.DataFrame(items), "curves": pd.DataFrame(curves), "map": comparisons}


def _markdown(frames: dict, protocol: Protocol, config: dict) -> str:
    seeds = frames["map_seeds"]
    lines = ["# The map under the fair protocol", "",
             f"Produced by `{config['command']}`; {len(seeds)} reported runs and "
             f"{len(frames['grid'])} grid runs so far (resumable: rerun the command).", "",
             f"Protocol: rsLoRA scaling alpha / sqrt(r) with alpha {protocol.alpha:g}, warm-up "
             f"{protocol.warmup:.0%} of the steps then linear decay, clipping at {protocol.clip:g}, "
             f"a grid of {protocol.grid_size} rates x{protocol.grid_factor:g} apart per method and "
             f"cell (extended to at most {protocol.grid_max} while the best is at an edge) on "
             f"tuning seed {protocol.tuning_seed} (not reported), the best validation checkpoint. "
             f"Verdicts: paired by seed and item, 95 % t interval over seeds, Holm's correction "
             f"over the comparisons of each cell, equivalence margin "
             f"+-{100 * protocol.margin:g} points.", ""]
    if len(seeds):
        mean = seeds.pivot_table(index="cell", columns="method", values="average", aggfunc="mean")
        lines += ["## Mean test exact match (%)", "", (100 * mean).round(1).to_markdown(), ""]
    if len(frames["map"]):
        m = frames["map"].assign(difference=lambda f: (100 * f["difference"]).round(1),
                                 ci_low=lambda f: (100 * f["ci_low"]).round(1),
                                 ci_high=lambda f: (100 * f["ci_high"]).round(1))
        lines += ["## Comparisons (points of exact match)", "",
                  m[["cell", "method", "baseline", "difference", "ci_low", "ci_high", "p_holm",
                     "verdict", "n_seeds"]].to_markdown(index=False), ""]
    return "\n".join(lines)


def write_report(cells: Sequence[dict], out: Path, protocol: Protocol, config: dict) -> dict:
    """Write the map's files into ``out``; returns its tables."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = tables(cells, protocol)
    for name, frame in frames.items():
        path = out / (f"{name}.csv.gz" if name == "items" else f"{name}.csv")
        frame.to_csv(path, index=False, float_format="%.6g")
    (out / "map.md").write_text(_markdown(frames, protocol, config))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return frames


def read_map(folder: Path = DEFAULT_OUT) -> dict:
    """A stored map's tables (``grid``, ``map_seeds``, ``items``, ``curves``, ``map``) and
    its ``config``, read from ``folder`` (what `write_report` wrote).

    Taught in: notebooks/07_experiments.ipynb.
    """
    folder = Path(folder)
    if not (folder / "map.csv").is_file():
        raise FileNotFoundError(f"read_map: no map.csv in {folder}; run `{COMMAND}` (or pass "
                                "the folder it wrote, e.g. results/fair_map).")
    frames = {name: pd.read_csv(folder / (f"{name}.csv.gz" if name == "items" else f"{name}.csv"))
              for name in ("grid", "map_seeds", "items", "curves", "map")}
    frames["config"] = json.loads((folder / "config.json").read_text())
    return frames


def cell_verdicts(stored: dict, cell: str, protocol: Protocol = Protocol()) -> pd.DataFrame:
    """The comparisons of one cell of a stored map, Holm's correction taken over that cell's
    comparisons alone (the family of one question: a chapter that reads one cell must not
    see its verdicts move as other cells are added to the map), judged anew under
    ``protocol`` (another margin or level reads the same runs differently).

    Taught in: notebooks/07_experiments.ipynb.
    """
    rows = stored["map"][stored["map"]["cell"] == cell]
    if rows.empty:
        raise ValueError(f"cell_verdicts: no comparisons of cell {cell!r}; the map has "
                         f"{sorted(set(stored['map']['cell']))}.")
    return judge(rows.drop(columns=["p_holm", "verdict"]).reset_index(drop=True), protocol)


def versus(comparisons: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The rows of ``comparisons`` (a cell's, as `cell_verdicts` returns them) that involve
    ``baseline``, each turned to read "method minus ``baseline``": a row stored the other
    way round has its difference and interval negated and ahead / behind swapped.

    Taught in: notebooks/11_which_method.ipynb.
    """
    mine = comparisons[(comparisons["method"] == baseline) | (comparisons["baseline"] == baseline)]
    if mine.empty:
        raise ValueError(f"versus: no comparison with {baseline!r}; the rows compare "
                         f"{sorted(set(comparisons['method']) | set(comparisons['baseline']))}.")
    out = mine.copy()
    flip = (out["method"] == baseline).to_numpy()
    out.loc[flip, "method"] = out.loc[flip, "baseline"]
    out.loc[flip, "baseline"] = baseline
    out.loc[flip, "difference"] = -mine.loc[flip, "difference"]
    out.loc[flip, "ci_low"] = -mine.loc[flip, "ci_high"]
    out.loc[flip, "ci_high"] = -mine.loc[flip, "ci_low"]
    swap = {"ahead": "behind", "behind": "ahead"}
    out.loc[flip, "verdict"] = mine.loc[flip, "verdict"].map(lambda v: swap.get(v, v))
    return out.reset_index(drop=True)


def convergence(stored: dict, cell: str) -> pd.DataFrame:
    """How much each method's mean validation curve still rose over the last half and the
    last third of training in one cell of a stored map (`statistics.rise` on the reported
    runs' curves, in points 0..1): near 0, flat; well above, training stopped while the
    method was still learning, and the cell's verdicts are those of its step budget.

    Taught in: notebooks/11_which_method.ipynb.
    """
    curves = stored["curves"][stored["curves"]["cell"] == cell]
    if curves.empty:
        raise ValueError(f"convergence: no curves of cell {cell!r}; the map has "
                         f"{sorted(set(stored['curves']['cell']))}.")
    return rise(curves)


# ---------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--cells", help="comma-separated cell names (default: the map's, in order)")
    add("--methods", default=",".join(METHODS_MAPPED))
    add("--seeds", default=",".join(map(str, Protocol().seeds)), help="reported seeds")
    add("--workers", type=int, default=1, help="parallel processes (one thread each)")
    add("--base", help="central model folder (default: the shipped one)")
    add("--out", type=Path, default=DEFAULT_OUT)
    add("--report-only", action="store_true", help="train nothing: report what is stored")
    add("--ablations", action="store_true",
        help=f"then chapter 07's ablations ({', '.join(ABLATIONS)}) in {CELLS[0].name}")
    add("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    methods = parse_methods(args.methods, METHODS_MAPPED, "the map")
    protocol = replace(Protocol(), seeds=parse_seeds(args.seeds))
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: at least 1, e.g. --workers 2.")
    cells = [parse_cell(c).check(methods) for c in args.cells.split(",")] if args.cells else \
        [c.check(methods) for c in CELLS]
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-progress"]
    config_file = args.out / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {"calls": []}
    call = {"command": " ".join([COMMAND, *map(shlex.quote, argv)]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_seconds": 0.0}
    config["calls"].append(call)
    config.update(command=COMMAND, protocol={k: getattr(protocol, k) for k in
                                              protocol.__dataclass_fields__},
                  methods=list(methods), cells=[c.name for c in CELLS])
    start = time.perf_counter()
    common = dict(protocol=protocol, methods=methods, base=args.base, workers=args.workers,
                  progress=not args.no_progress)
    reported = list(dict.fromkeys([*CELLS, *cells]))   # the map's cells and any asked

    def report():
        everything = {**common, "methods": METHODS_MAPPED}   # the report holds every stored method
        stored = [run_cell(c, args.out, train=False, **everything) for c in reported]
        ablations = run_cell(CELLS[0], args.out, train=False, **{**common, "methods": ABLATIONS})
        first = stored[reported.index(CELLS[0])]    # one cell: the map's methods and the ablations
        first.update(grid=first["grid"] + ablations["grid"], runs=first["runs"] + ablations["runs"],
                     lr={**first["lr"], **ablations["lr"]})
        return write_report(stored, args.out, protocol, config)

    for cell in ([] if args.report_only else cells):
        run_cell(cell, args.out, **common)
        call["wall_seconds"] = round(time.perf_counter() - start, 1)
        report()          # after each cell: an interrupted map keeps what it has
    if args.ablations and not args.report_only:   # last: the map's cells come first
        run_cell(CELLS[0], args.out, **{**common, "methods": ABLATIONS})
        call["wall_seconds"] = round(time.perf_counter() - start, 1)
    return report()


if __name__ == "__main__":
    main()
