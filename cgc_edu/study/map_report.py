"""The map's report: per cell the winner, its margin over the runner-up and whether that
margin is beyond the seed spread, and CGC-LoRA against each other method, read from the
runs of `cgc_edu.study.map`. Writes ``map.csv`` (per cell and method: mean, std, min and
max over seeds of the average exact match), ``map_seeds.csv`` (one row per run),
``map.md`` and ``config.json`` (the calls, their wall time, the rates).

Every comparison is paired by seed (a seed draws the data, the initialisation and the
batch order, the same for every method), as `statistics.paired_comparison` does. The
rule: one method is *ahead* of another when it is ahead on every seed (every paired
difference above 0). With five seeds that is the sign test's strongest outcome
(one-sided p = 1/32, two-sided 0.0625): a margin no seed contradicts, which is what
"beyond the seed spread" means here; anything less is "nothing separates them". A cell
with a run missing is *incomplete*: the report names what is missing, judges nothing.

`read_map` reads a stored map back and `verdicts` re-judges its cells from the per-run
rows, so a chapter asserts its rules on the runs themselves, not on the report's text.

Taught in: notebooks/11_which_method.ipynb.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..methods import METHODS
from .statistics import paired_comparison

def rule(n_seeds) -> str:
    """The verdict rule in words, with the sign test's p for ``n_seeds`` paired seeds (a
    number, or the numbers of seeds the cells have)."""
    counts = sorted({n_seeds} if isinstance(n_seeds, int) else set(n_seeds), reverse=True)
    tests = "; ".join(f"with {n} seeds this is the sign test's strongest outcome, "
                      f"one-sided p = 1/{2 ** n}" for n in counts)
    return ("a method is ahead of another when it is ahead on every seed, paired by seed "
            f"(same data, initialisation and batch order); {tests}. "
            "Otherwise nothing separates them.")


def cell_seeds(config: dict, cell: str) -> list[int]:
    """The seeds a cell of a stored map is judged on: its own (each cell keeps the seeds
    it was run on), else the map's."""
    return config.get("cells", {}).get(cell, {}).get("seeds") or config["seeds"]


RULE = rule(5)
VERDICTS = {"ahead": "ahead", "behind": "behind", "level": "nothing separates them"}
SEED_COLUMNS = ["cell", "suite", "setting", "rank", "method", "seed", "lr", "average",
                "task_rank", "trainable_params", "seconds"]


def _short(method: str) -> str:
    return METHODS[method].short


def seed_table(cells: Sequence[dict]) -> pd.DataFrame:
    """One row per run: cell, suite, setting, rank, method, seed, lr, average exact
    match (over the suite's tasks), the rank a task sees, parameters, seconds."""
    rows = [[c["cell"].name, c["cell"].suite, c["cell"].setting, c["cell"].rank,
             r["method"], r["seed"], r["lr"],
             float(np.mean([r["test"][t] for t in r["tasks"]])), r["task_rank"],
             r["trainable_params"], r["train_seconds"] + r["eval_seconds"]]
            for c in cells for r in c["runs"]]
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


def map_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per cell and method: n_seeds, mean, std, min, max of the average over seeds."""
    keys = SEED_COLUMNS[:5] + ["lr", "task_rank", "trainable_params"]
    def std(v):
        return v.std(ddof=1) if len(v) > 1 else 0.0

    return (seeds.groupby(keys, sort=False)["average"]
            .agg(n_seeds="size", mean="mean", std=std, min="min", max="max")
            .reset_index())


def compare(cell: pd.DataFrame, method: str, baseline: str) -> dict:
    """``method`` minus ``baseline`` in one cell, paired by seed: `paired_comparison`'s
    numbers, the smallest and largest paired difference, and the verdict of `RULE`."""
    frame = cell.rename(columns={"average": "exact_match"})
    out = paired_comparison(frame, method, baseline, n_boot=2000)
    wide = frame.pivot(index="seed", columns="method", values="exact_match")
    diff = (wide[method] - wide[baseline]).dropna()
    verdict = ("ahead" if out["wins"] == out["n_seeds"] else
               "behind" if out["losses"] == out["n_seeds"] else "level")
    return {**out, "diff_min": float(diff.min()), "diff_max": float(diff.max()),
            "verdict": verdict}


def judge(cell: pd.DataFrame, methods: Sequence[str], seeds: Sequence[int]) -> dict:
    """One cell's verdict: complete or not (and what is missing); the winner (highest
    mean), the runner-up, the margin (mean paired difference), the paired differences'
    range, the methods nothing separates from the winner, and whether the winner is
    beyond the seed spread (ahead of every other method by `RULE`)."""
    have = set(zip(cell["method"], cell["seed"]))
    missing = {m: [s for s in seeds if (m, s) not in have] for m in methods}
    missing = {m: s for m, s in missing.items() if s}
    out = {"complete": not missing, "missing": missing, "runs": len(have),
           "expected": len(methods) * len(seeds), "n_seeds": len(seeds)}
    if missing or len(methods) < 2:
        return out
    cell = cell[cell["method"].isin(methods) & cell["seed"].isin(seeds)]
    means = cell.groupby("method")["average"].mean().reindex(methods)
    order = means.sort_values(ascending=False, kind="stable").index   # ties: map order
    winner, runner_up = order[0], order[1]
    versus = {m: compare(cell, winner, m) for m in order[1:]}
    level = [m for m in order[1:] if versus[m]["verdict"] != "ahead"]
    top = versus[runner_up]
    return {**out, "winner": winner, "mean": float(means[winner]),
            "runner_up": runner_up, "margin": top["mean_diff"],
            "diff_min": top["diff_min"], "diff_max": top["diff_max"], "level": level,
            "beyond_spread": not level}


def _pts(v: float, sign: bool = False) -> str:
    return f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"


def _missing_text(j: dict) -> str:
    if not j["runs"]:
        return f"not run yet (0 of {j['expected']} runs)"
    parts = [_short(m) + ("" if len(s) == j["n_seeds"]
                          else f" seeds {','.join(map(str, s))}")
             for m, s in j["missing"].items()]
    return (f"incomplete: {j['runs']} of {j['expected']} runs "
            f"(missing {'; '.join(parts)})")


def _row(cells: list) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _header(config: dict) -> list[str]:
    calls = config["calls"]
    made = [f"`{c['command']}` ({c['wall_seconds'] / 60:.0f} min, {c['trained']} runs "
            f"trained, started {c['started']})" for c in calls]
    rates = ("" if not config.get("lr") else " (" + ", ".join(
        f"{_short(m)} {r:g}" for m, r in config["lr"].items()) + ")")
    groups: dict[tuple, list[str]] = {}
    for name, cell in config.get("cells", {}).items():
        if not cell.get("runs", 1):
            continue      # a cell not run yet has no seeds to speak of
        groups.setdefault(tuple(cell.get("seeds") or config["seeds"]), []).append(name)
    seeds = "; ".join(f"seeds {', '.join(map(str, g))} in {len(names)} cell"
                      + ("s" if len(names) > 1 else "")
                      for g, names in sorted(groups.items(), key=lambda i: -len(i[0])))
    seeds = seeds or f"seeds {', '.join(map(str, config['seeds']))}"
    return ["# The map: which method wins where", "",
            "Produced by " + ("; ".join(made) or "(no call trained a run yet)")
            + f". Wall time {config['wall_seconds'] / 60:.0f} min in {len(calls)} "
            f"call(s); the runs reported take {config['run_seconds'] / 3600:.1f} "
            f"core-hours. Joint runs train {config['steps']} steps (the study's recipe "
            f"otherwise); {seeds}; learning "
            f"rates: {config['lr_source']}{rates}. Scores: test exact match (%), "
            "averaged over the suite's tasks. A cell is a suite, its prompts and the "
            "total budget (the study's `--rank`; the central model's hidden size is "
            "128).", "",
            f"Rule: {rule({len(g) for g in groups} or len(config['seeds']))}", ""]


def _winners(cells, judged) -> list[str]:
    lines = ["## Winners", "",
             _row(["cell", "winner", "mean", "margin over the runner-up (points)",
                   "paired differences (min..max)", "beyond the seed spread",
                   "nothing separates from the winner"]), _row(["---"] * 7)]
    for cell in cells:
        j = judged[cell.name]
        if not j["complete"]:
            lines.append(_row([cell.name, _missing_text(j), "", "", "", "", ""]))
            continue
        lines.append(_row([
            cell.name, f"**{_short(j['winner'])}**", _pts(j["mean"]),
            f"{_pts(j['margin'], True)} over {_short(j['runner_up'])}",
            f"{_pts(j['diff_min'], True)}..{_pts(j['diff_max'], True)}",
            "yes" if j["beyond_spread"] else "no",
            ", ".join(_short(m) for m in j["level"]) or "-"]))
    return lines + [""]


def _against(cells, versus, cgc, others) -> list[str]:
    lines = [f"## {_short(cgc)} against each method", "",
             "Mean paired difference (points), wins/losses/ties over seeds, verdict.",
             "",
             _row(["cell", *[f"vs {_short(m)}" for m in others]]),
             _row(["---"] * (1 + len(others)))]
    for cell in cells:
        if cell.name not in versus:
            lines.append(_row([cell.name, *["incomplete"] * len(others)]))
            continue
        lines.append(_row([cell.name, *[
            f"{VERDICTS[v['verdict']]} {_pts(v['mean_diff'], True)} "
            f"({v['wins']}/{v['losses']}/{v['ties']})"
            for v in (versus[cell.name][m] for m in others)]]))
    return lines + [""]


def _averages(cells, table, methods, judged) -> list[str]:
    lines = ["## Averages per cell", "",
             ("Mean ± std (min..max) over seeds; `map.csv` has the rates, the rank a "
              "task sees and the trainable parameters."), "",
             _row(["cell", *[_short(m) for m in methods]]),
             _row(["---"] * (1 + len(methods)))]
    stats = table.set_index(["cell", "method"])
    for cell in cells:
        row = [cell.name]
        for m in methods:
            if (cell.name, m) not in stats.index:
                row.append("-")
                continue
            s = stats.loc[(cell.name, m)]
            few = ("" if s["n_seeds"] == judged[cell.name]["n_seeds"]
                   else f", {s['n_seeds']} seeds")
            row.append(f"{_pts(s['mean'])} ± {_pts(s['std'])} "
                       f"({_pts(s['min'])}..{_pts(s['max'])}{few})")
        lines.append(_row(row))
    return lines + [""]


def map_markdown(table: pd.DataFrame, judged: dict, versus: dict, config: dict,
                 cells: Sequence) -> str:
    """The content of ``map.md``."""
    methods, cgc = config["methods"], config["cgc"]
    others = [m for m in methods if m != cgc]
    parts = _header(config) + _winners(cells, judged)
    if cgc in methods and others:
        parts += _against(cells, versus, cgc, others)
    parts += _averages(cells, table, methods, judged)
    parts += [("Files: `map.csv`, `map_seeds.csv` (one row per run), `config.json`, "
               "and one folder per cell with its `runs/` (rerunning the command trains "
               "only what is missing)."), ""]
    return "\n".join(parts)


def write_map(cells: Sequence[dict], out: Path, config: dict, call: dict) -> dict:
    """Write ``map_seeds.csv``, ``map.csv``, ``map.md`` and ``config.json`` from the
    cells (`cgc_edu.study.map.run_cell` results). ``call``: this call; one that trained
    runs joins the calls stored before (an update of a call replaces its entry)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods, cgc = config["methods"], config["cgc"]
    per_run = seed_table(cells)
    table = map_table(per_run)
    judged, versus = {}, {}
    for c in cells:
        name = c["cell"].name
        mine = per_run[per_run["cell"] == name]
        judged[name] = judge(mine, methods, c.get("seeds", config["seeds"]))
        if judged[name]["complete"] and cgc in methods:
            versus[name] = {m: compare(mine, cgc, m) for m in methods if m != cgc}
    file = out / "config.json"
    calls = json.loads(file.read_text()).get("calls", []) if file.is_file() else []
    calls = [c for c in calls if c.get("call") != call["call"]]
    calls += [call] if call["trained"] else []
    seeds = sorted({s for c in cells for s in c.get("seeds", config["seeds"])})
    config = {**config, "calls": calls, "seeds": seeds or config["seeds"],
              "wall_seconds": round(sum(c["wall_seconds"] for c in calls), 1),
              "run_seconds": round(float(per_run["seconds"].sum()), 1),
              "cells": {c["cell"].name: {"lr": c["lr"],
                                         "seeds": c.get("seeds", config["seeds"]),
                                         **judged[c["cell"].name]} for c in cells}}
    per_run.to_csv(out / "map_seeds.csv", index=False)
    table.to_csv(out / "map.csv", index=False)
    (out / "map.md").write_text(map_markdown(table, judged, versus, config,
                                             [c["cell"] for c in cells]))
    file.write_text(json.dumps(config, indent=2))
    return {"config": config, "table": table, "judged": judged, "versus": versus}


def stored_map_folder(start=None) -> Path:
    """The map's folder a chapter reads: ``results/map`` in the first of ``start`` (or the
    working directory) and its parents that holds ``results/map/map_seeds.csv``, so the
    repository's map is found from ``notebooks/`` whether cgc_edu is installed editable or
    as a wheel (which ships no results)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "results" / "map" / "map_seeds.csv").is_file():
            return folder / "results" / "map"
    raise FileNotFoundError(
        f"no results/map/map_seeds.csv in {here} or above it: run the notebook from the "
        "repository (its notebooks/ folder), or make the map: python -m cgc_edu.study.map")


def read_map(folder=None) -> dict:
    """A stored map: ``seeds`` (one row per run, `seed_table`), ``table`` (`map_table`
    of those rows) and ``config`` (``config.json``: the calls, the seeds, the methods)."""
    folder = Path(folder) if folder is not None else stored_map_folder()
    missing = [n for n in ("map_seeds.csv", "config.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"read_map: {folder} has no {', '.join(missing)}; make "
                                "the map there: python -m cgc_edu.study.map --out "
                                f"{folder}")
    seeds = pd.read_csv(folder / "map_seeds.csv")
    return {"seeds": seeds, "table": map_table(seeds),
            "config": json.loads((folder / "config.json").read_text())}


def verdicts(stored: dict, cell: str) -> dict:
    """One cell of a stored map (`read_map`) judged again from its runs: `judge`'s verdict
    (winner, margin, paired range, beyond the seed spread) plus ``versus``: CGC-LoRA
    against each other method (`compare`), keyed by method, when the cell is complete."""
    seeds, config = stored["seeds"], stored["config"]
    mine = seeds[seeds["cell"] == cell]
    if mine.empty:
        raise KeyError(f"verdicts: no runs of cell {cell!r}; the map has "
                       f"{sorted(seeds['cell'].unique())}")
    methods, cgc = config["methods"], config["cgc"]
    out = judge(mine, methods, cell_seeds(config, cell))
    if out["complete"] and cgc in methods:
        out["versus"] = {m: compare(mine, cgc, m) for m in methods if m != cgc}
    return out


def verdict_table(stored: dict) -> pd.DataFrame:
    """Every cell of a stored map (`read_map`) judged from its runs (`verdicts`), one row
    each: suite, prompts, budget, winner, its mean (%), its margin over the runner-up and
    the paired range (points), whether it is beyond the seed spread, the methods nothing
    separates from it, and CGC-LoRA against each other method (ahead / behind / level)."""
    seeds, config = stored["seeds"], stored["config"]
    cgc = config["cgc"]
    rows = []
    for name, g in seeds.groupby("cell", sort=False):
        v = verdicts(stored, name)
        row = {"cell": name, "suite": g["suite"].iloc[0], "prompts": g["setting"].iloc[0],
               "budget": int(g["rank"].iloc[0])}
        if not v["complete"]:
            rows.append({**row, "winner": _missing_text(v)})
            continue
        row.update(winner=v["winner"], mean=round(100 * v["mean"], 1),
                   margin=round(100 * v["margin"], 1),
                   paired=f"{_pts(v['diff_min'], True)}..{_pts(v['diff_max'], True)}",
                   beyond_spread=v["beyond_spread"], level_with=", ".join(v["level"]))
        row.update({f"{_short(cgc)} vs {m}": c["verdict"]
                    for m, c in v.get("versus", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)
